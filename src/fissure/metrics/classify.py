"""Classification metrics with their uncertainty: accuracy, macro-F1, per-class precision, recall
and F1, the confusion matrix, and calibration (ECE with its reliability diagram).

A classifier is judged on a held-out set, and a held-out set is a sample, so every rate is an
interval: Wilson intervals where the number is a proportion with a known denominator (accuracy,
precision, recall), a percentile bootstrap over examples where it is not (macro-F1, ECE).

Definitions, chosen to agree with scikit-learn so that numbers are comparable across tools:

- The prediction is the argmax of each probability row (ties go to the lower class index).
- Precision, recall and F1 of a class with a zero denominator are 0.0 (``zero_division=0``); its
  precision or recall interval is then [0, 1], which says the data told us nothing.
- Macro-F1 averages the classes that occur in the labels or the predictions, as
  ``sklearn.metrics.f1_score(average="macro")`` does: a class absent from both has no F1 to average.
- ECE (Guo et al., 2017) is top-label: the confidence is the max probability, binned into
  ``n_bins`` equal-width bins ``(low, high]`` (the first also holds 0), the same binning as
  ``sklearn.calibration.calibration_curve(strategy="uniform")``;
  ECE = sum over bins of |accuracy(bin) - mean confidence(bin)| * count(bin) / n.
  With few examples per bin ECE is biased upwards (sampling noise never cancels inside |.|), and
  its bootstrap resamples are biased once more, so for a well-calibrated model the percentile
  interval can sit wholly above the estimate: read it as the spread of ECE, not a bias correction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from .._version import __version__
from ..errors import ConfigError, DataError
from .stats import Interval, bootstrap_interval, wilson_interval


def classification_report(labels: Sequence[int], probabilities: np.ndarray | Sequence[Sequence[float]],
                          class_names: Sequence[str] | None = None, *, confidence: float = 0.95, n_bins: int = 10,
                          n_resamples: int = 1000, seed: int = 0) -> dict:
    """Every classification metric of one held-out set, as a JSON-ready dict.

    ``labels[i]`` is the true class index of example ``i``; ``probabilities[i]`` its predicted
    distribution over the ``k`` classes. Keys: ``n``, ``classes``, ``accuracy`` (Wilson),
    ``macro_f1`` (bootstrap), ``per_class`` (name, precision and recall as Wilson intervals, f1,
    support), ``confusion_matrix`` (rows true, columns predicted), ``ece`` (bootstrap),
    ``reliability`` (one entry per bin; accuracy and mean confidence are None for an empty bin)
    and ``signature``.
    """
    _check_options(confidence, n_bins, n_resamples)
    y, probs = _validated(labels, probabilities)
    n, k = probs.shape
    names = _class_names(class_names, k)
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    cm = confusion(y, pred, k)

    def resampled(statistic):
        def on_rows(index: np.ndarray) -> float:
            rows = index.astype(np.intp)
            return statistic(y[rows], pred[rows], conf[rows])
        return bootstrap_interval(np.arange(n), on_rows, confidence, n_resamples, seed).as_dict()

    return {
        "n": n,
        "classes": names,
        "accuracy": wilson_interval(int(np.trace(cm)), n, confidence).as_dict(),
        "macro_f1": resampled(lambda t, p, c: macro_f1(confusion(t, p, k))),
        "per_class": _per_class(cm, names, confidence),
        "confusion_matrix": cm.tolist(),
        "ece": resampled(lambda t, p, c: expected_calibration_error(t == p, c, n_bins)),
        "reliability": reliability_bins(pred == y, conf, n_bins),
        "signature": (f"bins={n_bins}|ece=top-label,equal-width|f1=macro-present,zero_division=0"
                      f"|ci=wilson,bootstrap-{n_resamples}|confidence={confidence}|seed={seed}"
                      f"|fissure={__version__}"),
    }


def confusion(true: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """k x k counts: rows are the true class, columns the predicted one."""
    return np.bincount(true * k + pred, minlength=k * k).reshape(k, k)


def f1_scores(cm: np.ndarray) -> np.ndarray:
    """Per-class F1 = 2 tp / (2 tp + fp + fn), 0.0 where a class is neither true nor predicted."""
    tp = np.diag(cm)
    denominator = cm.sum(axis=0) + cm.sum(axis=1)  # = 2 tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros(len(tp)), where=denominator > 0)


def macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over the classes that occur as a label or a prediction."""
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    return float(f1_scores(cm)[present].mean())


def expected_calibration_error(correct: np.ndarray, confidences: np.ndarray, n_bins: int) -> float:
    """Top-label ECE over equal-width bins (see the module docstring)."""
    counts, hits, conf_sums = _bin_sums(correct, confidences, n_bins)
    return float(np.abs(hits - conf_sums).sum() / counts.sum())  # sum_b n_b |acc_b - conf_b| / n


def reliability_bins(correct: np.ndarray, confidences: np.ndarray, n_bins: int) -> list[dict]:
    """The reliability diagram: per bin its edges, count, accuracy and mean confidence."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    counts, hits, conf_sums = _bin_sums(correct, confidences, n_bins)
    return [{"low": float(edges[b]), "high": float(edges[b + 1]), "count": int(counts[b]),
             "accuracy": float(hits[b] / counts[b]) if counts[b] else None,
             "mean_confidence": float(conf_sums[b] / counts[b]) if counts[b] else None}
            for b in range(n_bins)]


def _bin_sums(correct: np.ndarray, confidences: np.ndarray, n_bins: int):
    """Per bin: examples, correct ones and summed confidence; bins are (low, high] as in sklearn."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], confidences)
    return (np.bincount(bins, minlength=n_bins), np.bincount(bins, weights=correct, minlength=n_bins),
            np.bincount(bins, weights=confidences, minlength=n_bins))


def _per_class(cm: np.ndarray, names: list[str], confidence: float) -> list[dict]:
    tp, predicted, support = np.diag(cm), cm.sum(axis=0), cm.sum(axis=1)
    f1 = f1_scores(cm)
    return [{"name": name, "precision": _rate(tp[c], predicted[c], confidence),
             "recall": _rate(tp[c], support[c], confidence), "f1": float(f1[c]), "support": int(support[c])}
            for c, name in enumerate(names)]


def _rate(successes: int, trials: int, confidence: float) -> dict:
    """A Wilson interval whose 0/0 estimate is 0.0 (scikit-learn's zero_division=0), not NaN."""
    interval: Interval = wilson_interval(int(successes), int(trials), confidence)
    return (interval if trials else dataclasses.replace(interval, estimate=0.0)).as_dict()


def _check_options(confidence: float, n_bins: int, n_resamples: int) -> None:
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be between 0 and 1, not {confidence}")
    if n_bins < 1:
        raise ConfigError(f"n_bins must be at least 1, not {n_bins}")
    if n_resamples < 1:
        raise ConfigError(f"n_resamples must be at least 1, not {n_resamples}")


def _validated(labels: Sequence[int], probabilities) -> tuple[np.ndarray, np.ndarray]:
    """Labels as int64 and probabilities as an (n, k) float64 array, or a DataError saying what is wrong."""
    try:
        probs = np.asarray(probabilities, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError("probabilities must be an (n, k) array of numbers (rows of equal length)") from None
    y = np.asarray(labels)
    if y.ndim != 1 or not (y.size == 0 or np.issubdtype(y.dtype, np.integer)):
        raise DataError(f"labels must be a 1-D sequence of integer class indices, got dtype {y.dtype} "
                        f"and shape {y.shape}")
    if y.size == 0:
        raise DataError("no examples: labels is empty")
    if probs.ndim != 2 or probs.shape[0] != y.size or probs.shape[1] < 2:
        raise DataError(f"probabilities must have shape (n={y.size}, k>=2), got {probs.shape}")
    if not np.isfinite(probs).all():
        raise DataError(f"probabilities must be finite: row {np.flatnonzero(~np.isfinite(probs).all(1))[0]} is not")
    if (probs < 0).any():
        raise DataError(f"probabilities must be non-negative: row {np.flatnonzero((probs < 0).any(1))[0]} is not")
    off = np.abs(probs.sum(axis=1) - 1) > 1e-4
    if off.any():
        row = np.flatnonzero(off)[0]
        raise DataError(f"probability rows must sum to 1 (within 1e-4): row {row} sums to {probs[row].sum():.6g}")
    k = probs.shape[1]
    outside = (y < 0) | (y >= k)
    if outside.any():
        raise DataError(f"labels must be class indices in [0, {k}): label {y[outside][0]} at example "
                        f"{np.flatnonzero(outside)[0]} is not")
    return y.astype(np.int64), probs


def _class_names(class_names: Sequence[str] | None, k: int) -> list[str]:
    if class_names is None:
        return [str(c) for c in range(k)]
    names = [str(name) for name in class_names]
    if len(names) != k:
        raise DataError(f"{len(names)} class names for {k} probability columns")
    if len(set(names)) != k:
        raise DataError(f"class names must be distinct: {names}")
    return names
