"""Perplexity, cross-entropy and bits per byte of texts, from the log-likelihoods a backend computed.

The scores come from ``LanguageModel.loglikelihood_rolling`` (one
:class:`~fissure.backends.base.RollingLoglikelihood` per text: summed log-likelihood, tokens
scored, UTF-8 bytes, window and stride; :mod:`fissure.backends.scoring` documents the window
semantics). Corpus rates are a sum of log-likelihoods over a sum of tokens or bytes; bits per
byte divide by the UTF-8 bytes of the whole text, which makes models with different tokenizers
comparable. Intervals bootstrap over documents, the independent units.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from .._version import __version__
from ..backends.base import RollingLoglikelihood
from ..errors import DataError
from .stats import Interval, bootstrap_interval


def lm_signature(window: int, stride: int, prefix_token: int | None, tokenizer: str) -> str:
    """What produced a perplexity: windows, the prefix token, the tokenizer and fissure's version."""
    prefix = "none" if prefix_token is None else str(prefix_token)
    return f"window={window}|stride={stride}|prefix={prefix}|tok={tokenizer}|fissure={__version__}"


def ratio_interval(numerators: Sequence[float], denominators: Sequence[float],
                   transform: Callable[[float], float] = float, confidence: float = 0.95,
                   n_resamples: int = 1000, seed: int = 0) -> Interval:
    """Percentile bootstrap of ``transform(sum(numerators) / sum(denominators))``.

    Pairs are resampled together (documents, not tokens, are the independent units), and the
    ratio of sums is recomputed on each resample, as the corpus-level metric is.
    """
    num = np.asarray(numerators, dtype=np.float64)
    den = np.asarray(denominators, dtype=np.float64)

    def statistic(index: np.ndarray) -> float:
        rows = index.astype(np.intp)
        return transform(num[rows].sum() / den[rows].sum())

    return bootstrap_interval(np.arange(num.size), statistic, confidence=confidence,
                              n_resamples=n_resamples, seed=seed)


def summarise_scores(scores: Sequence[RollingLoglikelihood], prefix_token: int | None = None,
                     tokenizer: str = "unknown", confidence: float = 0.95) -> dict:
    """Corpus perplexity, bits per byte and cross-entropy of per-document scores, with bootstrap
    intervals over documents.

    The intervals (``perplexity_ci``, ``bits_per_byte_ci``; ``None`` with fewer than two scored
    documents) resample the documents that have at least one scored token. Without a prefix
    token each text's first token is unscored but its bytes still count, so bits per byte come
    out slightly low: backends score every byte by starting with the tokenizer's EOS/BOS.
    """
    if not scores:
        raise DataError("no texts to score")
    ll = np.asarray([s.loglikelihood for s in scores], dtype=np.float64)
    tokens = np.asarray([s.tokens for s in scores], dtype=np.int64)
    nbytes = np.asarray([s.bytes for s in scores], dtype=np.int64)
    if tokens.sum() == 0:
        raise DataError("no tokens to score: the texts are empty (or one token each and no prefix token)")
    total = RollingLoglikelihood(float(ll.sum()), int(tokens.sum()), int(nbytes.sum()), scores[0].window,
                                 scores[0].stride)
    result = {"perplexity": total.perplexity, "bits_per_byte": total.bits_per_byte,
              "cross_entropy": total.cross_entropy, "loglikelihood": total.loglikelihood, "tokens": total.tokens,
              "bytes": total.bytes, "window": total.window, "stride": total.stride,
              "signature": lm_signature(total.window, total.stride, prefix_token, tokenizer),
              "documents": len(ll), "perplexity_ci": None, "bits_per_byte_ci": None}
    scored = tokens > 0
    if scored.sum() >= 2:
        nll = -ll[scored]
        result["perplexity_ci"] = ratio_interval(nll, tokens[scored], math.exp, confidence).as_dict()
        result["bits_per_byte_ci"] = ratio_interval(nll, nbytes[scored] * math.log(2), float,
                                                    confidence).as_dict()
    return result
