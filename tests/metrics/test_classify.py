"""classification_report against scikit-learn, scipy and ECE written out here, on the same predictions."""

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.calibration import calibration_curve
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

import fissure
from fissure.errors import ConfigError, DataError, UserError
from fissure.metrics.classify import classification_report


def make_case(seed, n, k, never_predicted=None, absent_label=None, sharpen=1.0):
    """Probabilities from a Dirichlet, labels drawn from a blur of them (so predictions are informative).

    ``never_predicted`` gets probability 0 in every row (argmax never picks it, yet it can be a
    label); ``absent_label`` is never drawn as a label (yet it can be predicted). ``sharpen`` > 1
    raises the reported probabilities to that power: the labels stay drawn from the unsharpened ones.
    """
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(k, 0.7), size=n)
    if never_predicted is not None:
        p[:, never_predicted] = 0.0
        p /= p.sum(axis=1, keepdims=True)
    q = 0.8 * p + 0.2 / k
    if absent_label is not None:
        q[:, absent_label] = 0.0
    q /= q.sum(axis=1, keepdims=True)
    y = (rng.random(n)[:, None] > q.cumsum(axis=1)).sum(axis=1).clip(max=k - 1)
    reported = p ** sharpen
    return y, reported / reported.sum(axis=1, keepdims=True)


def calibrated_case(seed, n, k, sharpen=1.0):
    """Labels drawn from exactly the probabilities reported (sharpen=1): calibrated by construction."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(k), size=n)
    y = (rng.random(n)[:, None] > p.cumsum(axis=1)).sum(axis=1).clip(max=k - 1)
    reported = p ** sharpen
    return y, reported / reported.sum(axis=1, keepdims=True)


def ece_by_hand(y, probs, n_bins):
    """Guo et al. (2017), written out: bins ((b-1)/M, b/M], the first closed at 0."""
    conf, correct = probs.max(axis=1), probs.argmax(axis=1) == y
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = ((conf > lo) | (b == 0)) & (conf <= hi)
        if members.any():
            total += abs(correct[members].mean() - conf[members].mean()) * members.sum() / len(y)
    return total


CASES = {  # name: (seed, n, k, never_predicted, absent_label)
    "plain": (0, 300, 3, None, None),
    "never-predicted": (1, 500, 5, 2, None),
    "absent-label": (2, 400, 4, None, 0),
    "both-kinds": (3, 250, 6, 1, 4),
    "absent-everywhere": (4, 120, 4, 3, 3),
}


@pytest.mark.parametrize("name", CASES)
def test_matches_sklearn(name):
    seed, n, k, never_predicted, absent_label = CASES[name]
    y, probs = make_case(seed, n, k, never_predicted, absent_label)
    pred = probs.argmax(axis=1)
    if never_predicted is not None:  # the case has what its name says
        assert not (pred == never_predicted).any()
    if absent_label is not None:
        assert not (y == absent_label).any()
    report = classification_report(y, probs, n_resamples=50)

    assert report["n"] == n and report["classes"] == [str(c) for c in range(k)]
    assert report["accuracy"]["estimate"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert report["macro_f1"]["estimate"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0),
                                                           abs=1e-12)
    assert report["confusion_matrix"] == confusion_matrix(y, pred, labels=range(k)).tolist()
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=range(k), zero_division=0)
    rows = report["per_class"]
    assert [r["precision"]["estimate"] for r in rows] == pytest.approx(precision, abs=1e-12)
    assert [r["recall"]["estimate"] for r in rows] == pytest.approx(recall, abs=1e-12)
    assert [r["f1"] for r in rows] == pytest.approx(f1, abs=1e-12)
    assert [r["support"] for r in rows] == support.tolist()


def test_macro_f1_skips_a_class_that_is_neither_label_nor_prediction():
    """As sklearn's default: averaging a 0.0 for a class the data never mention would punish nothing."""
    y, probs = make_case(*CASES["absent-everywhere"])
    pred = probs.argmax(axis=1)
    every_class = f1_score(y, pred, labels=range(4), average="macro", zero_division=0)
    got = classification_report(y, probs, n_resamples=20)["macro_f1"]["estimate"]
    assert got == pytest.approx(f1_score(y, pred, average="macro", zero_division=0), abs=1e-12)
    assert got == pytest.approx(every_class * 4 / 3, abs=1e-12) and got > every_class


def test_zero_division_gives_zero_estimate_and_uninformative_interval():
    y, probs = make_case(*CASES["both-kinds"])
    report = classification_report(y, probs, class_names=list("abcdef"), n_resamples=20)
    never = report["per_class"][1]
    assert never["name"] == "b" and never["support"] > 0
    assert never["precision"]["estimate"] == 0.0 and (never["precision"]["low"], never["precision"]["high"]) == (0, 1)
    assert never["recall"]["estimate"] == 0.0 and never["recall"]["high"] < 1  # 0 of support > 0: a real 0
    absent = report["per_class"][4]
    assert absent["support"] == 0 and absent["recall"]["estimate"] == 0.0
    assert (absent["recall"]["low"], absent["recall"]["high"]) == (0, 1)
    json.dumps(report, allow_nan=False)  # JSON-ready: no NaN anywhere, empty bins included


def test_ties_go_to_the_lower_class_index():
    report = classification_report([1, 0], [[0.5, 0.5], [0.5, 0.5]], n_resamples=10)
    assert report["confusion_matrix"] == [[1, 0], [1, 0]]


@pytest.mark.parametrize("confidence", [0.95, 0.9])
def test_wilson_intervals_match_scipy(confidence):
    y, probs = make_case(*CASES["never-predicted"])
    report = classification_report(y, probs, confidence=confidence, n_resamples=20)
    cm = np.array(report["confusion_matrix"])
    checks = [(report["accuracy"], int(np.trace(cm)), len(y))]
    for c, row in enumerate(report["per_class"]):
        checks += [(row["precision"], cm[c, c], cm[:, c].sum()), (row["recall"], cm[c, c], cm[c].sum())]
    compared = 0
    for got, successes, trials in checks:
        assert got["method"] == "wilson" and got["confidence"] == confidence
        if trials == 0:
            continue
        ref = binomtest(int(successes), int(trials)).proportion_ci(confidence_level=confidence, method="wilson")
        assert (got["low"], got["high"]) == pytest.approx((ref.low, ref.high), abs=1e-9)
        compared += 1
    assert compared == len(checks) - 1  # all but the never-predicted class's precision


def test_ece_by_hand():
    # confidences 0.95, 0.85 | 0.75, 0.65 in bins (0.8, 1] and (0.6, 0.8]; correct T, F | T, F
    probs = [[0.95, 0.05], [0.85, 0.15], [0.25, 0.75], [0.65, 0.35]]
    report = classification_report([0, 1, 1, 1], probs, n_bins=5, n_resamples=20)
    # |0.5 - 0.9| * 2/4 + |0.5 - 0.7| * 2/4
    assert report["ece"]["estimate"] == pytest.approx(0.3, abs=1e-12)
    bins = report["reliability"]
    assert [b["count"] for b in bins] == [0, 0, 0, 2, 2]
    assert [b["low"] for b in bins] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])
    assert [b["high"] for b in bins] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert bins[0]["accuracy"] is None and bins[0]["mean_confidence"] is None
    assert (bins[3]["accuracy"], bins[3]["mean_confidence"]) == pytest.approx((0.5, 0.7))
    assert (bins[4]["accuracy"], bins[4]["mean_confidence"]) == pytest.approx((0.5, 0.9))


def test_a_confidence_on_an_edge_falls_in_the_lower_bin():
    """Bins are (low, high], as Guo et al. and sklearn's calibration_curve: 0.5 and 0.75 close their bins."""
    probs = [[0.5, 0.5], [0.75, 0.25], [0.25, 0.75], [1.0, 0.0]]
    labels = [0, 1, 1, 0]
    bins = classification_report(labels, probs, n_bins=4, n_resamples=10)["reliability"]
    assert [b["count"] for b in bins] == [0, 1, 2, 1]
    assert (bins[2]["accuracy"], bins[2]["mean_confidence"]) == (0.5, 0.75)
    correct = np.argmax(probs, axis=1) == labels
    prob_true, _ = calibration_curve(correct.astype(int), np.max(probs, axis=1), n_bins=4)
    assert prob_true.tolist() == [b["accuracy"] for b in bins if b["count"]]


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("n_bins", [5, 10, 15])
def test_ece_matches_an_independent_computation(name, n_bins):
    seed, n, k, never_predicted, absent_label = CASES[name]
    y, probs = make_case(seed, n, k, never_predicted, absent_label, sharpen=2.0)
    report = classification_report(y, probs, n_bins=n_bins, n_resamples=20)
    assert report["ece"]["estimate"] == pytest.approx(ece_by_hand(y, probs, n_bins), abs=1e-12)
    assert sum(b["count"] for b in report["reliability"]) == n


@pytest.mark.parametrize("n_bins", [5, 10])
def test_reliability_matches_sklearn_calibration_curve(n_bins):
    """Top-label calibration is binary calibration of 'the prediction is right' against the max probability."""
    y, probs = make_case(5, 600, 4, sharpen=1.5)
    correct = (probs.argmax(axis=1) == y).astype(int)
    prob_true, prob_pred = calibration_curve(correct, probs.max(axis=1), n_bins=n_bins, strategy="uniform")
    filled = [b for b in classification_report(y, probs, n_bins=n_bins, n_resamples=20)["reliability"] if b["count"]]
    assert [b["accuracy"] for b in filled] == pytest.approx(prob_true, abs=1e-12)
    assert [b["mean_confidence"] for b in filled] == pytest.approx(prob_pred, abs=1e-12)


def test_calibrated_data_has_ece_near_zero():
    """Labels drawn from the reported probabilities: what ECE remains is sampling noise. Per bin
    E|acc - conf| ~ sqrt(2/pi) sqrt(p(1-p)/n_b) <= 0.4/sqrt(n_b), so ECE <= 0.4 sqrt(bins/n) ~ 0.009
    at n = 20000 and 10 bins; 0.02 leaves twice that. The over-confident test below gets > 0.1."""
    y, probs = calibrated_case(0, 20_000, 4)
    ece = classification_report(y, probs, n_resamples=100)["ece"]
    assert ece["estimate"] < 0.02
    assert ece["low"] < 0.03


def test_overconfident_data_has_large_ece():
    y, probs = calibrated_case(0, 20_000, 4, sharpen=4.0)  # same predictions, pushed towards 1
    report = classification_report(y, probs, n_resamples=100)
    gap = probs.max(axis=1).mean() - (probs.argmax(axis=1) == y).mean()
    assert report["ece"]["estimate"] >= gap - 1e-12 > 0.15  # ECE >= |overall gap| (triangle inequality)
    assert report["ece"]["low"] > 0.15
    assert all(b["accuracy"] < b["mean_confidence"] for b in report["reliability"] if b["count"] >= 100)


def test_bootstrap_resamples_examples_and_recomputes_the_statistic():
    """The same percentile bootstrap done here with sklearn's F1 and the ECE above on each resample."""
    y, probs = make_case(6, 200, 3)
    n_resamples, seed = 200, 7
    report = classification_report(y, probs, n_resamples=n_resamples, seed=seed)
    rows = np.random.default_rng(seed).integers(0, len(y), size=(n_resamples, len(y)))
    pred = probs.argmax(axis=1)
    f1s = [f1_score(y[r], pred[r], average="macro", zero_division=0) for r in rows]
    eces = [ece_by_hand(y[r], probs[r], 10) for r in rows]
    for got, stats in [(report["macro_f1"], f1s), (report["ece"], eces)]:
        assert got["method"] == f"bootstrap-{n_resamples}"
        assert (got["low"], got["high"]) == pytest.approx(tuple(np.quantile(stats, [0.025, 0.975])), abs=1e-12)


def test_bootstrap_contains_the_estimate_and_narrows_with_more_data():
    widths = []
    for n in (250, 4000):
        y, probs = make_case(8, n, 4)
        f1 = classification_report(y, probs, n_resamples=300)["macro_f1"]
        assert f1["low"] < f1["estimate"] < f1["high"]
        widths.append(f1["high"] - f1["low"])
    # width ~ 1/sqrt(n): 16x the data, about a quarter of the width
    assert widths[1] < widths[0] / 2.5


def test_seed_and_options_are_in_the_signature_and_reproduce():
    y, probs = make_case(9, 300, 3)
    a = classification_report(y, probs, n_resamples=200, seed=1)
    assert a == classification_report(y, probs, n_resamples=200, seed=1)
    b = classification_report(y, probs, n_resamples=200, seed=2)
    assert b["macro_f1"]["estimate"] == a["macro_f1"]["estimate"] and b["macro_f1"]["low"] != a["macro_f1"]["low"]
    assert a["signature"] != b["signature"]
    sig = classification_report(y, probs, n_bins=15, n_resamples=50, seed=3, confidence=0.9)["signature"]
    assert {"bins=15", "ci=wilson,bootstrap-50", "seed=3", "confidence=0.9",
            f"fissure={fissure.__version__}"} <= set(sig.split("|"))


GOOD_PROBS = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]]


@pytest.mark.parametrize("labels,probs,names,message", [
    ([0, 1], [[0.5, 0.5], [1.0]], None, r"\(n, k\) array of numbers"),
    ([0, 1], [["a", "b"], ["c", "d"]], None, r"\(n, k\) array of numbers"),
    ([0, 1], [0.5, 0.5], None, r"shape \(n=2, k>=2\), got \(2,\)"),
    ([0, 1, 2], GOOD_PROBS, None, r"shape \(n=3, k>=2\), got \(2, 3\)"),
    ([0, 0], [[1.0], [1.0]], None, r"k>=2\), got \(2, 1\)"),
    ([0, 1], [[0.7, 0.2, math.nan], [0.1, 0.8, 0.1]], None, "finite: row 0"),
    ([0, 1], [[0.7, 0.2, 0.1], [0.1, math.inf, 0.1]], None, "finite: row 1"),
    ([0, 1], [[0.7, 0.2, 0.1], [-0.1, 1.0, 0.1]], None, "non-negative: row 1"),
    ([0, 1], [[0.7, 0.2, 0.1], [0.1, 0.7, 0.1]], None, r"sum to 1 \(within 1e-4\): row 1 sums to 0.9"),
    ([0, 3], GOOD_PROBS, None, r"in \[0, 3\): label 3 at example 1"),
    ([-1, 0], GOOD_PROBS, None, r"in \[0, 3\): label -1 at example 0"),
    ([0.0, 1.0], GOOD_PROBS, None, "integer class indices, got dtype float64"),
    ([True, False], GOOD_PROBS, None, "integer class indices, got dtype bool"),
    ([[0], [1]], GOOD_PROBS, None, r"1-D .* shape \(2, 1\)"),
    ([], [], None, "no examples"),
    ([0, 1], GOOD_PROBS, ["a", "b"], "2 class names for 3 probability columns"),
    ([0, 1], GOOD_PROBS, ["a", "b", "a"], "class names must be distinct"),
])
def test_bad_input_is_a_one_line_data_error(labels, probs, names, message):
    with pytest.raises(DataError, match=message) as caught:
        classification_report(labels, probs, names)
    assert isinstance(caught.value, UserError) and "\n" not in str(caught.value)


def test_rows_within_tolerance_are_accepted():
    report = classification_report([0, 1], [[0.70005, 0.2, 0.1], [0.1, 0.8, 0.09995]], n_resamples=10)
    assert report["accuracy"]["estimate"] == 1.0


@pytest.mark.parametrize("options,message", [
    ({"confidence": 1.5}, "confidence must be between 0 and 1"),
    ({"n_bins": 0}, "n_bins must be at least 1"),
    ({"n_resamples": 0}, "n_resamples must be at least 1"),
])
def test_bad_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        classification_report([0, 1], GOOD_PROBS, **options)


def test_src_imports_sklearn_only_where_it_fits_a_judge():
    """scikit-learn is a test reference for the metrics, and an optional dependency (the ``judge``
    extra) of the one module that fits a model with it, which imports it lazily."""
    for path in Path(fissure.__file__).parent.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top_level = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(name.split(".")[0] == "sklearn" for name in names):
                assert path.name == "learned.py" and id(node) not in top_level, path
