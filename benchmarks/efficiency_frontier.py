"""Efficiency frontier: quality against cost for each model x weight dtype, in one table and one plot.

    python benchmarks/efficiency_frontier.py --threads 2

Models: two GPTs of ours trained here on the same training text (char-level; sizes ``--gpt-sizes``,
``--gpt-steps`` steps each, through ``fissure train``'s pipeline), SmolLM2-135M-Instruct on the native
Llama, and any ``--model SPEC``. Dtypes: fp32, bf16, weight-only int8 and int4 (``fissure.load(...,
dtype=...)``). Each (model, dtype) runs in its own process, so its peak memory and load time are its own:

- bits per byte on held-out text (a ``fissure baselines`` split of ``--data``; every model scores the
  same bytes through ``loglikelihood_rolling``), with a bootstrap interval over documents,
- new tokens/s at batch 1 (greedy, one prompt) and at batch ``--batch`` (greedy, that many prompts),
  ``--new-tokens`` each, no end token (every row makes all of them),
- load time (``fissure.load`` with the dtype conversion) and peak resident memory of the process
  (``ru_maxrss``), also above the process's size before loading.

Writes ``results/efficiency_frontier.json`` and ``results/efficiency_frontier.png`` (bits per byte
against batch-1 tokens/s, the Pareto front joined). bf16 on a CPU without bf16 instructions is slow:
the CPU's capability is recorded in the JSON (``meta.machine.cpu``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, save, slow_dtype  # noqa: E402

DTYPES = ("fp32", "bf16", "int8", "int4")


def held_out(data: str, max_eval_bytes: int, seed: int) -> tuple[list[str], list[str]]:
    from fissure.diagnose.baselines import BaselinesConfig, split

    train, kept = split(BaselinesConfig(data=data, max_eval_bytes=max_eval_bytes, seed=seed))
    return [d.text for d in train], [d.text for d in kept]


def measure(spec: str, dtype: str, args) -> dict:
    """One (model, dtype), in this process: load, score, decode."""
    import torch

    import fissure
    from fissure.decode import Decoding
    from fissure.metrics.lm import summarise_scores
    from fissure.utils import set_threads

    set_threads(args.threads)
    _, texts = held_out(args.data, args.max_eval_bytes, args.seed)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    lm = fissure.load(spec, dtype=dtype, batch_size=args.batch)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    s = summarise_scores(lm.loglikelihood_rolling(texts))
    score_s = time.perf_counter() - started
    ci = s["bits_per_byte_ci"] or {"low": s["bits_per_byte"], "high": s["bits_per_byte"]}
    prompts = [lm.prompt_ids(t[:64]) for t in texts[:args.batch]]
    prompts += prompts[:args.batch - len(prompts)] * args.batch  # fewer texts than the batch: repeat them
    prompts = prompts[:args.batch]
    decoding = Decoding(max_new_tokens=args.new_tokens)
    rates = {}
    for name, rows in (("batch_1", prompts[:1]), (f"batch_{args.batch}", prompts)):
        lm.decode_ids(rows, Decoding(max_new_tokens=4), ())  # warm-up
        started = time.perf_counter()
        out = lm.decode_ids(rows, decoding, ())  # no end token: every row makes every token
        seconds = time.perf_counter() - started
        rates[name] = sum(len(seq) for seq in out.sequences) / seconds
    params = sum(p.numel() for p in lm.model.parameters()) + sum(  # int8 / int4 weights are buffers
        b.numel() * (2 if name.endswith("weight_int4") else 1)  # two int4 weights a byte
        for name, b in lm.model.named_buffers() if name.endswith(("weight_int8", "weight_int4")))
    return {"model": spec, "dtype": dtype, "params": params,
            "bits_per_byte": {"estimate": s["bits_per_byte"], "low": ci["low"], "high": ci["high"]},
            "tokens": s["tokens"], "bytes": s["bytes"], "documents": s["documents"], "score_seconds": score_s,
            "tokens_per_s": rates, "load_seconds": load_s,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_rss_above_start_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024,
            "torch_threads": torch.get_num_threads()}


def train_gpts(args, where: Path) -> list[tuple[str, str]]:
    """Our GPTs, one per ``--gpt-sizes`` entry (``LAYERSxDIM``), on the split's training text."""
    from fissure.train.pipeline import load_run_config, train_from_config

    train, _ = held_out(args.data, args.max_eval_bytes, args.seed)
    train_file = where / "train.jsonl"
    train_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in train))
    made = []
    for size in args.gpt_sizes.split(","):
        layers, dim = (int(x) for x in size.split("x"))
        cfg = {"seed": args.seed,
               "data": {"paths": [str(train_file)], "val_fraction": 0.05, "normalize": "none", "dedup": False},
               "tokenizer": {"kind": "char"},
               "model": {"family": "gpt", "block_size": 128, "n_layer": layers, "n_embd": dim,
                         "n_head": max(1, dim // 32), "dropout": 0.0},
               "train": {"max_steps": args.gpt_steps, "batch_size": 16, "lr": 3e-3, "min_lr": 3e-4,
                         "warmup_steps": min(50, args.gpt_steps // 10), "eval_every": args.gpt_steps,
                         "eval_batches": 4, "weight_decay": 0.1, "threads": args.threads, "progress": False}}
        started = time.perf_counter()
        _, summary = train_from_config(load_run_config(cfg), where / f"gpt-{size}")
        print(f"trained gpt {size}: {summary['params']:,} parameters in {time.perf_counter() - started:.0f} s",
              file=sys.stderr)
        made.append((f"gpt-{size}", summary["checkpoint"]))
    return made


def plot(rows: list[dict], batch: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fissure.metrics.pareto import pareto_front

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    markers = {"fp32": "o", "bf16": "s", "int8": "^", "int4": "v"}
    names = sorted({r["name"] for r in rows})
    colours = {n: plt.cm.tab10(i) for i, n in enumerate(names)}
    for r in rows:
        bpb = r["bits_per_byte"]
        ax.errorbar(r["tokens_per_s"]["batch_1"], bpb["estimate"],
                    yerr=[[bpb["estimate"] - bpb["low"]], [bpb["high"] - bpb["estimate"]]],
                    marker=markers[r["dtype"]], color=colours[r["name"]], markersize=4 + r["peak_rss_mb"] ** 0.5 / 4,
                    linestyle="none", label=f"{r['name']} {r['dtype']}")
    front = pareto_front([(r["tokens_per_s"]["batch_1"], r["bits_per_byte"]["estimate"]) for r in rows],
                         maximise=[True, False])
    pts = sorted((rows[i]["tokens_per_s"]["batch_1"], rows[i]["bits_per_byte"]["estimate"]) for i in front)
    ax.plot(*zip(*pts), color="0.6", linewidth=1, zorder=0, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("new tokens/s, batch 1 (log scale)")
    ax.set_ylabel("bits per byte, held-out text (lower is better)")
    ax.set_title(f"Efficiency frontier (marker size: peak memory; batch {batch} in the JSON)", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default="code", help="a fissure text domain (see fissure baselines)")
    ap.add_argument("--max-eval-bytes", type=int, default=20_000)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--gpt-sizes", default="2x64,4x192", help="LAYERSxDIM per GPT, comma-separated ('' for none)")
    ap.add_argument("--gpt-steps", type=int, default=300)
    ap.add_argument("--model", action="append", default=[], help="another model spec (repeatable)")
    ap.add_argument("--no-smollm2", action="store_true")
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", nargs=2, metavar=("SPEC", "DTYPE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child, args)))
        return
    dtypes = [d for d in args.dtypes.split(",") if d]
    import torch

    skipped = slow_dtype(torch.bfloat16) if "bf16" in dtypes else None
    if skipped:
        print(skipped, file=sys.stderr)
        dtypes.remove("bf16")
    with tempfile.TemporaryDirectory() as tmp:
        models = train_gpts(args, Path(tmp)) if args.gpt_sizes else []
        models += [] if args.no_smollm2 else [("smollm2", "smollm2")]
        models += [(spec, spec) for spec in args.model]
        rows = []
        for name, spec in models:
            for dtype in dtypes:
                child = [sys.executable, __file__, "--child", spec, dtype, *sys.argv[1:]]
                done = subprocess.run(child, capture_output=True, text=True)
                if done.returncode:
                    print(f"{name} {dtype}: failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                    continue
                row = {"name": name, **json.loads(done.stdout.strip().splitlines()[-1])}
                rows.append(row)
                r = row
                bpb = r["bits_per_byte"]
                print(f"{name:12s} {dtype:5s} {r['params'] / 1e6:7.2f}M  {bpb['estimate']:.3f} bits/byte "
                      f"[{bpb['low']:.3f}, {bpb['high']:.3f}]  "
                      f"b1 {r['tokens_per_s']['batch_1']:7.1f}  b{args.batch} "
                      f"{r['tokens_per_s'][f'batch_{args.batch}']:7.1f} tok/s  load {r['load_seconds']:5.1f} s  "
                      f"peak {r['peak_rss_mb']:6.0f} MB (+{r['peak_rss_above_start_mb']:.0f} loading and running)",
                      flush=True)
    if not rows:
        sys.exit("no model was measured")
    RESULTS.mkdir(exist_ok=True)
    plot(rows, args.batch, RESULTS / "efficiency_frontier.png")
    path = save("efficiency_frontier", {"config": {k: v for k, v in vars(args).items() if k != "child"},
                                        "skipped": skipped, "rows": rows}, args.seed, args.threads)
    print(f"wrote {path} and {RESULTS / 'efficiency_frontier.png'}", file=sys.stderr)


if __name__ == "__main__":
    main()
