"""How far a judge agrees with human labels, and what its errors do to the rates it reports.

- :func:`agreement_report`: raw agreement (Wilson interval), Cohen's kappa and macro-F1 (percentile
  bootstrap over replies), per-class precision, recall (Wilson) and F1, and the confusion matrix
  (rows: the human label, columns: the judge's). Definitions match scikit-learn's
  ``accuracy_score``, ``cohen_kappa_score``, ``precision_recall_fscore_support(zero_division=0)``
  and ``confusion_matrix`` on the same labels.
- :func:`corrected_rate`: a rate a judge counted (an ASR: replies judged *violated*) corrected for
  the judge's measured sensitivity and specificity (Rogan and Gladen, 1978:
  ``p = (q + sp - 1) / (se + sp - 1)``, clipped to [0, 1]), with a percentile interval from a
  parametric bootstrap that resamples the counted rate and both error rates from their binomials,
  so the interval carries the uncertainty of the validation set as well as the run's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import DataError
from .classify import _rate, confusion, f1_scores, macro_f1
from .stats import Interval, bootstrap_interval, wilson_interval


def cohen_kappa(cm: np.ndarray) -> float:
    """Cohen's kappa of a confusion matrix: (observed - chance agreement) / (1 - chance); 1.0 when
    both raters put everything in one class, as scikit-learn does for perfect agreement."""
    n = cm.sum()
    observed = np.trace(cm) / n
    chance = float((cm.sum(axis=0) * cm.sum(axis=1)).sum()) / (n * n)
    return 1.0 if chance == 1 else float((observed - chance) / (1 - chance))


def agreement_report(truth: Sequence[str], predicted: Sequence[str], classes: Sequence[str], *,
                     confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0) -> dict:
    """Every agreement number between human labels ``truth`` and a judge's ``predicted`` labels,
    both drawn from ``classes``; JSON-ready."""
    classes = list(classes)
    if len(truth) != len(predicted):
        raise DataError(f"{len(truth)} labels but {len(predicted)} predictions")
    if not truth:
        raise DataError("no labelled replies to validate against")
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({x for x in (*truth, *predicted) if x not in index})
    if unknown:
        raise DataError(f"labels outside the classes {classes}: {unknown}")
    y = np.array([index[t] for t in truth], dtype=np.int64)
    p = np.array([index[t] for t in predicted], dtype=np.int64)
    k, n = len(classes), len(y)
    cm = confusion(y, p, k)

    def resampled(statistic) -> dict:
        return bootstrap_interval(np.arange(n), lambda rows: statistic(confusion(y[rows.astype(np.intp)],
                                                                               p[rows.astype(np.intp)], k)),
                                  confidence, n_resamples, seed).as_dict()

    tp, judged, support = np.diag(cm), cm.sum(axis=0), cm.sum(axis=1)
    f1 = f1_scores(cm)
    return {
        "n": n,
        "classes": classes,
        "agreement": wilson_interval(int(np.trace(cm)), n, confidence).as_dict(),
        "kappa": resampled(cohen_kappa),
        "macro_f1": resampled(macro_f1),
        "per_class": [{"name": c, "precision": _rate(tp[i], judged[i], confidence),
                       "recall": _rate(tp[i], support[i], confidence), "f1": float(f1[i]),
                       "support": int(support[i]), "judged": int(judged[i])} for i, c in enumerate(classes)],
        "confusion": {"rows": "human label", "columns": "judge", "classes": classes, "matrix": cm.tolist()},
    }


def corrected_rate(positives: int, trials: int, sensitivity: tuple[int, int], specificity: tuple[int, int], *,
                   confidence: float = 0.95, n_resamples: int = 4000, seed: int = 0) -> dict:
    """The true rate behind ``positives`` of ``trials`` judged positive, given the judge's
    ``sensitivity`` = (true positives it found, positives in the validation set) and
    ``specificity`` = (true negatives it kept, negatives in the validation set).

    Returns ``raw`` (Wilson) and ``corrected`` (Rogan-Gladen estimate, parametric-bootstrap
    interval), and ``informative``: False where se + sp <= 1 (the judge is no better than a coin
    on this validation set, so nothing can be corrected: the interval is then [0, 1])."""
    (se_hits, se_n), (sp_hits, sp_n) = sensitivity, specificity
    if trials < 1 or se_n < 1 or sp_n < 1:
        raise DataError("a corrected rate needs at least one reply judged and one validated positive and negative")
    raw = wilson_interval(positives, trials, confidence)
    se, sp = se_hits / se_n, sp_hits / sp_n

    def rogan_gladen(q, se_, sp_):
        q, se_, sp_ = np.broadcast_arrays(q, se_, sp_)
        denominator = se_ + sp_ - 1
        out = np.full(q.shape, np.nan)
        ok = denominator > 0
        out[ok] = np.clip((q[ok] + sp_[ok] - 1) / denominator[ok], 0.0, 1.0)
        return out

    estimate = float(rogan_gladen(positives / trials, se, sp))
    rng = np.random.default_rng(seed)
    draws = rogan_gladen(rng.binomial(trials, positives / trials, n_resamples) / trials,
                         rng.binomial(se_n, se, n_resamples) / se_n, rng.binomial(sp_n, sp, n_resamples) / sp_n)
    draws = draws[~np.isnan(draws)]
    alpha = (1 - confidence) / 2
    informative = se + sp > 1 and draws.size >= n_resamples // 2
    low, high = (float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha))) if informative else (0.0, 1.0)
    corrected = Interval(estimate if informative else float("nan"), low, high, confidence,
                         f"rogan-gladen, parametric bootstrap-{n_resamples}")
    return {"raw": raw.as_dict(), "corrected": corrected.as_dict(), "informative": bool(informative),
            "sensitivity": se, "specificity": sp}
