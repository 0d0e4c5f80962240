"""Our Kneser-Ney n-gram (``fissure.models.ngram``, numpy) against NLTK's ``KneserNeyInterpolated``
on the same corpus: training (counting) and scoring throughput, in tokens per second, in the same
run (rounds interleaved). Target: >= 10x NLTK on both. Both models are the NLTK-comparable variant
(``interpolate_uniform=False``, discount 0.75) over the same padded sentences, and the benchmark
checks that they agree on the scored log-probabilities (outside NLTK's one quirk context, see
tests/models/test_ngram.py) before it reports a ratio.

The corpus: lines of the standard library's code as "sentences" of bytes (characters), the
largest NLTK trains in a few seconds.

    python benchmarks/ngram_vs_nltk.py --threads 1 --order 3 --train-bytes 200000 --score-bytes 5000
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import save  # noqa: E402

from fissure.models.ngram import NgramConfig, NgramModel  # noqa: E402
from fissure.text.catalogue import load_domain  # noqa: E402
from fissure.utils import set_threads  # noqa: E402


def corpus(n_bytes: int, skip: int = 0) -> list[list[str]]:
    """Non-empty lines of stdlib code as character lists, ``n_bytes`` characters after ``skip``."""
    lines, total, seen = [], 0, 0
    for doc in load_domain("code", max_bytes=4 * (n_bytes + skip)):
        for line in doc.text.splitlines():
            if not line.strip():
                continue
            seen += len(line)
            if seen <= skip:
                continue
            lines.append(list(line))
            total += len(line)
            if total >= n_bytes:
                return lines
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--order", type=int, default=3)
    ap.add_argument("--train-bytes", type=int, default=200_000)
    ap.add_argument("--score-bytes", type=int, default=5_000, help="NLTK scores ~1-3k tokens/s: keep it small")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    set_threads(args.threads)
    from nltk.lm import KneserNeyInterpolated
    from nltk.lm.preprocessing import pad_both_ends, padded_everygram_pipeline
    from nltk.util import ngrams

    import torch

    n = args.order
    train, test = corpus(args.train_bytes), corpus(args.score_bytes, skip=args.train_bytes)
    symbols = ["<s>", "</s>"] + sorted({c for s in train + test for c in s})
    ix = {c: i for i, c in enumerate(symbols)}
    train_ids = [[ix[c] for c in s] for s in train]
    test_ids = [[ix[c] for c in s] for s in test]
    n_train = sum(len(s) + 2 * (n - 1) for s in train)  # padded tokens counted by both
    n_test = sum(len(s) + n - 1 for s in test)  # scored tokens (incl. </s> padding, as NLTK scores them)
    config = NgramConfig(order=n, vocab_size=len(symbols), bos_id=0, eos_id=1, discount=0.75, interpolate_uniform=False)

    times = {"ours_train": [], "nltk_train": [], "ours_score": [], "nltk_score": []}
    for _ in range(args.rounds):
        t = time.perf_counter()
        ours = NgramModel(config).fit(train_ids)
        times["ours_train"].append(time.perf_counter() - t)
        t = time.perf_counter()
        grams, vocab = padded_everygram_pipeline(n, train)
        theirs = KneserNeyInterpolated(n, discount=0.75)
        theirs.fit(grams, vocab)
        times["nltk_train"].append(time.perf_counter() - t)
        t = time.perf_counter()
        ours_lp = np.concatenate([ours.sequence_logprobs(s + [1] * (n - 1)) for s in test_ids])
        times["ours_score"].append(time.perf_counter() - t)
        t = time.perf_counter()
        nltk_p, quirk = [], []
        for s in test:
            for gram in ngrams(pad_both_ends(s, n=n), n):
                nltk_p.append(theirs.score(gram[-1], gram[:-1]))
                quirk.append(n >= 3 and gram[-2] == "<s>")
        times["nltk_score"].append(time.perf_counter() - t)
    nltk_lp = np.log(np.asarray(nltk_p))
    ok = ~np.asarray(quirk) & np.isfinite(nltk_lp)
    max_diff = float(np.abs(ours_lp[ok] - nltk_lp[ok]).max())
    assert len(ours_lp) == len(nltk_lp) == n_test and max_diff < 1e-9, (len(ours_lp), len(nltk_lp), max_diff)
    best = {k: min(v) for k, v in times.items()}
    result = {
        "order": n, "train_tokens": n_train, "score_tokens": n_test, "vocab": len(symbols), "max_logprob_diff": max_diff,
        "seconds": best,
        "tokens_per_second": {"ours_train": n_train / best["ours_train"], "nltk_train": n_train / best["nltk_train"],
                              "ours_score": n_test / best["ours_score"], "nltk_score": n_test / best["nltk_score"]},
        "speedup": {"train": best["nltk_train"] / best["ours_train"], "score": best["nltk_score"] / best["ours_score"]},
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    path = save(f"ngram_vs_nltk_order{n}", result, seed=0, threads=args.threads)
    tps = result["tokens_per_second"]
    print(f"order {n}: {n_train:,} training tokens, {n_test:,} scored; max |logprob diff| {max_diff:.1e}")
    print(f"train  ours {tps['ours_train']:>12,.0f} tok/s   NLTK {tps['nltk_train']:>10,.0f} tok/s   "
          f"{result['speedup']['train']:.0f}x")
    print(f"score  ours {tps['ours_score']:>12,.0f} tok/s   NLTK {tps['nltk_score']:>10,.0f} tok/s   "
          f"{result['speedup']['score']:.0f}x")
    print(f"(cpu capability {result['cpu_capability']}; written to {path})")
    if not math.isfinite(result["speedup"]["train"]):
        raise SystemExit("timing failed")


if __name__ == "__main__":
    main()
