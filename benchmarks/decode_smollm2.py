"""SmolLM2-135M-Instruct decoding: the native Llama (fissure.decode) against transformers
``generate`` on the same (dequantised) weights and prompts, in the same run.

    python benchmarks/decode_smollm2.py --threads 2

Reports new tokens/s for greedy batch 1 and for sampling 32 prompts x 64 new tokens, the
first (GGUF dequantisation) and cached load times, and how far batch-1 decoding is from the
memory-bandwidth limit: every new token reads all weights once, so tokens/s <= bandwidth /
weight bytes. ``ours-bf16``, ``ours-int8`` (weight-only int8, bf16 activations) and ``ours-int4``
(weight-only int4 in groups of 32) trade precision for fewer bytes per token; ``ours`` is fp32 like
transformers. ``--compile`` adds compiled decoding steps (fp32 and int4 greedy at batch 1, bf16 sampling), and
llama.cpp runs the greedy case on the same GGUF when llama-cpp-python is installed; when it is not, the
run states llama.cpp's last measured figure from the results file it replaces, with that run's date and commit.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import results_path, save, slow_dtype  # noqa: E402

from fissure.decode import Decoding, generate  # noqa: E402
from fissure.models.quantize import quantize_int4, quantize_int8  # noqa: E402

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
           "The three laws of thermodynamics are", "import numpy as np\n", "My favourite recipe for bread:",
           "Q: What is 12 times 7?\nA:", "The quick brown fox"]


def memory_bandwidth(gb: float = 1.0) -> float:
    """GB/s of a large tensor copy (read + write), best of 3."""
    src = torch.empty(int(gb * 2**30 / 4), dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * 4 / best / 1e9


def read_bandwidth(gb: float = 1.0) -> float:
    """GB/s of summing a large tensor (read only, as a batch-1 decoding step reads its weights), best of 3."""
    src = torch.empty(int(gb * 2**30 / 4), dtype=torch.float32).fill_(1.0)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        src.sum()
        best = min(best, time.perf_counter() - t)
    return src.numel() * 4 / best / 1e9


def llama_cpp_runner(threads: int):
    """Greedy batch-1 decoding by llama.cpp (llama-cpp-python) on the same Q4_1 GGUF, or None when
    llama-cpp-python is not installed. Counts the tokens it generated (it may stop at an end token)."""
    try:
        import llama_cpp
    except ImportError:
        return None, None
    import fissure.models.registry_files as files

    llm = llama_cpp.Llama(model_path=str(files.smollm2_gguf_path()), n_threads=threads, n_threads_batch=threads,
                          n_ctx=512, verbose=False, seed=0)

    def run(prompts, n, sample):
        assert len(prompts) == 1 and not sample, "llama.cpp runs the greedy batch-1 case only"
        out = llm.create_completion(prompts[0], max_tokens=n, temperature=0.0)
        return out["usage"]["completion_tokens"]

    # the instruction sets this llama.cpp was built for ("AVX512 = 1", or an AVX2-only build's)
    features = " ".join(f for f in llama_cpp.llama_print_system_info().decode().split(" | ") if f.endswith("= 1"))
    return run, f"{llama_cpp.__version__} ({features.removeprefix('CPU : ')})"


def last_llama_cpp(path: Path) -> dict | None:
    """llama.cpp's greedy batch-1 figure from the last saved run of this benchmark that raced it
    (``path``: the results file this run will replace; a run without llama.cpp carries the figure
    forward), with that run's date and commit; None when no saved run has one."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    tps = old.get("results", {}).get("greedy_b1", {}).get("llama.cpp_tokens_per_s")
    if tps is None:
        return old.get("llama_cpp_last_measured")
    meta = old.get("meta", {})
    return {"tokens_per_s": tps, "created": meta.get("created"), "git_commit": meta.get("git_commit"),
            "llama_cpp_python": old.get("llama_cpp_python")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--greedy-tokens", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--greedy-rounds", type=int, default=8,
                    help="rounds of the batch-1 greedy case (a round takes well under a second for most racers)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compile", action="store_true",
                    help="also race compiled decoding steps (fp32, int4 greedy batch 1; bf16 sampling; each compiles up to ~2 min first)")
    args = ap.parse_args()
    for flag in ("rounds", "greedy_rounds", "threads", "batch", "new_tokens", "greedy_tokens"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag.replace('_', '-')} must be at least 1, not {getattr(args, flag)}")
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import fissure.models.registry_files as files
    from fissure.models.hf_llama import load_hf_llama_dir

    with tempfile.TemporaryDirectory() as tmp:  # first load: dequantise the GGUF into an empty cache
        import os

        os.environ["FISSURE_CACHE"] = tmp
        t = time.perf_counter()
        files.load_smollm2()
        first_load = time.perf_counter() - t
        t = time.perf_counter()
        files.load_smollm2()
        cached_load = time.perf_counter() - t
    del os.environ["FISSURE_CACHE"]
    path = files.smollm2_dir()
    tok = AutoTokenizer.from_pretrained(path)
    ours = load_hf_llama_dir(path).fuse_projections()  # as fissure.load("smollm2") runs it
    skipped = slow_dtype(torch.bfloat16)
    if skipped:
        print(skipped, file=sys.stderr)
    ours_bf16 = None if skipped else load_hf_llama_dir(path, dtype=torch.bfloat16).fuse_projections()
    ours_int8 = quantize_int8(load_hf_llama_dir(path).fuse_projections())
    ours_int4 = quantize_int4(load_hf_llama_dir(path).fuse_projections())
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    n_params = sum(p.numel() for p in ours.parameters())
    # int4: half a byte a weight, and a bf16 scale and offset per group of 32 (4 bytes / 32 weights)
    weight_bytes = {"fp32": n_params * 4, "bf16": n_params * 2, "int8": n_params, "int4": n_params * 0.625}
    eos = tok.eos_token_id

    def hf_run(prompts, n, sample):
        batch = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
        kw = dict(do_sample=True, top_p=0.9, temperature=0.8) if sample else dict(do_sample=False)
        with torch.inference_mode():
            out = hf.generate(**batch, max_new_tokens=n, min_new_tokens=n, pad_token_id=eos, **kw)
        return out.shape[0] * (out.shape[1] - batch["input_ids"].shape[1])

    def ours_run(prompts, n, sample, model):
        d = Decoding(max_new_tokens=n, do_sample=sample, top_p=0.9 if sample else 1.0,
                     temperature=0.8 if sample else 1.0, seed=args.seed)
        ids = [tok.encode(p, add_special_tokens=False) for p in prompts]
        out = generate(model, ids, d, eos_token_id=None, pad_token_id=eos)
        return sum(len(s) for s in out.sequences)

    runners = {"transformers": hf_run, "ours": lambda p, n, s: ours_run(p, n, s, ours),
               "ours-bf16": lambda p, n, s: ours_run(p, n, s, ours_bf16),
               "ours-int8": lambda p, n, s: ours_run(p, n, s, ours_int8),
               "ours-int4": lambda p, n, s: ours_run(p, n, s, ours_int4)}
    llama_cpp_run, llama_cpp_version = llama_cpp_runner(args.threads)
    only_greedy = {"llama.cpp": llama_cpp_run} if llama_cpp_run else {}
    last_llama = None if llama_cpp_run else last_llama_cpp(results_path("decode_smollm2"))
    compiled_sampling = {}
    if args.compile:  # Llama.compile_decode_step: as `fissure generate --compile` runs it
        compiled = {"ours-compiled": load_hf_llama_dir(path).fuse_projections().compile_decode_step(),
                    "ours-int4-compiled": quantize_int4(load_hf_llama_dir(path).fuse_projections()).compile_decode_step()}
        for name, model in compiled.items():
            only_greedy[name] = lambda p, n, s, model=model: ours_run(p, n, s, model)
        if not skipped:  # bf16 sampling at batch 32, compiled: inductor fuses the norms, rotary and residuals
            model = load_hf_llama_dir(path, dtype=torch.bfloat16).fuse_projections().compile_decode_step()
            compiled["ours-bf16-compiled"] = model
            compiled_sampling["ours-bf16-compiled"] = lambda p, n, s, model=model: ours_run(p, n, s, model)
    if skipped:  # int8 and int4 run bf16 activations too, but their matmuls are integer kernels: they stay
        del runners["ours-bf16"]
    cases = {"greedy_b1": ([PROMPTS[0]], args.greedy_tokens, False),
             f"sample_b{args.batch}": ((PROMPTS * args.batch)[: args.batch], args.new_tokens, True)}
    racers = {c: {**runners, **only_greedy} if c == "greedy_b1" else {**runners, **compiled_sampling} for c in cases}
    warmup = {}
    for c, (prompts, n, sample) in cases.items():  # warm-up (a compiled step compiles here)
        for w, fn in racers[c].items():
            t = time.perf_counter()
            fn(prompts, 4, sample)  # the full batch: a compiled step compiles for its size
            warmup[f"{c}/{w}"] = time.perf_counter() - t
    per_round = {(c, w): [] for c in cases for w in racers[c]}  # (tokens, seconds) of each round
    n_rounds = {c: args.greedy_rounds if c == "greedy_b1" else args.rounds for c in cases}
    for r in range(max(n_rounds.values())):
        for c, (prompts, n, sample) in cases.items():
            if r >= n_rounds[c]:
                continue
            order = list(racers[c].items())
            for w, fn in order if r % 2 == 0 else order[::-1]:  # alternate the order: no racer always first
                t = time.perf_counter()
                k = fn(prompts, n, sample)
                per_round[(c, w)].append((k, time.perf_counter() - t))
    bandwidth, read = memory_bandwidth(), read_bandwidth()
    rows = {}
    for c in cases:
        rounds = {w: [k / dt for k, dt in per_round[(c, w)]] for w in racers[c]}
        tps = {w: sum(k for k, _ in per_round[(c, w)]) / sum(dt for _, dt in per_round[(c, w)]) for w in racers[c]}
        rows[c] = {f"{w}_tokens_per_s": v for w, v in tps.items()}
        rows[c].update({f"speedup_{w}": tps[w] / tps["transformers"] for w in tps if w != "transformers"})
        rows[c]["per_round_tokens_per_s"] = rounds
        if "llama.cpp" in tps:  # the same round's llama.cpp: a burst of noise hits both
            rows[c]["median_round_ratio_to_llama.cpp"] = {w: statistics.median(
                a / b for a, b in zip(rounds[w], rounds["llama.cpp"])) for w in tps if w.startswith("ours")}
        print(f"{c:12s} transformers {tps['transformers']:6.1f}  " + "  ".join(
            f"{w} {tps[w]:6.1f} (x{tps[w] / tps['transformers']:.2f})" for w in tps if w != "transformers")
            + "  tokens/s")
    if "median_round_ratio_to_llama.cpp" in rows["greedy_b1"]:
        print(f"greedy_b1 against llama.cpp, median over {args.greedy_rounds} rounds of the same round's ratio: " + "  ".join(
            f"{w} x{v:.2f}" for w, v in rows["greedy_b1"]["median_round_ratio_to_llama.cpp"].items()))
    if llama_cpp_run is None:
        line = "llama.cpp: not raced (llama-cpp-python is not installed; `python tests/e2e/llama_server.py` builds it)"
        if last_llama:
            best = max((w for w in rows["greedy_b1"] if w.startswith("ours")), key=rows["greedy_b1"].get)
            line += (f"; its last measured figure: {last_llama['tokens_per_s']:.1f} tokens/s on {last_llama['created']} "
                     f"(commit {str(last_llama['git_commit'])[:7]}), another run: {best.removesuffix('_tokens_per_s')} "
                     f"x{rows['greedy_b1'][best] / last_llama['tokens_per_s']:.2f} against it")
        print(line)
    limit = {k: read * 1e9 / v for k, v in weight_bytes.items()}
    g = rows["greedy_b1"]
    reached = [(dtype, g.get(f"{key}_tokens_per_s")) for dtype, key in (("fp32", "ours"), ("bf16", "ours-bf16"),
                                                                         ("int8", "ours-int8"), ("int4", "ours-int4"))]
    print(f"memory bandwidth {bandwidth:.1f} GB/s copy, {read:.1f} GB/s read: batch-1 limit " + ", ".join(
        f"{limit[d]:.1f} tok/s {d} ({tps / limit[d]:.0%} reached)" for d, tps in reached if tps is not None))
    print(f"load: first {first_load:.1f} s (dequantise GGUF), cached {cached_load:.1f} s")
    if args.compile:
        print("warm-up with compilation: " + ", ".join(
            f"{w} {warmup.get('greedy_b1/' + w, 0) + warmup.get(f'sample_b{args.batch}/' + w, 0):.0f} s" for w in compiled))
    path = save("decode_smollm2", {"config": vars(args), "results": rows, "memory_bandwidth_gb_s": bandwidth,
                                   "read_bandwidth_gb_s": read, "llama_cpp_python": llama_cpp_version,
                                   **({"llama_cpp_last_measured": last_llama} if last_llama else {}),
                                   "weight_bytes": weight_bytes, "bandwidth_limit_tokens_per_s": limit,
                                   "first_load_s": first_load, "cached_load_s": cached_load, "warmup_s": warmup, "skipped": skipped},
                args.seed, args.threads)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
