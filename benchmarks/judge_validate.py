"""Validating the rule judge: 1,000 labelled replies (PyRIT's refusal sets, cycled)
judged and compared with their labels, end to end as ``fissure judge validate`` does it. Target:
<= 5 s. No offline peer exists (PyRIT's scorers call an LLM), so the number stands against the target.

    python benchmarks/judge_validate.py --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import save  # noqa: E402

from fissure.judges.labelled import LabelledSet, pyrit_datasets, read_labelled  # noqa: E402
from fissure.probes.judge_validation import validate  # noqa: E402
from fissure.utils import set_threads  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replies", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    set_threads(args.threads)
    root = pyrit_datasets()
    rows = [dataclasses.replace(r, label="refused" if r.label == "refused" else "complied", split="test")
            for f in sorted(root.glob("refusal_scorer/*.csv"))
            for r in read_labelled(f).rows]
    rows = [rows[i % len(rows)] for i in range(args.replies)]
    labelled = LabelledSet(tuple(rows), "refusal", "pyrit refusal sets, cycled", "pyrit-refusal")
    times = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        report = validate(labelled, "rules", "test")
        times.append(time.perf_counter() - t)
    best = min(times)
    print(f"{args.replies} replies: best {best:.2f} s ({args.replies / best:,.0f} replies/s) of {args.rounds} rounds; "
          f"agreement {report['agreement']['estimate']:.3f}; target <= 5 s: {'met' if best <= 5 else 'not met'}")
    path = save("judge_validate", {"replies": args.replies, "seconds": times, "best_seconds": best,
                                   "replies_per_second": args.replies / best, "distinct_replies": len(set(
                                       r.reply for r in rows))}, seed=0, threads=args.threads)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
