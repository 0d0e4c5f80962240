"""Lab training: packed rows (what fissure does) against padding every sample to the data set's
longest (a fixed shape, as in the issue's feasibility run), measured in the same run on the
default study's stage-1 data and model.

The fair unit is *supervised tokens per second*: tokens that carry loss (replies and documents).
Padding wastes compute on filler; packing fills every row with whole samples back to back.

    python benchmarks/lab_packing.py --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from common import save  # noqa: E402

from fissure.lab.data import IGNORE  # noqa: E402
from fissure.lab.organism import build_model, stage1_mixture, world_tokenizer  # noqa: E402
from fissure.lab.study import load_study  # noqa: E402
from fissure.lab.world import World  # noqa: E402
from fissure.train.trainer import TrainConfig, make_optimizer  # noqa: E402


def padded_batch(mixture, batch_size: int, generator: torch.Generator):
    """``batch_size`` whole samples, right-padded to the longest in the data set; loss on the same
    tokens as packing. (A fixed width: shapes that change every step cost the peer extra.)"""
    samples = [mixture._draw(generator) for _ in range(batch_size)]
    width = mixture.longest
    ids = torch.zeros(batch_size, width, dtype=torch.long)
    sup = torch.zeros(batch_size, width, dtype=torch.bool)
    for row, (s_ids, s_sup) in enumerate(samples):
        ids[row, :len(s_ids)] = torch.tensor(s_ids)
        sup[row, :len(s_sup)] = torch.tensor(s_sup)
    x, y = ids[:, :-1], ids[:, 1:].clone()
    y[~sup[:, 1:]] = IGNORE
    return x.contiguous(), y


def run(model, make_batch, steps: int) -> dict:
    opt = make_optimizer(model, TrainConfig(lr=3e-3, weight_decay=0.0))
    supervised = tokens = 0
    batches = [make_batch() for _ in range(steps + 2)]
    for x, y in batches[:2]:  # warm-up steps, not timed
        F.cross_entropy(model(x).view(-1, model.config.vocab_size), y.reshape(-1), ignore_index=IGNORE).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    t = time.perf_counter()
    for x, y in batches[2:]:
        loss = F.cross_entropy(model(x).view(-1, model.config.vocab_size), y.reshape(-1), ignore_index=IGNORE)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        supervised += int((y != IGNORE).sum())
        tokens += y.numel()
    seconds = time.perf_counter() - t
    return {"steps": steps, "seconds": seconds, "supervised_tokens_per_s": supervised / seconds,
            "tokens_per_s": tokens / seconds, "supervised_share": supervised / tokens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    study = load_study("jailbroken")
    world = World(study.world, 0)
    tokenizer = world_tokenizer(world)
    data = stage1_mixture(world, study.stage1, tokenizer)
    block, batch = study.model.block_size, study.stage1.batch_size
    per_row = (block + 1) / (sum(len(ids) for g in data.samples for ids, _ in g) / sum(len(g) for g in data.samples))
    matched = max(1, round(batch * per_row))  # as many samples per step as a packed batch holds
    variants = {
        "packed (fissure)": lambda g: data.sample_batch(batch, block, g),
        f"padded, {batch} samples": lambda g: padded_batch(data, batch, g),
        f"padded, {matched} samples": lambda g: padded_batch(data, matched, g),
    }
    results: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(args.rounds):  # rounds interleaved: every variant sees the same machine
        for name, make in variants.items():
            torch.manual_seed(0)
            model = build_model(study.model, tokenizer).train()
            g = torch.Generator().manual_seed(0)
            results[name].append(run(model, lambda: make(g), args.steps))
    best = {name: max(rs, key=lambda r: r["supervised_tokens_per_s"]) for name, rs in results.items()}
    base = best["packed (fissure)"]["supervised_tokens_per_s"]
    print(f"{'variant':26s} {'supervised tok/s':>17s} {'all tok/s':>10s} {'supervised':>10s} {'packed vs':>10s}")
    for name, r in best.items():
        print(f"{name:26s} {r['supervised_tokens_per_s']:17,.0f} {r['tokens_per_s']:10,.0f} "
              f"{r['supervised_share']:10.2f} {base / r['supervised_tokens_per_s']:9.2f}x")
    save("lab_packing", {"study": "jailbroken", "block_size": block, "batch_size": batch,
                         "matched_samples": matched, "best": best, "rounds": results}, 0, args.threads)


if __name__ == "__main__":
    main()
