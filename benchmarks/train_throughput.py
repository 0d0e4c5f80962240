"""Training throughput: our GPT against HF GPT2LMHeadModel with the same config, batch and optimizer,
measured in the same run (rounds interleaved so both see the same machine), with the machine's
fp32 and bf16 matmul peaks measured in this run too.

    python benchmarks/train_throughput.py --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from common import save, slow_dtype  # noqa: E402

from fissure.models import GPTConfig  # noqa: E402
from fissure.train.objectives import CausalLM  # noqa: E402
from fissure.train.trainer import TrainConfig, make_optimizer  # noqa: E402
from fissure.utils import matmul_gflops  # noqa: E402


def flops_per_token(cfg: GPTConfig, n_params: int) -> float:
    """nanoGPT/PaLM estimate: 6 N + 12 L d T per token (forward + backward)."""
    return 6 * n_params + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size


def make_models(cfg: GPTConfig, seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    from fissure.models.hf_gpt2 import gpt_from_hf_gpt2

    torch.manual_seed(seed)
    hf_cfg = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
                        n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = GPT2LMHeadModel(hf_cfg)
    ours = gpt_from_hf_gpt2(hf)  # same initial weights: loss curves are comparable
    return hf.train(), ours.train()


def step_fn(model, is_hf: bool, dtype: str, compiled=None):
    """One training step, each library's own way: HF's causal-LM loss upcasts the logits to float32 and
    calls ``F.cross_entropy`` (transformers' ``ForCausalLMLoss``); ours is the ``causal_lm`` objective
    the Trainer calls (fissure's slab-wise cross-entropy, :mod:`fissure.train.cross_entropy`)."""
    opt = make_optimizer(model, TrainConfig(lr=3e-4, weight_decay=0.1))
    fwd = compiled if compiled is not None else model
    objective = CausalLM()

    def step(x, y):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            if is_hf:
                logits = fwd(x).logits
                loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
            else:
                loss = objective.loss(fwd, (x, y))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--n-layer", type=int, default=6)
    ap.add_argument("--n-head", type=int, default=6)
    ap.add_argument("--n-embd", type=int, default=384)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--variants", default="hf-fp32,ours-fp32,hf-bf16,ours-bf16",
                    help="comma list from hf-fp32, hf-bf16, ours-fp32, ours-bf16, ours-fp32-compile, ours-bf16-compile")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = GPTConfig(vocab_size=args.vocab, block_size=args.block, n_layer=args.n_layer, n_head=args.n_head,
                    n_embd=args.n_embd)
    peaks = {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}
    print(f"matmul peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s, {args.threads} threads",
          file=sys.stderr)
    g = torch.Generator().manual_seed(args.seed)
    batches = [torch.randint(0, args.vocab, (args.batch, args.block + 1), generator=g) for _ in range(4)]
    batches = [(b[:, :-1].contiguous(), b[:, 1:].contiguous()) for b in batches]
    variants = args.variants.split(",")
    skipped = slow_dtype(torch.bfloat16)
    if skipped:  # bf16 autocast on a CPU without bf16 instructions would not finish in minutes
        print(skipped, file=sys.stderr)
        variants = [v for v in variants if "bf16" not in v]
    steps, losses, times = {}, {v: [] for v in variants}, {v: 0.0 for v in variants}
    n_params = None
    for v in variants:
        hf, ours = make_models(cfg, args.seed)
        is_hf = v.startswith("hf")
        model = hf if is_hf else ours
        n_params = n_params or ours.num_params()
        compiled = torch.compile(model) if v.endswith("compile") else None
        steps[v] = step_fn(model, is_hf, "bf16" if "bf16" in v else "fp32", compiled)
        for i in range(args.warmup):
            b = batches[i % 4]
            steps[v](*b)
    for r in range(args.rounds):
        for v in variants:
            t = time.perf_counter()
            for i in range(args.steps):
                b = batches[i % 4]
                losses[v].append(steps[v](*b))
            times[v] += time.perf_counter() - t
    tokens = args.rounds * args.steps * args.batch * args.block
    fpt = flops_per_token(cfg, n_params)
    rows = {}
    for v in variants:
        tps = tokens / times[v]
        peak = peaks["bf16" if "bf16" in v else "fp32"]
        rows[v] = {"tokens_per_s": tps, "mfu_vs_own_dtype_peak": tps * fpt / 1e9 / peak,
                   "mfu_vs_fp32_peak": tps * fpt / 1e9 / peaks["fp32"], "final_loss": losses[v][-1]}
    base = rows.get("hf-fp32", {}).get("tokens_per_s")
    for v in variants:
        if base:
            rows[v]["speedup_vs_hf_fp32"] = rows[v]["tokens_per_s"] / base
        twin = "hf-" + v.split("-", 1)[1].replace("-compile", "")
        if twin in rows and not v.startswith("hf"):
            rows[v]["speedup_vs_hf_same_dtype"] = rows[v]["tokens_per_s"] / rows[twin]["tokens_per_s"]
    for v, r in rows.items():
        print(f"{v:20s} {r['tokens_per_s']:8.0f} tok/s  MFU {r['mfu_vs_own_dtype_peak']:.2f}  "
              f"x{r.get('speedup_vs_hf_fp32', float('nan')):.2f} vs hf-fp32  loss {r['final_loss']:.3f}")
    path = save("train_throughput", {"config": vars(args), "skipped": skipped, "peaks_gflops": peaks,
                                     "flops_per_token": fpt,
                                     "params": n_params, "results": rows, "losses": losses}, args.seed, args.threads)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
