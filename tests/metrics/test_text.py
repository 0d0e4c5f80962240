import random

import pytest
from sacrebleu.metrics import BLEU

from fissure.errors import ConfigError, DataError
from fissure.metrics.text import bleu, chrf, distinct_n, self_bleu

# sacrebleu's README example
REFS = [["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
        ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."]]
SYS = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]


def test_bleu_matches_sacrebleu_readme():
    s = bleu(SYS, REFS)
    assert round(s.score, 2) == 48.53
    assert "nrefs:2" in s.signature and "tok:13a" in s.signature
    assert s.details.startswith("82.4/50.0/45.5/37.5")
    assert s.interval is None


def test_chrf_matches_sacrebleu_readme():
    s = chrf(SYS, REFS)
    assert s.name == "chrF2" and round(s.score, 2) == 59.73
    assert "nrefs:2" in s.signature and "nc:6" in s.signature


def test_options_reach_sacrebleu():
    assert "tok:char" in bleu(SYS, REFS, tokenize="char").signature
    assert chrf(SYS, REFS, word_order=2).name == "chrF2++"


def test_bleu_interval_agrees_with_sacrebleu_bootstrap():
    rng = random.Random(0)
    words = "the a dog cat man bit saw ran sat on mat park quickly".split()
    refs = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 12))) for _ in range(150)]
    hyps = [" ".join(w if rng.random() < 0.7 else rng.choice(words) for w in r.split()) for r in refs]
    ours = bleu(hyps, [refs], n_bootstrap=1000, seed=3)
    ref = BLEU().corpus_score(hyps, [refs], n_bootstrap=1000)  # mean +- half-width of its 95% interval
    assert ours.interval.low < ours.score < ours.interval.high
    assert ours.interval.high - ours.interval.low == pytest.approx(2 * ref._ci, rel=0.2)
    assert (ours.interval.high + ours.interval.low) / 2 == pytest.approx(ref._mean, abs=0.3 * ref._ci)
    narrow = bleu(hyps, [refs], n_bootstrap=1000, seed=3, confidence=0.5).interval
    assert narrow.high - narrow.low < ours.interval.high - ours.interval.low


@pytest.mark.parametrize("refs", [REFS[0], [], [REFS[0][:2]]])
def test_malformed_references(refs):
    with pytest.raises(DataError):
        bleu(SYS, refs)


def test_distinct_n_by_hand():
    texts = ["the cat sat", "the cat ran"]
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)  # the, cat, sat, ran
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)  # (the cat) twice, (cat sat), (cat ran)
    assert distinct_n(texts, 3) == 1.0
    assert distinct_n(["a a a a"], 1) == 0.25
    assert distinct_n(["a b", "c"], 2) == 1.0  # "b c" would cross texts
    assert distinct_n(["a", ""], 2) == 0.0
    with pytest.raises(ConfigError):
        distinct_n(texts, 0)


def test_self_bleu_identical_and_diverse():
    same = self_bleu(["the cat sat on the mat today"] * 4)
    assert same.score == pytest.approx(100.0)
    diverse = self_bleu(["the cat sat on the mat today", "a dog ran across the park",
                         "stocks fell sharply in early trading", "she plays the violin every morning"])
    assert diverse.score < 20
    partial = self_bleu(["the cat sat on the mat today", "the cat sat on the mat yesterday", "a dog ran"])
    assert diverse.score < partial.score < same.score
    assert "nrefs:2" in partial.signature and "eff:yes" in partial.signature
    assert partial.interval.low <= partial.score <= partial.interval.high
    with pytest.raises(DataError):
        self_bleu(["alone"])


def test_self_bleu_is_mean_sentence_bleu():
    texts = ["the cat sat on the mat", "the dog sat on the log", "a cat ran"]
    metric = BLEU(effective_order=True)
    expected = sum(metric.sentence_score(t, [u for u in texts if u is not t]).score for t in texts) / 3
    assert self_bleu(texts).score == pytest.approx(expected)
