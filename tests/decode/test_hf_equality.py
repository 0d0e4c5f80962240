"""Greedy and beam search equal HF ``generate`` token for token (same weights: the hf_gpt2 fixture)."""

import pytest
import torch

from fissure.decode import Decoding, generate

PROMPTS = [[5, 17, 3, 9, 44], [8, 2], [60, 61, 62, 63, 64, 65, 66, 67]]
PAD = 100  # a token id HF pads finished rows with; never produced in these runs


def hf_generate(hf, prompt, **kw):
    ids = torch.tensor([prompt])
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=PAD, **kw)
    new = out[0, len(prompt):].tolist()
    while new and new[-1] == PAD:  # HF pads sequences that ended before the longest one
        new.pop()
    return new


def eos_choices(hf, prompt, n):
    """No eos, and an eos that greedy really produces (at or before position 3)."""
    free = hf_generate(hf, prompt, max_new_tokens=n, do_sample=False, eos_token_id=None)
    return [None, free[3]]


@pytest.mark.parametrize("penalty", [1.0, 1.4])
def test_greedy_equals_hf(hf_gpt2, penalty):
    hf, ours = hf_gpt2
    for prompt in PROMPTS:
        for eos in eos_choices(hf, prompt, 20):
            ref = hf_generate(hf, prompt, max_new_tokens=20, do_sample=False, eos_token_id=eos,
                              repetition_penalty=penalty)
            out = generate(ours, [prompt], Decoding(max_new_tokens=20, repetition_penalty=penalty), eos_token_id=eos)
            assert out.sequences[0] == ref, (prompt, eos)
            if eos is None:
                assert out.finish_reasons == ["length"] and len(ref) == 20
            elif eos in ref:  # with the penalty, greedy may never produce it
                assert out.finish_reasons == ["eos"] and ref[-1] == eos and len(ref) < 20


@pytest.mark.parametrize("length_penalty,early_stopping", [(1.0, False), (0.6, False), (2.0, True), (1.0, "never"),
                                                          (-0.5, False)])
def test_beam_search_equals_hf(hf_gpt2, length_penalty, early_stopping):
    hf, ours = hf_gpt2
    kw = dict(max_new_tokens=15, num_beams=4, length_penalty=length_penalty, early_stopping=early_stopping)
    for prompt in PROMPTS:
        for eos in eos_choices(hf, prompt, 15):
            ref = hf_generate(hf, prompt, do_sample=False, eos_token_id=eos, **kw)
            out = generate(ours, [prompt], Decoding(**kw), eos_token_id=eos)
            assert out.sequences[0] == ref, (prompt, eos)
            assert out.finish_reasons == ["eos" if eos is not None and eos in ref else "length"]


def test_beam_search_with_repetition_penalty_equals_hf(hf_gpt2):
    hf, ours = hf_gpt2
    kw = dict(max_new_tokens=12, num_beams=3, repetition_penalty=1.3)
    for prompt in PROMPTS:
        ref = hf_generate(hf, prompt, do_sample=False, eos_token_id=None, **kw)
        assert generate(ours, [prompt], Decoding(**kw)).sequences[0] == ref


def test_batched_beam_search_equals_hf_single(hf_gpt2):
    """Left-padded beam search over several prompts gives each prompt HF's own result."""
    hf, ours = hf_gpt2
    kw = dict(max_new_tokens=10, num_beams=3)
    eos = hf_generate(hf, PROMPTS[0], max_new_tokens=10, do_sample=False, eos_token_id=None)[2]
    refs = [hf_generate(hf, p, do_sample=False, eos_token_id=eos, **kw) for p in PROMPTS]
    assert generate(ours, PROMPTS, Decoding(**kw), eos_token_id=eos).sequences == refs


@pytest.fixture
def hf_llama():
    """A tiny HF Llama (grouped-query attention, rotary positions) and our Llama with its weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from fissure.models.hf_llama import llama_from_hf_state_dict

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=101, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    hf = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return hf, llama_from_hf_state_dict(cfg, hf.state_dict())


@pytest.mark.parametrize("kw", [dict(max_new_tokens=16), dict(max_new_tokens=10, num_beams=3)])
def test_llama_batched_equals_hf(hf_llama, kw):
    """Another model family through the same protocol: left-padded batches, rotary positions."""
    hf, ours = hf_llama
    refs = [hf_generate(hf, p, do_sample=False, eos_token_id=None, **kw) for p in PROMPTS]
    assert generate(ours, PROMPTS, Decoding(**kw)).sequences == refs


@pytest.mark.parametrize("kw", [dict(max_new_tokens=15), dict(max_new_tokens=15, num_beams=4),
                                dict(max_new_tokens=15, num_beams=2, length_penalty=0.6)])
def test_several_end_tokens_equal_hf(hf_gpt2, kw):
    """An ``eos_token_id`` list (as Llama 3's generation config): a row ends at the first of them,
    and beam search keeps HF's wider candidate list (max(2, 1 + n_eos) * num_beams)."""
    hf, ours = hf_gpt2
    shaped = 0
    for prompt in PROMPTS:
        free = hf_generate(hf, prompt, do_sample=False, eos_token_id=None, **kw)
        eos = [free[6], free[2], 99]  # two that the search produces without end tokens, one never
        ref = hf_generate(hf, prompt, do_sample=False, eos_token_id=eos, **kw)
        out = generate(ours, [prompt], Decoding(**kw), eos_token_id=eos)
        assert out.sequences[0] == ref, (prompt, eos)
        assert out.finish_reasons == ["eos" if ref and ref[-1] in eos else "length"]
        shaped += out.finish_reasons == ["eos"] or ref != free  # ended early, or the search went around them
        assert generate(ours, [prompt], Decoding(eos_token_id=eos, **kw)) == out  # the list in Decoding too
    assert shaped >= 2


SHARED = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20]  # a system prompt every row starts with
SHARED_PROMPTS = [SHARED + tail for tail in ([5, 17, 3], [8], [60, 61, 62, 63, 64, 65], [1, 2])]


def forward_shapes(model):
    """The input shapes of every forward call of ``model`` (a list that fills as it runs)."""
    shapes = []
    model.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    return shapes


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_a_shared_prompt_start_runs_once_and_every_row_equals_hf(hf_gpt2, hf_llama, family, penalty):
    """Rows that start with the same tokens: those run once, for one row, then every row's own
    tokens (left-padded behind the shared ones); each row still equals HF's solo generation,
    with an eos some rows reach early (rows leave the batch) and a repetition penalty that reads
    the whole prompt."""
    from fissure.decode.search import MIN_SHARED, shared_prefix

    hf, ours = hf_gpt2 if family == "gpt2" else hf_llama
    assert shared_prefix(SHARED_PROMPTS) == len(SHARED) >= MIN_SHARED
    assert shared_prefix([SHARED, SHARED]) == len(SHARED) - 1  # each row keeps a token of its own
    kw = dict(max_new_tokens=14, repetition_penalty=penalty)
    eos = hf_generate(hf, SHARED_PROMPTS[1], do_sample=False, eos_token_id=None, **kw)[4]
    refs = [hf_generate(hf, p, do_sample=False, eos_token_id=eos, **kw) for p in SHARED_PROMPTS]
    shapes = forward_shapes(ours)
    out = generate(ours, SHARED_PROMPTS, Decoding(**kw), eos_token_id=eos)
    assert shapes[:2] == [(1, len(SHARED)), (4, 6)]  # the shared start once, then the rows' own tokens
    assert out.sequences == refs
    assert out.finish_reasons[1] == "eos" and len(out.sequences[1]) <= 5  # that row left the batch early


def test_a_shared_start_also_serves_the_recurrent_model():
    """The LSTM's state after the shared tokens, copied to every row, then each row's own tokens
    (left-padded): every row equals its solo run."""
    from fissure.models.lstm import LSTM, LSTMConfig

    torch.manual_seed(0)
    model = LSTM(LSTMConfig(vocab_size=101, block_size=64, n_layer=2, n_embd=24)).eval()
    shapes = forward_shapes(model)
    d = Decoding(max_new_tokens=10)
    out = generate(model, SHARED_PROMPTS, d)
    assert shapes[:2] == [(1, len(SHARED)), (4, 6)]
    assert out.sequences == [generate(model, [p], d).sequences[0] for p in SHARED_PROMPTS]
