import pytest
import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from fissure.decode import Decoding, generate, truncate_at_stop
from fissure.decode import processors as P
from fissure.errors import GenerationError

V = 101


def rand(seed, b=4, v=V, t=12):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, v, generator=g) * 3, torch.randint(0, v, (b, t), generator=g)


@pytest.mark.parametrize("t", [0.3, 0.7, 1.5])
def test_temperature_equals_hf(t):
    scores, ids = rand(0)
    assert torch.allclose(P.temperature(scores, t), TemperatureLogitsWarper(t)(ids, scores.clone()))


@pytest.mark.parametrize("k", [1, 5, 50, 500])
def test_top_k_equals_hf(k):
    scores, ids = rand(1)
    assert torch.equal(P.top_k(scores, k), TopKLogitsWarper(k)(ids, scores.clone()))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.99, 1.0])
def test_top_p_equals_hf(p):
    scores, ids = rand(2)
    assert torch.equal(P.top_p(scores, p), TopPLogitsWarper(p)(ids, scores.clone()))


@pytest.mark.parametrize("penalty", [0.8, 1.3, 2.0])
def test_repetition_penalty_equals_hf(penalty):
    scores, ids = rand(3)
    ours = P.repetition_penalty(scores, P.seen_mask(ids, V), penalty)
    assert torch.allclose(ours, RepetitionPenaltyLogitsProcessor(penalty)(ids, scores.clone()))


def test_seen_mask_ignores_padding():
    ids = torch.tensor([[7, 7, 3]])
    seen = P.seen_mask(ids, 10, torch.tensor([[0, 0, 1]]))
    assert seen[0].nonzero().flatten().tolist() == [3]


PROMPTS = [[5, 17, 3, 9, 44], [8, 2], [60, 61, 62, 63, 64, 65, 66, 67]]


def hf_generate(hf, prompt, **kw):
    ids = torch.tensor([prompt])
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=0, **kw)
    return out[0, len(prompt):].tolist()


def ours_strip(seq, pad=0):
    return seq


@pytest.mark.parametrize("eos", [None, "frequent"])
def test_greedy_equals_hf(hf_gpt2, eos):
    hf, ours = hf_gpt2
    for prompt in PROMPTS:
        ref_free = hf_generate(hf, prompt, max_new_tokens=20, do_sample=False, eos_token_id=None)
        eos_id = None if eos is None else ref_free[5]  # a token greedy really produces: the run ends there
        ref = hf_generate(hf, prompt, max_new_tokens=20, do_sample=False, eos_token_id=eos_id)
        got = generate(ours, [prompt], Decoding(max_new_tokens=20), eos_token_id=eos_id).sequences[0]
        assert got == ref[: len(got)] and (len(got) == len(ref) or all(t == 0 for t in ref[len(got):]))
        if eos_id is not None:
            assert got[-1] == eos_id and len(got) <= 6


@pytest.mark.parametrize("length_penalty,early_stopping", [(1.0, False), (0.6, False), (2.0, True)])
def test_beam_search_equals_hf(hf_gpt2, length_penalty, early_stopping):
    hf, ours = hf_gpt2
    for prompt in PROMPTS:
        greedy = hf_generate(hf, prompt, max_new_tokens=15, do_sample=False, eos_token_id=None)
        for eos_id in (None, greedy[3]):
            kw = dict(max_new_tokens=15, num_beams=4, length_penalty=length_penalty, early_stopping=early_stopping)
            ref = hf_generate(hf, prompt, do_sample=False, eos_token_id=eos_id, **kw)
            got = generate(ours, [prompt], Decoding(**kw), eos_token_id=eos_id).sequences[0]
            while ref and ref[-1] == 0 and len(ref) > len(got):
                ref.pop()  # HF pads beams that finished early
            assert got == ref, (prompt, eos_id)


def test_beam_search_batched_equals_single(hf_gpt2):
    _, ours = hf_gpt2
    d = Decoding(max_new_tokens=10, num_beams=3)
    batched = generate(ours, PROMPTS, d, eos_token_id=None).sequences
    single = [generate(ours, [p], d, eos_token_id=None).sequences[0] for p in PROMPTS]
    assert batched == single


def recompute_greedy(model, prompt, n):
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt):]


def test_kv_cache_generation_equals_full_recompute(hf_gpt2):
    _, ours = hf_gpt2
    for prompt in PROMPTS:
        assert generate(ours, [prompt], Decoding(max_new_tokens=25)).sequences[0] == recompute_greedy(ours, prompt, 25)


def test_batched_equals_one_by_one(hf_gpt2):
    _, ours = hf_gpt2
    d = Decoding(max_new_tokens=20, repetition_penalty=1.3)
    batched = generate(ours, PROMPTS, d, eos_token_id=None).sequences
    single = [generate(ours, [p], d, eos_token_id=None).sequences[0] for p in PROMPTS]
    assert batched == single


def test_sampling_is_seeded(hf_gpt2):
    _, ours = hf_gpt2
    d = lambda seed: Decoding(max_new_tokens=30, do_sample=True, temperature=1.5, seed=seed)  # noqa: E731
    a = generate(ours, PROMPTS, d(1)).sequences
    assert a == generate(ours, PROMPTS, d(1)).sequences
    assert a != generate(ours, PROMPTS, d(2)).sequences


def test_top_k_one_sampling_is_greedy(hf_gpt2):
    _, ours = hf_gpt2
    greedy = generate(ours, PROMPTS, Decoding(max_new_tokens=15)).sequences
    sampled = generate(ours, PROMPTS, Decoding(max_new_tokens=15, do_sample=True, top_k=1, seed=3)).sequences
    assert sampled == greedy


def test_sampling_respects_top_k_support(hf_gpt2):
    """Every sampled token is among the k most likely next tokens."""
    _, ours = hf_gpt2
    prompt = PROMPTS[0]
    out = generate(ours, [prompt], Decoding(max_new_tokens=12, do_sample=True, top_k=3, seed=0)).sequences[0]
    seq = list(prompt)
    with torch.no_grad():
        for tok in out:
            top3 = ours(torch.tensor([seq]))[0, -1].topk(3).indices.tolist()
            assert tok in top3
            seq.append(tok)


def test_stop_strings_end_a_row(hf_gpt2):
    _, ours = hf_gpt2
    free = generate(ours, [PROMPTS[0]], Decoding(max_new_tokens=20)).sequences[0]
    decode_fn = lambda ids: "".join(f"<{i}>" for i in ids)  # noqa: E731
    stop = f"<{free[4]}>"
    out = generate(ours, [PROMPTS[0]], Decoding(max_new_tokens=20, stop=[stop]), decode_fn=decode_fn)
    assert out.finish_reasons == ["stop"]
    assert out.sequences[0] == free[: free.index(free[4]) + 1]
    assert truncate_at_stop("abc STOP def", ["STOP"]) == "abc "
    assert truncate_at_stop("abc", ["x"]) == "abc"


def test_streaming_callback_sees_every_token(hf_gpt2):
    _, ours = hf_gpt2
    seen = []
    out = generate(ours, [PROMPTS[1]], Decoding(max_new_tokens=9), on_token=lambda r, t: seen.append((r, t)))
    assert seen == [(0, t) for t in out.sequences[0]]


def test_too_long_prompt_is_a_clear_error(hf_gpt2):
    _, ours = hf_gpt2  # context 64
    with pytest.raises(GenerationError, match=r"prompt \(70 tokens\).*context of 64"):
        generate(ours, [[1] * 70], Decoding(max_new_tokens=1))
    with pytest.raises(GenerationError, match="exceeds"):
        generate(ours, [[1] * 10], Decoding(max_new_tokens=60))
    with pytest.raises(GenerationError, match="empty prompt"):
        generate(ours, [[]], Decoding())


def test_decoding_validation():
    with pytest.raises(ValueError, match="top_p"):
        Decoding(top_p=0)
    with pytest.raises(ValueError, match="beam"):
        Decoding(num_beams=2, do_sample=True)
    assert Decoding(do_sample=True, temperature=0).sampling is False
    assert Decoding(do_sample=True, top_p=0.9, seed=1).signature() == "sample|t=1|top_p=0.9|seed=1|max_new=64"


@pytest.mark.parametrize("p", [0.3, 0.8, 0.95])
def test_fast_top_p_path_equals_hf_on_peaked_logits(p):
    """Peaked logits (a real LM's shape) take the candidates path; it must still equal HF."""
    g = torch.Generator().manual_seed(7)
    scores = torch.randn(6, 5000, generator=g) * 6
    ids = torch.zeros(6, 1, dtype=torch.long)
    values, _ = torch.topk(scores, 128)
    probs = (values - scores.logsumexp(-1, keepdim=True)).exp()
    assert bool((probs.sum(-1) > p).all())  # the fast path is really taken
    assert torch.equal(P.top_p(scores, p), TopPLogitsWarper(p)(ids, scores.clone()))


def test_sampling_from_candidates_matches_distribution():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0] + [-float("inf")] * 300])
    draws = torch.stack([P.sample(logits, g) for _ in range(4000)])
    freq = torch.bincount(draws.flatten(), minlength=4)[:4].float() / 4000
    assert torch.allclose(freq, logits[0, :4].softmax(-1), atol=0.03)
