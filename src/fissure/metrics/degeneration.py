"""Diversity and degeneration of a set of generations: n-gram entropy, repetition, loops, Zipf.

Distinct-n and self-BLEU live in :mod:`.text`; this module adds what Holtzman et al. 2020 ("The
Curious Case of Neural Text Degeneration") and Welleck et al. 2020 ("Neural Text Generation with
Unlikelihood Training") measure, and :func:`diversity_summary`, every statistic of a set of texts
with an interval over its texts (one text per prompt):

- statistics of each text, averaged (repetition, length, self-BLEU): percentile bootstrap over texts;
- the share of texts that end in a loop: Wilson interval;
- statistics of the pooled texts (distinct-n, n-gram entropy, the Zipf coefficient): leave-one-out
  jackknife over texts, because a bootstrap resample repeats texts, and a repeated text repeats
  every n-gram it holds, which would bias each replicate of these statistics low.

A text is split into units at whitespace (words); a sequence of tokens (ints or strings) is
taken as it is, so model tokens work too, as Holtzman et al. use GPT-2's.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import linregress

from ..errors import ConfigError, DataError
from .stats import Interval, bootstrap_interval, jackknife_interval, wilson_interval
from .text import distinct_n, self_bleu

Units = Sequence[Hashable]


def units(text: str | Units) -> list:
    """A text's words (whitespace split), or a token sequence as a list."""
    return text.split() if isinstance(text, str) else list(text)


def ngrams(seq: Units, n: int) -> list[tuple]:
    if n < 1:
        raise ConfigError(f"n must be at least 1, not {n}")
    seq = list(seq)
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


def ngram_entropy(texts: Sequence[str | Units], n: int) -> float:
    """Shannon entropy, in bits, of the n-gram distribution pooled over ``texts`` (n-grams do not
    cross texts; 0.0 when there is at most one distinct n-gram or none)."""
    if not texts:
        raise DataError("no texts to measure")
    counts = np.array(list(Counter(g for t in texts for g in ngrams(units(t), n)).values()), dtype=np.float64)
    if counts.size == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def repetition(text: str | Units, n: int = 4) -> float | None:
    """Share of a text's n-grams that repeat an n-gram seen earlier in it: ``1 - unique / total``
    (Welleck et al. 2020's seq-rep-n). None for a text without an n-gram."""
    grams = ngrams(units(text), n)
    return 1 - len(set(grams)) / len(grams) if grams else None


@dataclass(frozen=True)
class Loop:
    phrase: list  # the repeated units, in text order
    times: int  # how often it stands back to back at the end of the text


def ending_loop(text: str | Units, max_phrase: int = 90, min_phrase: int = 3, min_times_short: int = 51) -> Loop | None:
    """The loop a text ends in, by the rule of Holtzman et al. 2020's ``metrics/repetition.py``:
    for each phrase length 1..``max_phrase``, count how often the text's last phrase of that
    length repeats back to back at its end; take the length with the most repeats (the shortest
    on a tie). A text ends in a loop when that phrase repeats at least twice and is at least
    ``min_phrase`` units long, or repeats at least ``min_times_short`` times (a one- or
    two-unit stutter)."""
    rev = units(text)[::-1]
    best_n, best_times = 0, 0
    for n in range(1, max_phrase + 1):
        times = 1
        while rev[n * times:n * (times + 1)] == rev[:n] and len(rev[n * times:n * (times + 1)]) == n:
            times += 1
        if times > best_times:
            best_n, best_times = n, times
    if best_times > 1 and (best_n >= min_phrase or best_times >= min_times_short):
        return Loop(rev[:best_n][::-1], best_times)
    return None


@dataclass(frozen=True)
class ZipfFit:
    coefficient: float  # minus the slope of log frequency against log rank
    r: float  # correlation of the fit (negative for a falling curve)
    types: int  # ranks fitted


def zipf_fit(texts: Sequence[str | Units], top: int = 5000) -> ZipfFit:
    """Zipf coefficient of the pooled unit frequencies, as Holtzman et al. 2020 (``metrics/zipf.py``)
    compute it: a least-squares line through (log rank, log count) of the ``top`` most frequent
    units; the coefficient is minus its slope (1 for Zipf's law; larger: a steeper, less varied
    vocabulary). NaN with fewer than two distinct units."""
    counts = sorted(Counter(u for t in texts for u in units(t)).values(), reverse=True)[:top]
    if len(counts) < 2 or counts[0] == counts[-1]:
        # a flat curve has slope 0; linregress cannot fit one point or a constant
        return ZipfFit(math.nan if len(counts) < 2 else 0.0, math.nan, len(counts))
    fit = linregress(np.log(np.arange(1, len(counts) + 1)), np.log(np.asarray(counts, dtype=np.float64)))
    return ZipfFit(float(-fit.slope), float(fit.rvalue), len(counts))


def _defined(values: list[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _mean_interval(values: list[float], confidence: float, seed: int) -> Interval | None:
    return bootstrap_interval(values, confidence=confidence, seed=seed) if values else None


def _pooled_interval(texts: list, statistic, confidence: float) -> Interval:
    if len(texts) < 3:  # two texts leave one each out: no spread to speak of
        value = float(statistic(texts))
        return Interval(value, math.nan, math.nan, confidence, "jackknife (too few texts)")
    return jackknife_interval(texts, statistic, confidence)


def diversity_summary(texts: Sequence[str], *, orders: Sequence[int] = (1, 2, 3, 4), repetition_n: int = 4,
                      confidence: float = 0.95, seed: int = 0) -> dict:
    """Every diversity and degeneration statistic of ``texts`` (one per prompt), each an
    :class:`Interval` dict (see the module docstring for which interval); ``None`` where a
    statistic has nothing to measure. Words are the units."""
    texts = list(texts)
    if not texts:
        raise DataError("no texts to measure")
    words = [units(t) for t in texts]
    out: dict = {}
    for n in orders:
        out[f"distinct_{n}"] = _pooled_interval(words, lambda ws, n=n: distinct_n([" ".join(w) for w in ws], n),
                                                confidence).as_dict()
        out[f"entropy_{n}"] = _pooled_interval(words, lambda ws, n=n: ngram_entropy(ws, n), confidence).as_dict()
    out["zipf"] = _pooled_interval(words, lambda ws: zipf_fit(ws).coefficient, confidence).as_dict()
    out["self_bleu"] = (self_bleu(texts, confidence=confidence, seed=seed).interval.as_dict()
                        if len(texts) >= 2 else None)
    reps = _defined([repetition(w, repetition_n) for w in words])
    out[f"repetition_{repetition_n}"] = iv.as_dict() if (iv := _mean_interval(reps, confidence, seed)) else None
    loops = sum(ending_loop(w) is not None for w in words)
    out["loops"] = wilson_interval(loops, len(words), confidence).as_dict()
    out["length"] = _mean_interval([float(len(w)) for w in words], confidence, seed).as_dict()
    out["empty"] = sum(not w for w in words)
    return out
