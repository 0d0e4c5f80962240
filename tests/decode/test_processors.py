"""Our logits processors against HF's (``transformers.generation.logits_process``), and the
samplers against the distributions they must draw from (scipy's chi-square test)."""

import pytest
import torch
from scipy.stats import chisquare
from transformers.generation import logits_process as hf

from fissure.decode import Decoding
from fissure.decode import processors as P

V = 101


def rand(seed, b=4, v=V, t=12, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, v, generator=g) * scale, torch.randint(0, v, (b, t), generator=g)


@pytest.mark.parametrize("t", [0.3, 0.7, 1.5])
def test_temperature_equals_hf(t):
    scores, ids = rand(0)
    assert torch.equal(P.TemperatureLogitsWarper(t)(ids, scores), hf.TemperatureLogitsWarper(t)(ids, scores.clone()))


@pytest.mark.parametrize("k,keep", [(1, 1), (5, 1), (50, 1), (500, 1), (1, 3)])
def test_top_k_equals_hf(k, keep):
    scores, ids = rand(1)
    ours = P.TopKLogitsWarper(k, min_tokens_to_keep=keep)(ids, scores)
    assert torch.equal(ours, hf.TopKLogitsWarper(k, min_tokens_to_keep=keep)(ids, scores.clone()))


@pytest.mark.parametrize("p,keep", [(0.1, 1), (0.5, 1), (0.9, 1), (0.99, 1), (1.0, 1), (0.05, 4)])
@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_top_p_equals_hf(p, keep, scale):
    scores, ids = rand(2, scale=scale)
    ours = P.TopPLogitsWarper(p, min_tokens_to_keep=keep)(ids, scores)
    assert torch.equal(ours, hf.TopPLogitsWarper(p, min_tokens_to_keep=keep)(ids, scores.clone()))


@pytest.mark.parametrize("penalty", [0.8, 1.3, 2.0])
def test_repetition_penalty_equals_hf(penalty):
    scores, ids = rand(3)
    ours = P.RepetitionPenaltyLogitsProcessor(penalty)(ids, scores)
    assert torch.equal(ours, hf.RepetitionPenaltyLogitsProcessor(penalty)(ids, scores.clone()))


def test_repetition_penalty_skips_padding():
    """-1 marks left padding: the row is penalised exactly as its unpadded tokens are by HF."""
    scores, _ = rand(4, b=1)
    tokens = torch.tensor([[7, 7, 3, 0]])
    padded = torch.tensor([[-1, -1, 7, 7, 3, 0]])
    ours = P.RepetitionPenaltyLogitsProcessor(1.5)(padded, scores)
    assert torch.equal(ours, hf.RepetitionPenaltyLogitsProcessor(1.5)(tokens, scores.clone()))


def test_build_processors_equals_hf_pipeline():
    d = Decoding(do_sample=True, temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.2)
    reference = hf.LogitsProcessorList([hf.RepetitionPenaltyLogitsProcessor(1.2), hf.TemperatureLogitsWarper(0.7),
                                        hf.TopKLogitsWarper(20), hf.TopPLogitsWarper(0.8)])
    scores, ids = rand(5)
    ours = scores
    for proc in P.build_processors(d):
        ours = proc(ids, ours)
    assert torch.equal(ours, reference(ids, scores.clone()))
    assert [type(p).__name__ for p in P.build_processors(d)] == [type(p).__name__ for p in reference]


def test_build_processors_greedy_keeps_only_the_penalty():
    """HF applies warpers only when sampling; temperature 0 means greedy."""
    assert P.build_processors(Decoding(temperature=0.5, top_k=3)) == []
    procs = P.build_processors(Decoding(do_sample=True, temperature=0, top_p=0.5, repetition_penalty=1.1))
    assert [type(p).__name__ for p in procs] == ["RepetitionPenaltyLogitsProcessor"]


def draws(fn, logits, n_rows=4000, calls=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = logits.expand(n_rows, -1).contiguous()
    return torch.cat([fn(batch, g) for _ in range(calls)])


def assert_follows(samples, probs):
    """Chi-square goodness of fit on the tokens with probability > 0; none outside them."""
    support = probs > 0
    counts = torch.bincount(samples, minlength=probs.numel()).double()
    assert counts[~support].sum() == 0
    expected = probs[support].double() / probs[support].double().sum() * samples.numel()
    assert chisquare(counts[support].numpy(), expected.numpy()).pvalue > 1e-3


def test_sample_follows_softmax():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, -float("inf"), 0.5, -float("inf")])
    assert_follows(draws(P.sample, logits), logits.softmax(-1))


@pytest.mark.parametrize("p,rounds", [(0.9, 8), (0.5, 8), (0.3, 1), (0.6, 0)])
def test_sample_top_p_follows_the_hf_nucleus(p, rounds):
    """Rejection sampling (and its sorting fallback, forced by few rounds) draws from the
    distribution HF's TopPLogitsWarper leaves."""
    logits = torch.tensor([1.5, 0.2, 1.0, -0.5, 0.7, -2.0, 0.0, 1.2])
    nucleus = hf.TopPLogitsWarper(p)(None, logits[None].clone())[0].softmax(-1)
    samples = draws(lambda s, g: P.sample_top_p(s, p, g, max_rounds=rounds), logits)
    assert_follows(samples, nucleus)


def test_sample_top_p_is_seeded():
    scores, _ = rand(6, b=32, v=5000, scale=1.0)
    a = P.sample_top_p(scores, 0.9, torch.Generator().manual_seed(1))
    assert torch.equal(a, P.sample_top_p(scores, 0.9, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, P.sample_top_p(scores, 0.9, torch.Generator().manual_seed(2)))


@pytest.mark.parametrize("block", [1, 4, 5, 256])  # one token a block, a ragged tail, several blocks, one block
def test_sample_follows_softmax_across_blocks(monkeypatch, block):
    """The two-level inverse CDF: whole blocks of -inf (never drawn) and a ragged last block."""
    monkeypatch.setattr(P, "BLOCK", block)
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(23, generator=g)
    logits[4:9] = -float("inf")
    logits[-1] = -float("inf")
    assert_follows(draws(P.sample, logits), logits.softmax(-1))
    assert_follows(draws(lambda s, gen: P.sample_top_p(s, 0.7, gen), logits),
                   hf.TopPLogitsWarper(0.7)(None, logits[None].clone())[0].softmax(-1))


def test_sample_on_a_large_vocabulary_is_a_valid_token_with_positive_probability():
    g = torch.Generator().manual_seed(4)
    scores = torch.randn(64, 49152, generator=g) * 3
    scores[:, 1000:40000] = -float("inf")
    tok = P.sample(scores, g)
    assert tok.shape == (64,) and bool(((tok < 1000) | (tok >= 40000)).all())
