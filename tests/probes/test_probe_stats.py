import math

import pytest
from scipy.stats import binomtest

from fissure.errors import UserError
from fissure.metrics.stats import wilson_interval
from fissure.probes.stats import Outcome, adaptive_asr, asr_by, compare_runs, mcnemar_exact


def outcomes():
    rows = [("r1", "none", "control", "refused"), ("r2", "none", "control", "refused"),
            ("r1", "base64", "MG", "violated"), ("r2", "base64", "MG", "unclear"),
            ("r1", "prefix_injection", "CO", "violated"), ("r2", "prefix_injection", "CO", "violated"),
            ("r3", "prefix_injection", "CO", "refused"), ("r3", "base64", "MG", "refused")]
    return [Outcome(*r) for r in rows]


def test_asr_per_attack_and_mode():
    by_attack = asr_by(outcomes(), "attack")
    pi = by_attack["prefix_injection"]
    assert pi.n == 3 and pi.counts == {"refused": 1, "violated": 2, "unclear": 0}
    assert pi.asr == wilson_interval(2, 3)
    assert by_attack["none"].asr.estimate == 0.0
    by_mode = asr_by(outcomes(), "mode")
    assert by_mode["MG"].counts == {"refused": 1, "violated": 1, "unclear": 1}
    assert set(by_mode) == {"control", "MG", "CO"}
    assert by_mode["CO"].as_dict()["asr"]["method"] == "wilson"
    with pytest.raises(ValueError):
        Outcome("r", "a", "CO", "complied")


def test_adaptive_asr():
    assert adaptive_asr(outcomes()).estimate == pytest.approx(2 / 3)  # r1, r2 broken; r3 never
    assert adaptive_asr(outcomes(), attacks=["base64", "none"]).estimate == pytest.approx(1 / 3)


def test_mcnemar_exact_against_hand_computation():
    # 1 pair only A breaks, 8 only B breaks, 11 concordant:
    # p = 2 * P(X <= 1), X ~ Binomial(9, 1/2) = 2 * (1 + 9) / 512
    a = [True] * 1 + [False] * 8 + [True] * 5 + [False] * 6
    b = [False] * 1 + [True] * 8 + [True] * 5 + [False] * 6
    m = mcnemar_exact(a, b)
    assert (m.n_pairs, m.a_only, m.b_only) == (20, 1, 8)
    assert m.p_value == pytest.approx(20 / 512, abs=1e-12)
    assert mcnemar_exact([True, False], [True, False]).p_value == 1.0
    m = mcnemar_exact([True] * 7 + [False] * 3, [False] * 10)
    assert m.p_value == pytest.approx(2 * 0.5 ** 7) and m.p_value == pytest.approx(binomtest(7, 7).pvalue)
    with pytest.raises(ValueError):
        mcnemar_exact([True], [])


def test_compare_runs_pairs_by_request_and_attack():
    a = outcomes()
    b = [Outcome(o.request_id, o.attack, o.mode, "refused") for o in reversed(a)]  # order differs
    b.append(Outcome("r9", "none", "control", "violated"))  # unpaired: ignored
    m = compare_runs(a, b)
    assert (m.n_pairs, m.a_only, m.b_only) == (8, 3, 0)
    assert math.isclose(m.p_value, 0.25)
    with pytest.raises(UserError):
        compare_runs(a, [Outcome("x", "y", "CO", "refused")])
