"""The Kneser-Ney n-gram model against NLTK's ``KneserNeyInterpolated`` and against a direct,
Counter-based transcription of Chen & Goodman's formulas (for what NLTK does not do)."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fissure.models.ngram import NgramConfig, NgramModel

nltk_lm = pytest.importorskip("nltk.lm")
from nltk.lm.preprocessing import pad_both_ends, padded_everygram_pipeline  # noqa: E402

SENTS = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog", "the mat was on the dog",
         "on the log sat a cat"]
WORDS = ["<s>", "</s>"] + sorted({w for s in SENTS for w in s.split()})
IX = {w: i for i, w in enumerate(WORDS)}
TEST = ["the cat sat on the log", "a dog sat on a mat", "the log was a cat"]


def _ours(order: int, discount: float) -> NgramModel:
    config = NgramConfig(order=order, vocab_size=len(WORDS), bos_id=0, eos_id=1, discount=discount,
                         interpolate_uniform=False)
    return NgramModel(config).fit([[IX[w] for w in s.split()] for s in SENTS])


def _nltk(order: int, discount: float):
    train, vocab = padded_everygram_pipeline(order, [s.split() for s in SENTS])
    lm = nltk_lm.KneserNeyInterpolated(order, discount=discount)
    lm.fit(train, vocab)
    return lm


def _nltk_quirk(history: tuple[str, ...], order: int) -> bool:
    """NLTK's one departure from the textbook (see test_nltk_quirk_context_follows_the_textbook): a
    lower-order history made only of ``<s>`` that is ``order - 2`` long, i.e. a full history that
    ends in ``<s>``."""
    return order >= 3 and history[-1] == "<s>"


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("discount", [0.75, 0.1])
def test_distributions_equal_nltk(order, discount):
    ours, theirs = _ours(order, discount), _nltk(order, discount)
    compared = 0
    for history in itertools.product(WORDS, repeat=order - 1):
        if _nltk_quirk(history, order):
            continue
        p = ours.distribution([IX[w] for w in history])
        q = np.array([theirs.score(w, list(history)) for w in WORDS])
        np.testing.assert_allclose(p, q, rtol=1e-12, atol=1e-15, err_msg=str(history))
        compared += 1
    assert compared >= len(WORDS) ** (order - 1) - len(WORDS)


@pytest.mark.parametrize("order", [2, 3])
def test_sentence_scores_equal_nltk(order):
    """Held-out sentences scored word by word after NLTK's padding (contexts that avoid the quirk)."""
    ours, theirs = _ours(order, 0.75), _nltk(order, 0.75)
    for sentence in TEST:
        padded = list(pad_both_ends(sentence.split(), n=order))
        ids = [IX[w] for w in padded[order - 1:]]  # ours pads the left side itself
        logp = ours.sequence_logprobs(ids)
        for i, lp in enumerate(logp):
            history = tuple(padded[i:i + order - 1])
            if _nltk_quirk(history, order):
                continue  # the first word of a trigram sentence reads the quirk history (<s>,) below
            assert lp == pytest.approx(np.log(theirs.score(padded[i + order - 1], list(history))), rel=1e-12)


def test_nltk_quirk_context_follows_the_textbook():
    """NLTK's lower-order gamma counts the distinct followers of a history in the *raw* counts,
    ``d * N1+(h .) / N1+(. h .)``; the textbook counts those with a continuation,
    ``d * |{w: N1+(. h w) > 0}| / N1+(. h .)``. They differ only for ``h = <s>`` in a trigram model
    (``<s> <s>`` is a raw bigram with no word before it), where NLTK's probabilities sum to more
    than one. Ours there: NLTK's alpha plus the textbook gamma times NLTK's unigram."""
    order, d = 3, 0.75
    ours, theirs = _ours(order, d), _nltk(order, d)
    history = ("</s>", "<s>")  # unseen as a trigram history: the bigram history (<s>,) decides
    p = ours.distribution([IX[w] for w in history])
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    assert sum(theirs.score(w, list(history)) for w in WORDS) > 1.01  # NLTK's quirk, measured
    trigrams = theirs.counts[3]
    continued = {w for ctx, dist in trigrams.items() if ctx[1:] == ("<s>",) for w in dist if dist[w] > 0}
    total = sum(sum(1 for w in dist if dist[w] > 0) for ctx, dist in trigrams.items() if ctx[1:] == ("<s>",))
    gamma = d * len(continued) / total
    for w in WORDS:
        alpha, _ = theirs.estimator.alpha_gamma(w, ("<s>",))
        assert p[IX[w]] == pytest.approx(alpha + gamma * theirs.estimator.unigram_score(w), rel=1e-12)


# --- Chen & Goodman, written out with Counters (the reference for what NLTK lacks) ----------------

def _reference(seqs, order, V, bos, eos, d, modified, uniform):
    padded = [[bos] * (order - 1) + list(s) + [eos] * (order - 1) for s in seqs]
    raw = Counter(tuple(p[i:i + k]) for p in padded for k in range(1, order + 1) for i in range(len(p) - k + 1))
    left = Counter(g[1:] for g in raw if len(g) >= 2)  # N1+(. g)

    def kn_count(g):
        return raw[g] if len(g) == order else left[g]

    def discounts(k):
        counts = Counter(kn_count(g) for g in raw if len(g) == k and kn_count(g) > 0)
        n1, n2, n3, n4 = (counts[r] for r in (1, 2, 3, 4))
        if not modified or min(n1, n2, n3) == 0:
            return {1: d, 2: d, 3: d}
        y = n1 / (n1 + 2 * n2)
        est = {1: 1 - 2 * y * n2 / n1, 2: 2 - 3 * y * n3 / n2, 3: 3 - 4 * y * n4 / n3}
        return est if all(0 < est[r] < r for r in est) else {1: d, 2: d, 3: d}

    D = {k: discounts(k) for k in range(1, order + 1)}
    if not uniform:
        D[1] = {1: 0.0, 2: 0.0, 3: 0.0}

    def prob(w, h):
        k = len(h) + 1
        grams = [g for g in raw if len(g) == k and g[:-1] == h]
        total = sum(kn_count(g) for g in grams)
        lower = (1 / V if uniform else 0.0) if k == 1 else prob(w, h[1:])
        if total == 0:
            return lower if k > 1 else 1 / V
        a = kn_count(h + (w,))
        disc = lambda a: min(D[k][min(a, 3)], a) if a > 0 else 0.0  # noqa: E731
        gamma = sum(disc(kn_count(g)) for g in grams) / total
        return max(a - disc(a), 0) / total + gamma * lower

    return prob


@pytest.mark.parametrize("order,modified,uniform", [(1, False, True), (2, True, True), (3, True, True),
                                                    (4, False, True), (3, True, False)])
def test_chen_goodman_reference(order, modified, uniform):
    rng = np.random.default_rng(order)
    V = 7
    seqs = [list(rng.integers(2, V, size=rng.integers(3, 30))) for _ in range(12)]
    model = NgramModel(NgramConfig(order=order, vocab_size=V, bos_id=0, eos_id=1, discount=0.6, modified=modified,
                                   interpolate_uniform=uniform)).fit(seqs)
    ref = _reference(seqs, order, V, 0, 1, 0.6, modified, uniform)
    if modified:
        assert any(not np.allclose(level.discounts[1:], 0.6) for level in model.levels)  # estimated somewhere
    for history in list(itertools.product(range(V), repeat=order - 1))[:60]:
        p = model.distribution(list(history))
        q = [ref(w, tuple(history)) for w in range(V)]
        np.testing.assert_allclose(p, q, rtol=1e-10, atol=1e-14)
    test = list(rng.integers(2, V, size=25))
    padded = [0] * (order - 1) + test
    want = [np.log(ref(w, tuple(padded[i:i + order - 1]))) for i, w in enumerate(test)]
    np.testing.assert_allclose(model.sequence_logprobs(test), want, rtol=1e-10)


@settings(max_examples=40, deadline=None, derandomize=True, database=None)  # as tests/fuzz: CI sees the same cases
@given(order=st.integers(1, 5), V=st.integers(3, 12), modified=st.booleans(), uniform=st.booleans(),
       discount=st.floats(0.0, 1.0), seed=st.integers(0, 2**16),
       history=st.lists(st.integers(0, 11), max_size=6))
def test_sums_to_one_for_every_history(order, V, modified, uniform, discount, seed, history):
    rng = np.random.default_rng(seed)
    seqs = [list(rng.integers(0, V, size=rng.integers(0, 20))) for _ in range(rng.integers(1, 6))]
    model = NgramModel(NgramConfig(order=order, vocab_size=V, bos_id=0, eos_id=V - 1, discount=discount,
                                   modified=modified, interpolate_uniform=uniform))
    if order == 1 and not any(seqs):  # nothing to count: no padding at order 1 (as NLTK)
        with pytest.raises(ValueError, match="at least one token"):
            model.fit(seqs)
        return
    model.fit(seqs)
    history = [h % V for h in history]  # seen, unseen and too-short histories alike
    p = model.distribution(history)
    assert p.min() >= 0
    assert p.sum() == pytest.approx(1.0, abs=1e-9)
    if uniform and discount >= 1e-6:  # (a subnormal discount underflows the floor to 0 in float64)
        assert p.min() > 0  # every id keeps some probability
    np.testing.assert_allclose(np.exp(model.sequence_logprobs(list(range(V)), history)[:1]),
                               p[:1], rtol=1e-9)


def test_state_round_trip_and_bad_input():
    from safetensors.numpy import load_file, save_file

    model = _ours(3, 0.75)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        save_file(model.state(), str(Path(tmp) / "m.safetensors"))
        again = NgramModel.from_state(model.config, load_file(str(Path(tmp) / "m.safetensors")))
    ids = [IX[w] for w in TEST[0].split()]
    np.testing.assert_array_equal(again.sequence_logprobs(ids), model.sequence_logprobs(ids))
    with pytest.raises(ValueError, match="order"):
        NgramConfig(order=0)
    with pytest.raises(ValueError, match="ids must lie"):
        NgramModel(NgramConfig(order=2, vocab_size=5, eos_id=1)).fit([[7]])
