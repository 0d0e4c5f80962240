"""Fine-tuning SmolLM2-135M: fissure (our Llama + the Trainer, LoRA through peft) against HF
transformers' LlamaForCausalLM + peft with a plain PyTorch loop, identical data, sequence length,
batch, dtype, optimizer and threads. Each variant runs in its own process (so peak memory is its
own), variants alternate over rounds, and the JSON records tokens/s and peak RSS per variant.

    python benchmarks/tune_smollm2.py --threads 2 --steps 6 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def batches(vocab: int, steps: int, batch: int, seq: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (batch, seq + 1), generator=g) for _ in range(steps + 1)]


def run_variant(name: str, method: str, dtype: str, steps: int, batch: int, seq: int, threads: int) -> dict:
    """One variant, in this process: warm-up step, then ``steps`` timed steps."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    from fissure.models.registry_files import smollm2_dir
    from fissure.train.trainer import TrainConfig, make_optimizer

    path = smollm2_dir()
    cfg = TrainConfig(lr=1e-4, weight_decay=0.0, dtype=dtype)
    if name == "fissure":
        from fissure.models.hf_llama import load_hf_llama_dir
        from fissure.train.lora import LoraSpec, apply_lora

        model = load_hf_llama_dir(path)
        if method == "lora":
            apply_lora(model, LoraSpec(rank=16, alpha=32, dropout=0.0, targets=["attention", "mlp"]))
        forward = model
    else:
        from transformers import LlamaForCausalLM

        model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
        if method == "lora":
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS))
        forward = lambda x: model(input_ids=x).logits  # noqa: E731
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    model.train()
    opt = make_optimizer(model, cfg)
    data = batches(49152, steps, batch, seq)

    def step(ids):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            logits = forward(ids[:, :-1])
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    first = step(data[0])  # warm-up (allocations, kernel selection)
    t = time.perf_counter()
    for ids in data[1:]:
        step(ids)
    seconds = time.perf_counter() - t
    return {"tokens_per_second": steps * batch * seq / seconds, "seconds_per_step": seconds / steps,
            "first_loss": first, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--dtype", default="auto", help="fp32 | bf16 | auto (bf16 where the CPU has it)")
    ap.add_argument("--methods", default="lora,full")
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # name:method, run in a child process
    args = ap.parse_args()
    from fissure.utils import resolve_dtype

    dtype = resolve_dtype(args.dtype)
    if args.variant:
        name, method = args.variant.split(":")
        print(json.dumps(run_variant(name, method, dtype, args.steps, args.batch, args.seq, args.threads)))
        return
    results: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        for method in args.methods.split(","):
            for name in ("hf+peft", "fissure"):
                out = subprocess.run([sys.executable, __file__, "--variant", f"{name}:{method}", "--threads",
                                      str(args.threads), "--steps", str(args.steps), "--batch", str(args.batch),
                                      "--seq", str(args.seq), "--dtype", dtype], capture_output=True, text=True,
                                     check=True)
                results.setdefault(f"{name} {method}", []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    summary = {}
    for key, runs in results.items():
        best = max(runs, key=lambda r: r["tokens_per_second"])
        summary[key] = {**best, "rounds": runs}
    for method in args.methods.split(","):
        ours, theirs = summary[f"fissure {method}"], summary[f"hf+peft {method}"]
        ratio = ours["tokens_per_second"] / theirs["tokens_per_second"]
        summary[f"ratio {method}"] = ratio
        print(f"{method:5s} dtype {dtype}: fissure {ours['tokens_per_second']:.0f} tok/s, peak {ours['peak_rss_mib']:.0f} "
              f"MiB; HF+peft {theirs['tokens_per_second']:.0f} tok/s, peak {theirs['peak_rss_mib']:.0f} MiB; "
              f"{ratio:.2f}x; first loss {ours['first_loss']:.4f} vs {theirs['first_loss']:.4f}")
    import torch

    from common import save
    from fissure.utils import matmul_gflops

    torch.set_num_threads(args.threads)
    peak = matmul_gflops(torch.bfloat16 if dtype == "bf16" else torch.float32)
    flops = 6 * 134.5e6  # per token, full fine-tuning (forward + backward with weight gradients)
    for method in args.methods.split(","):
        per_token = flops if method == "full" else 4 * 134.5e6  # LoRA: no gradients for the frozen weights
        for name in ("fissure", "hf+peft"):
            entry = summary[f"{name} {method}"]
            entry["mfu"] = entry["tokens_per_second"] * per_token / (peak * 1e9)
    print(f"matmul peak {peak:.0f} GFLOP/s ({dtype}); MFU fissure lora {summary.get('fissure lora', {}).get('mfu', 0):.2f}, "
          f"full {summary.get('fissure full', {}).get('mfu', 0):.2f}")
    path = save("tune_smollm2", {"dtype": dtype, "batch": args.batch, "seq": args.seq, "steps": args.steps,
                                 "matmul_peak_gflops": peak, "results": summary}, seed=0, threads=args.threads)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
