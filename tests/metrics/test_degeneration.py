"""Diversity and degeneration statistics against hand counts, scipy and sacrebleu."""

import math

import numpy as np
import pytest
from sacrebleu.metrics import BLEU
from scipy.stats import entropy

from fissure.errors import ConfigError, DataError
from fissure.metrics.degeneration import (diversity_summary, ending_loop, ngram_entropy, repetition, units,
                                          zipf_fit)


def test_units_split_words_and_keep_token_lists():
    assert units("a  b\nc") == ["a", "b", "c"]
    assert units([5, 7, 5]) == [5, 7, 5]


def test_ngram_entropy_equals_scipy_on_hand_counts():
    texts = ["the cat sat on the mat", "the cat ran"]
    # unigrams: the x3, cat x2, sat, on, mat, ran
    assert ngram_entropy(texts, 1) == pytest.approx(entropy([3, 2, 1, 1, 1, 1], base=2))
    # bigrams: (the cat) x2, (cat sat), (sat on), (on the), (the mat), (cat ran); none across texts
    assert ngram_entropy(texts, 2) == pytest.approx(entropy([2, 1, 1, 1, 1, 1], base=2))
    assert ngram_entropy(["a a a"], 1) == 0.0
    assert ngram_entropy(["a", "b"], 2) == 0.0
    with pytest.raises(DataError):
        ngram_entropy([], 1)
    with pytest.raises(ConfigError):
        ngram_entropy(texts, 0)


def test_repetition_is_share_of_repeated_ngrams():
    assert repetition("a b a b a", 2) == pytest.approx(1 - 2 / 4)  # ab ba ab ba
    assert repetition("a b c d e", 2) == 0.0
    assert repetition("a a a a a a", 1) == pytest.approx(5 / 6)
    assert repetition("a b c", 4) is None


@pytest.mark.parametrize("text,phrase,times", [
    ("so it goes on and on a b c a b c", ["a", "b", "c"], 2),
    ("x y z w y z w y z w", ["y", "z", "w"], 3),
    ("intro " + "I am here . " * 5, ["I", "am", "here", "."], 5),
    ("start " + "no " * 60, ["no"], 60),  # a one-word stutter counts only from 51 repeats
])
def test_ending_loop_finds_loops(text, phrase, times):
    loop = ending_loop(text)
    assert loop is not None and loop.phrase == phrase and loop.times == times


@pytest.mark.parametrize("text", [
    "a b c a b c d",  # the loop does not reach the end
    "x y y",  # a repeated word is no loop
    "start " + "no " * 50,  # 50 repeats of one word: still none
    "a b c a b c c",  # the most repeated ending is the doubled 'c' (length 1): none, as Holtzman et al.
    "",
])
def test_ending_loop_rejects_non_loops(text):
    assert ending_loop(text) is None


def test_ending_loop_prefers_the_most_repeated_then_shortest_phrase():
    loop = ending_loop("q " + "a b c " * 4)  # (a b c) x4 beats (a b c a b c) x2
    assert loop.phrase == ["a", "b", "c"] and loop.times == 4
    assert ending_loop("q " + "a b " * 4) is None  # two words, four times: a stutter, not yet a loop
    assert ending_loop("a b c a b c", max_phrase=2) is None


def test_zipf_of_a_planted_law_and_against_numpy_least_squares():
    counts = [720 // r for r in range(1, 7)]  # exactly C / rank
    text = " ".join(f"w{r}" for r, c in enumerate(counts) for _ in range(c))
    fit = zipf_fit([text])
    assert fit.coefficient == pytest.approx(1.0) and fit.r == pytest.approx(-1.0) and fit.types == 6
    texts = ["the cat sat on the mat and the dog sat on the log", "a cat and a dog and a bird"]
    by_hand = [4, 3, 3, 2, 2, 2, 2, 1, 1, 1]  # the; and, a; cat, sat, on, dog; mat, log, bird
    slope = np.polyfit(np.log(np.arange(1, len(by_hand) + 1)), np.log(by_hand), 1)[0]
    assert zipf_fit(texts).coefficient == pytest.approx(-slope)
    assert zipf_fit(texts, top=3).types == 3
    assert math.isnan(zipf_fit(["one"]).coefficient)
    assert zipf_fit(["a b c"]).coefficient == 0.0


def test_diversity_summary_against_hand_values_and_sacrebleu():
    texts = ["the cat sat on the mat", "the cat ran to the park", "a b c a b c", "stocks fell in early trading"]
    s = diversity_summary(texts, repetition_n=2, seed=1)
    assert s["distinct_1"]["estimate"] == pytest.approx(16 / 23)  # 23 words, 16 types
    assert s["distinct_1"]["method"] == "jackknife"
    assert s["distinct_1"]["low"] < s["distinct_1"]["estimate"] < s["distinct_1"]["high"]
    metric = BLEU(effective_order=True)
    want = np.mean([metric.sentence_score(t, texts[:i] + texts[i + 1:]).score for i, t in enumerate(texts)])
    assert s["self_bleu"]["estimate"] == pytest.approx(want)
    assert s["loops"]["estimate"] == 0.25  # only "a b c a b c"
    assert s["length"]["estimate"] == pytest.approx(23 / 4)
    assert s["repetition_2"]["estimate"] == pytest.approx(np.mean([0, 0, 1 - 3 / 5, 0]))  # ab bc ca ab bc
    assert s["entropy_2"]["estimate"] == pytest.approx(ngram_entropy(texts, 2))
    assert s["empty"] == 0
    one = diversity_summary(["just one text here"])
    assert one["self_bleu"] is None and math.isnan(one["distinct_1"]["low"])
