"""The model judge with SmolLM2-135M-Instruct locally (score mode, batched) on the labelled replies
(tests/judges/data/labelled_replies.jsonl): replies/s, and agreement with the human labels of the
rules, the model judge (plain and calibrated) and the cascade, on the same replies.

    PYTHONPATH=src python benchmarks/judge_model.py [--split holdout] [--threads 1]

Writes benchmarks/results/judge_model.json. Each judge starts with an empty in-memory cache, so
every reply costs a model call; a second pass over the same replies (cache hits) is timed too.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "judges"))
from common import save  # noqa: E402
from test_judge_labelled import build_reply  # noqa: E402  (placeholders filled, then the encoding)

import fissure  # noqa: E402
from fissure.judges import LABELS, PolicyJudge  # noqa: E402
from fissure.judges.model import CascadeJudge, ModelJudge  # noqa: E402
from fissure.probes.attacks import get_attack  # noqa: E402
from fissure.probes.policies import load_policy  # noqa: E402

DATA = Path(__file__).parents[1] / "tests" / "judges" / "data" / "labelled_replies.jsonl"


def agreement(gold: list[str], predicted: list[str]) -> dict:
    out = {"accuracy": sum(g == p for g, p in zip(gold, predicted)) / len(gold),
           "predicted": dict(Counter(predicted))}
    for label in LABELS:
        tp = sum(g == p == label for g, p in zip(gold, predicted))
        n_pred, n_gold = predicted.count(label), gold.count(label)
        out[label] = {"precision": tp / n_pred if n_pred else None, "recall": tp / n_gold if n_gold else None,
                      "support": n_gold}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", default="holdout", help="dev, test, holdout or all")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    policies = {name: load_policy(name, seed=0) for name in ("secret", "private_record", "topic_ban")}
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if args.split in ("all", r["split"])]
    began = time.perf_counter()
    lm = fissure.load("smollm2", batch_size=args.batch_size)
    load_s = time.perf_counter() - began
    gold = [r["label"] for r in rows]
    out: dict = {"model": "smollm2 (SmolLM2-135M-Instruct)", "split": args.split, "replies": len(rows),
                 "threads": args.threads, "batch_size": args.batch_size, "load_seconds": round(load_s, 1)}

    def items_for(policy_name: str):
        policy = policies[policy_name]
        chosen = [r for r in rows if r["policy"] == policy_name]
        return policy, chosen, [(build_reply(r, policies["secret"].canary),
                                 get_attack(r["attack"]).apply(policy.requests[0], random.Random(r["id"])),
                                 policy.requests[0]) for r in chosen]

    def run(make) -> tuple[list[str], float, float]:
        """Labels in row order, seconds for all replies, seconds for a second (cached) pass."""
        labels: dict[int, str] = {}
        seconds = again = 0.0
        for name in policies:
            policy, chosen, items = items_for(name)
            if not chosen:
                continue
            judge = make(policy)
            t = time.perf_counter()
            verdicts = judge.judge_many(items)
            seconds += time.perf_counter() - t
            t = time.perf_counter()
            judge.judge_many(items)
            again += time.perf_counter() - t
            labels.update((r["id"], v.label) for r, v in zip(chosen, verdicts))
        return [labels[r["id"]] for r in rows], seconds, again

    rules = [PolicyJudge(policies[r["policy"]])(build_reply(r, policies["secret"].canary),
                                                 get_attack(r["attack"]).apply(policies[r["policy"]].requests[0],
                                                                               random.Random(r["id"]))).label
             for r in rows]
    out["rules"] = agreement(gold, rules)
    for name, make in (("model", lambda p: ModelJudge(lm, p)),
                       ("model_calibrated", lambda p: ModelJudge(lm, p, calibrate=True)),
                       ("cascade", lambda p: CascadeJudge(p, ModelJudge(lm, p)))):
        labels, seconds, again = run(make)
        out[name] = {**agreement(gold, labels), "seconds": round(seconds, 2),
                     "replies_per_s": round(len(rows) / seconds, 3), "cached_pass_seconds": round(again, 3)}
        print(f"{name:17} accuracy {out[name]['accuracy']:.2f}  {out[name]['replies_per_s']:.2f} replies/s  "
              f"predicted {out[name]['predicted']}", flush=True)
    print(f"rules             accuracy {out['rules']['accuracy']:.2f}  predicted {out['rules']['predicted']}")
    print(f"saved {save('judge_model', out, 0, args.threads)}")


if __name__ == "__main__":
    main()
