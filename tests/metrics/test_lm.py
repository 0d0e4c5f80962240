"""Corpus rates from backend scores (metrics/lm.py): perplexity, bits per byte, intervals."""

import math

import numpy as np
import pytest
from scipy.stats import bootstrap

from fissure.backends import TorchLM
from fissure.backends.base import RollingLoglikelihood
from fissure.errors import DataError
from fissure.metrics.lm import ratio_interval, summarise_scores


class ByteTokenizer:
    """Bytes folded into the test model's 101-token vocabulary; 100 is EOS."""

    eos_id = 100
    name = "bytes%101"

    def encode(self, text: str) -> list[int]:
        return [b % 100 for b in text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def test_rates_from_a_known_loglikelihood():
    r = RollingLoglikelihood(loglikelihood=-80 * math.log(2), tokens=20, bytes=10, window=32, stride=16)
    assert r.bits_per_byte == pytest.approx(8.0)
    assert r.cross_entropy == pytest.approx(4 * math.log(2))
    assert r.perplexity == pytest.approx(16.0)
    d = summarise_scores([r], prefix_token=0, tokenizer="bytes")
    assert {k: d[k] for k in ("tokens", "bytes", "window", "stride")} == {"tokens": 20, "bytes": 10,
                                                                          "window": 32, "stride": 16}
    assert d["bits_per_byte"] == pytest.approx(8.0) and d["perplexity"] == pytest.approx(16.0)
    assert d["signature"].startswith("window=32|stride=16|prefix=0|tok=bytes")


def test_summarise_aggregates_documents_scored_by_a_backend(hf_gpt2):
    _, ours = hf_gpt2
    lm = TorchLM(ours, ByteTokenizer(), name="gpt2-random")
    texts = ["héllo wörld, " * k for k in (1, 3, 2, 5)] + [""]
    scores = lm.loglikelihood_rolling(texts, window=16, stride=16)
    result = summarise_scores(scores, prefix_token=lm.start_token, tokenizer="bytes%101")
    one_by_one = [lm.loglikelihood_rolling([t], window=16, stride=16)[0] for t in texts]
    ll = sum(s.loglikelihood for s in one_by_one)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    assert result["tokens"] == sum(s.tokens for s in one_by_one) == n_bytes  # one token per byte, all scored
    assert result["bytes"] == n_bytes and result["documents"] == 5
    # batching windows across documents changes float32 rounding only
    assert result["bits_per_byte"] == pytest.approx(-ll / (n_bytes * math.log(2)), rel=1e-6)
    assert result["perplexity"] == pytest.approx(math.exp(-ll / n_bytes), rel=1e-6)
    assert "prefix=100|tok=bytes%101" in result["signature"]
    for key in ("perplexity", "bits_per_byte"):
        ci = result[f"{key}_ci"]
        assert ci["low"] <= result[key] <= ci["high"] and ci["low"] < ci["high"]
    single = summarise_scores(scores[:1], prefix_token=lm.start_token)
    assert single["perplexity_ci"] is None and single["bits_per_byte_ci"] is None


def test_summarise_rejects_nothing_to_score():
    with pytest.raises(DataError):
        summarise_scores([])
    empty = [RollingLoglikelihood(0.0, 0, 0, 16, 16), RollingLoglikelihood(0.0, 0, 1, 16, 16)]
    with pytest.raises(DataError, match="no tokens"):
        summarise_scores(empty)


def test_ratio_interval_matches_scipy_paired_bootstrap():
    rng = np.random.default_rng(0)
    den = rng.integers(20, 400, size=300).astype(float)
    num = den * rng.normal(3.0, 0.5, size=300)
    ref = bootstrap((num, den), lambda a, b: a.sum() / b.sum(), paired=True, vectorized=False,
                    n_resamples=4000, method="percentile", random_state=1).confidence_interval
    got = ratio_interval(num, den, n_resamples=4000, seed=1)
    assert got.estimate == pytest.approx(num.sum() / den.sum())
    width = ref.high - ref.low
    assert got.low == pytest.approx(ref.low, abs=0.05 * width)
    assert got.high == pytest.approx(ref.high, abs=0.05 * width)
