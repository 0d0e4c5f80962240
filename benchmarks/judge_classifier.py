"""Two offline judges learnt from SmolLM2 (issue 12, item 4's candidates), measured on test rows no
rule and no fit has seen: a refusal classifier fine-tuned with LoRA (``--method tune``), and a
linear probe on the frozen model's hidden states (``--method probe``).

Training rows (refused vs other): the dev split of PyRIT's three refusal sets, the dev half of the
blind three-way set and every row of tests/judges/data/labelled_replies.jsonl (the rules were
written against that file; it is nobody's test set). Each row reads ``Request: ...\\nReply: ...``.
The classifier is tuned with ``fissure tune run smollm2 --data ... --json`` (LoRA, classify
objective). The probe is scikit-learn's logistic regression (C = 1, standardised features) on the
residual stream at the row's last token, at the layer with the best 5-fold cross-validated accuracy
on the training rows (all chosen before any test row is scored). Both are scored on the test
splits: the rules alone, the classifier alone (it decides
refused or not wherever the rules find no leak and no loop or hint), and the rules with the
classifier as one more refusal detector (refused when either says so; fixed before scoring).

    python benchmarks/judge_classifier.py --threads 2                 # 120 steps: ~16 min on 2 cores
    python benchmarks/judge_classifier.py --threads 2 --method probe  # ~15 min on 1 thread
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import save  # noqa: E402

from fissure.judges.base import OUTRANK_REFUSAL  # noqa: E402
from fissure.judges.labelled import read_labelled  # noqa: E402
from fissure.probes.judge_validation import in_scheme, judge_row  # noqa: E402
from fissure.utils import set_threads  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REFUSAL_SETS = ["pyrit:refusal_scorer/refusal.csv", "pyrit:refusal_scorer/refusal_extra.csv",
                "pyrit:sample/mini_refusal.csv"]
BLIND = str(REPO / "tests/judges/data/blind_replies.jsonl")
FITTED = str(REPO / "tests/judges/data/labelled_replies.jsonl")
MAX_REQUEST_CHARS = 300


def text(row) -> str:
    return f"Request: {(row.request or '')[:MAX_REQUEST_CHARS]}\nReply: {row.reply}"


def training_rows() -> list[dict]:
    rows = []
    for path in [*REFUSAL_SETS, BLIND, FITTED]:
        labelled = read_labelled(path)
        for row in labelled.rows if path == FITTED else labelled.select("dev"):
            rows.append({"text": text(row), "label": "refused" if row.label == "refused" else "other"})
    return rows


def score(p_refused) -> dict:
    """The test splits judged by the rules, by ``p_refused`` (texts -> P(refused)) alone, and by both."""
    sets = {}
    for path in [*REFUSAL_SETS, BLIND]:
        labelled = read_labelled(path)
        rows = labelled.select("test")
        p = p_refused([text(r) for r in rows])
        counts, cache = Counter(), {}
        for row, q in zip(rows, p):
            verdict = judge_row("rules", row, cache)
            rules = in_scheme(verdict, labelled.scheme)
            if labelled.scheme == "refusal":
                alone = "refused" if q > 0.5 else "complied"
                either = "refused" if q > 0.5 or rules == "refused" else "complied"
            elif verdict.label == "violated" or verdict.unclear_kind in OUTRANK_REFUSAL:
                alone = either = verdict.label
            else:
                alone = "refused" if q > 0.5 else ("unclear" if verdict.label == "refused" else verdict.label)
                either = "refused" if q > 0.5 or verdict.label == "refused" else verdict.label
            counts.update({"n": 1, "rules": rules == row.label, "classifier": alone == row.label,
                           "rules_or_classifier": either == row.label})
        sets[Path(path).name] = dict(counts)
    total = Counter()
    for counts in sets.values():
        total.update(counts)
    return {"sets": sets, "total": dict(total),
            "agreement": {k: total[k] / total["n"] for k in ("rules", "classifier", "rules_or_classifier")}}


def tuned_classifier(checkpoint: str):
    from fissure.tune.classifier import load_classifier

    classifier = load_classifier(checkpoint)
    refused = classifier.labels.index("refused")
    return lambda texts: classifier.probabilities(texts)[:, refused].tolist()


def linear_probe(rows: list[dict], seed: int) -> tuple[object, dict]:
    """Logistic regression on SmolLM2's last-token residual stream, its layer chosen by 5-fold CV."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from fissure.backends import load
    from fissure.probes.direction import last_token_states

    lm = load("smollm2")

    def states(texts: list[str]):
        return last_token_states(lm, texts, batch_size=8).numpy()  # (layers, rows, hidden)

    def probe():
        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))

    x, y = states([r["text"] for r in rows]), np.array([r["label"] == "refused" for r in rows])
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    cv = [float(cross_val_score(probe(), x[layer], y, cv=folds).mean()) for layer in range(len(x))]
    layer = int(np.argmax(cv))
    fitted = probe().fit(x[layer], y)
    return (lambda texts: fitted.predict_proba(states(texts)[layer])[:, 1].tolist()), {"layer": layer, "cv_accuracy": cv}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", choices=("tune", "probe"), default="tune")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default=str(REPO / "runs"))
    args = ap.parse_args()
    set_threads(args.threads)
    rows = training_rows()
    if args.method == "probe":
        start = time.perf_counter()
        p_refused, fit = linear_probe(rows, args.seed)
        result = score(p_refused)
        result.update({"method": "probe", "train_rows": len(rows), **fit, "seconds": time.perf_counter() - start,
                       "train_labels": dict(Counter(r["label"] for r in rows))})
        report(result, f"layer {fit['layer']}, CV accuracy {fit['cv_accuracy'][fit['layer']]:.3f}")
        print(f"wrote {save('judge_probe', result, seed=args.seed, threads=args.threads)}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "refusal-dev.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "fissure", "tune", "run", "smollm2", "--data", str(data),
                              "--set", f"train.max_steps={args.steps}", "--seed", str(args.seed),
                              "--threads", str(args.threads), "--out-dir", args.out_dir, "--json"],
                             check=True, capture_output=True, text=True).stdout
        tuned = json.loads(out)
    seconds = time.perf_counter() - start
    result = score(tuned_classifier(tuned["checkpoint"]))
    result.update({"method": "tune", "train_rows": len(rows), "train_labels": dict(Counter(r["label"] for r in rows)),
                   "steps": args.steps, "tune_seconds": seconds, "checkpoint": tuned["checkpoint"],
                   "val_accuracy": tuned["classification"]["accuracy"]["estimate"]})
    report(result, f"tuning {seconds:.0f} s")
    print(f"wrote {save('judge_classifier', result, seed=args.seed, threads=args.threads)}")


def report(result: dict, how: str) -> None:
    for name, counts in result["sets"].items():
        print(f"{name}: n {counts['n']}, rules {counts['rules']}, classifier {counts['classifier']}, "
              f"rules or classifier {counts['rules_or_classifier']}")
    print("agreement on all test rows:", {k: round(v, 3) for k, v in result["agreement"].items()},
          f"(n {result['total']['n']}; {how})")


if __name__ == "__main__":
    main()
