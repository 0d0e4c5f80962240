"""Validate a judge against replies people labelled: agreement, kappa, per-class F1, confusion.

A judge's three-way label is read in the labelled set's scheme (:data:`fissure.judges.labelled.SCHEMES`):

- ``three-way``: the label itself (``refused``, ``violated``, ``unclear``);
- ``refusal`` (PyRIT's refusal sets): ``refused`` when the judge says refused, or unclear of kind
  ``off_topic`` (PyRIT calls a reply unrelated to the objective a refusal; fissure calls it
  unclear/off_topic, so the two definitions meet there), else ``complied``;
- ``objective`` (PyRIT's objective sets): ``violated`` when the judge says violated, else
  ``not_violated``. Without a policy the rules cannot see restricted content, so they never say
  violated there: their agreement is the share of rows that did not achieve the objective.

Judges: ``rules`` (the probe policy judge: the row's policy detector where the row names a
policy, with its ``canary``; both refusal detectors; the unclear detectors), ``anchored`` and
``lexicon`` (one refusal detector alone), and ``learned:NAME`` (a judge fitted with
:mod:`fissure.judges.learned` on dev rows of the same scheme).
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter

from ..errors import DataError
from ..judges import DetectorResult, PolicyJudge, Verdict
from ..judges.labelled import LabelledReply, LabelledSet
from ..judges.learned import load_learned_judge, reply_features
from ..judges.refusal import refusal_anchored, refusal_lexicon
from ..judges.unclear import UNCLEAR_KINDS
from ..metrics.agreement import agreement_report
from ..metrics.stats import wilson_interval
from ..probes.attacks import get_attack
from ..probes.policies import load_policy

VALIDATION_JUDGES = ("rules", "anchored", "lexicon")
SPLITS = ("test", "dev", "all")


class _NoPolicy:
    """No violation detector: rows that name no policy (nothing a rule could find leaked)."""

    def check(self, views) -> DetectorResult:
        return DetectorResult("policy:none", False, 0.0)


def _policy_judge(row: LabelledReply, cache: dict) -> PolicyJudge:
    key = (row.policy, row.canary)
    if key not in cache:
        if row.policy is None:
            cache[key] = PolicyJudge(_NoPolicy())
        else:
            policy = load_policy(row.policy)
            if row.canary is not None and getattr(policy.detector, "kind", None) == "canary":
                policy = dataclasses.replace(policy, detector=dataclasses.replace(policy.detector, canary=row.canary),
                                             canary=row.canary)
            cache[key] = PolicyJudge(policy)
    return cache[key]


def judge_row(judge: str, row: LabelledReply, cache: dict) -> Verdict | DetectorResult:
    if judge == "anchored":
        return refusal_anchored(row.reply)
    if judge == "lexicon":
        return refusal_lexicon(row.reply, row.request)
    hints = get_attack(row.attack).apply(row.request or "") if row.attack and row.attack != "none" else None
    return _policy_judge(row, cache)(row.reply, hints, request=row.request)


def in_scheme(result: Verdict | DetectorResult, scheme: str) -> str:
    """A judge's answer as a label of the labelled set's scheme (see the module docstring)."""
    label = result.label if isinstance(result, Verdict) else ("refused" if result.fired else "unclear")
    if scheme == "refusal":
        off_topic = isinstance(result, Verdict) and result.unclear_kind == "off_topic"
        return "refused" if label == "refused" or off_topic else "complied"
    if scheme == "objective":
        return "violated" if label == "violated" else "not_violated"
    return label


def validate(labelled: LabelledSet, judge: str = "rules", split: str = "test", *, confidence: float = 0.95,
             n_resamples: int = 1000, seed: int = 0, examples: int = 20) -> dict:
    """Judge every row of ``split`` and compare with the human labels; JSON-ready."""
    learned = None
    if judge.startswith("learned:"):
        learned = load_learned_judge(judge.removeprefix("learned:"))
        if learned.scheme != labelled.scheme:
            raise DataError(f"{judge} was fitted on {learned.scheme} labels; this set's are {labelled.scheme}")
    elif judge not in VALIDATION_JUDGES:
        raise DataError(f"unknown judge '{judge}' (known: {', '.join(VALIDATION_JUDGES)}, learned:NAME)")
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}' (known: {', '.join(SPLITS)})")
    if judge in ("anchored", "lexicon") and labelled.scheme != "refusal":
        raise DataError(f"'{judge}' is a refusal detector: it can only be validated on refusal labels "
                        f"(this set's scheme is {labelled.scheme}); use --judge rules")
    rows = labelled.select(split)
    if not rows:
        raise DataError(f"{labelled.path} has no rows in split '{split}' (splits: "
                        f"{', '.join(sorted({r.split for r in labelled.rows}))})")
    cache: dict = {}
    t = time.perf_counter()
    if learned is not None:
        from ..backends import load

        results = []
        predicted = learned.predict(reply_features(load(learned.model), rows))
    else:
        results = [judge_row(judge, row, cache) for row in rows]
        predicted = [in_scheme(r, labelled.scheme) for r in results]
    seconds = time.perf_counter() - t
    report = agreement_report([r.label for r in rows], predicted, labelled.classes, confidence=confidence,
                              n_resamples=n_resamples, seed=seed)
    kinds = Counter(r.unclear_kind for r in results if isinstance(r, Verdict) and r.unclear_kind)
    both = [(row.kind, r.unclear_kind) for row, r in zip(rows, results)
            if row.kind and isinstance(r, Verdict) and r.label == "unclear" and r.unclear_kind]
    kind_agreement = None
    if both:
        kind_agreement = {"n": len(both), "agree": sum(h == j for h, j in both),
                          **wilson_interval(sum(h == j for h, j in both), len(both), confidence).as_dict(),
                          "by_kind": {k: {"n": sum(h == k for h, _ in both), "agree": sum(h == j == k for h, j in both)}
                                      for k in UNCLEAR_KINDS if any(h == k for h, _ in both)}}
    disagreements = [{"source": row.source, "label": row.label, "judged": p, "reply": row.reply[:300]}
                     for row, p in zip(rows, predicted) if p != row.label]
    return {"file": labelled.path, "format": labelled.fmt, "scheme": labelled.scheme, "judge": judge,
            "judge_info": learned.meta if learned is not None else None,
            "split": split, "rows_in_file": len(labelled.rows), **report,
            "unclear_kinds": dict(sorted(kinds.items())), "unclear_kind_agreement": kind_agreement,
            "disagreements": len(disagreements),
            "examples": disagreements[:examples], "seconds": seconds,
            "replies_per_second": len(rows) / seconds if seconds else None}


REFERENCE = "pyrit:refusal_scorer/refusal.csv"


def rules_validation(confidence: float = 0.95) -> dict:
    """How well the rules detect refusals on replies no rule was written against: the test split of
    PyRIT's human-labelled ``refusal.csv`` (when PyRIT is installed). ``sensitivity`` and
    ``specificity`` are (hits, rows) of the refused and complied classes, for correcting rates."""
    from importlib.metadata import PackageNotFoundError, version

    from ..judges.labelled import read_labelled

    try:
        labelled = read_labelled(REFERENCE)
        pyrit = version("pyrit")
    except (DataError, PackageNotFoundError) as exc:
        return {"validated": False, "note": str(exc)}
    r = validate(labelled, "rules", "test", confidence=confidence, examples=0)
    (tp, fn), (fp, tn) = r["confusion"]["matrix"]  # rows: human refused, complied
    return {"validated": True, "set": f"PyRIT {pyrit} {REFERENCE.removeprefix('pyrit:')}, test split", "n": r["n"],
            "agreement": r["agreement"], "kappa": r["kappa"], "sensitivity": [tp, tp + fn], "specificity": [tn, fp + tn]}
