"""Attention weights recomputed by hooks (fissure.models.attention_maps) against HF's eager
attention with output_attentions=True, on random configs with the same weights."""

import pytest
import torch

from fissure.models.attention_maps import attention_maps


def _padded_batch(vocab: int):
    torch.manual_seed(1)
    ids = torch.randint(0, vocab, (2, 11))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding on the second row
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, position_ids


def _check_causal_rows(maps, mask=None):
    for m in maps:
        T = m.shape[-1]
        assert torch.allclose(m.sum(-1), torch.ones(m.shape[:-1]), atol=1e-5)
        assert m.masked_select(~torch.ones(T, T, dtype=torch.bool).tril()).abs().max() == 0
        if mask is not None:  # real queries give padding no weight
            real = mask.bool()
            for b in range(m.shape[0]):
                assert m[b][:, real[b]][:, :, ~real[b]].abs().sum() == 0


def test_gpt_matches_hf_gpt2_eager(hf_gpt2):
    hf, ours = hf_gpt2
    hf.set_attn_implementation("eager")
    ids = torch.randint(0, hf.config.vocab_size, (2, 13))
    maps = attention_maps(ours, ids)
    expected = hf(ids, output_attentions=True).attentions
    assert len(maps) == len(expected) == hf.config.n_layer
    for got, want in zip(maps, expected):
        assert got.shape == want.shape == (2, hf.config.n_head, 13, 13)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    _check_causal_rows(maps)


def test_gpt_with_padding_matches_hf_on_real_rows(hf_gpt2):
    hf, ours = hf_gpt2
    hf.set_attn_implementation("eager")
    ids, mask, pos = _padded_batch(hf.config.vocab_size)
    maps = attention_maps(ours, ids, attention_mask=mask)
    expected = hf(ids, attention_mask=mask, position_ids=pos, output_attentions=True).attentions
    real = mask.bool()
    for got, want in zip(maps, expected):
        for b in range(2):  # HF gives padded query rows other (unused) weights; compare real queries
            torch.testing.assert_close(got[b][:, real[b]], want[b][:, real[b]], atol=1e-5, rtol=0)
    _check_causal_rows(maps, mask)


@pytest.mark.parametrize("fused", [False, True])
def test_llama_matches_hf_llama_eager(tiny_llama, fused):
    from fissure.models.hf_llama import load_hf_llama_dir

    path, hf, _ = tiny_llama
    hf.set_attn_implementation("eager")
    ours = load_hf_llama_dir(path)
    if fused:
        ours.fuse_projections()
    ids, mask, pos = _padded_batch(hf.config.vocab_size)
    maps = attention_maps(ours, ids, attention_mask=mask)
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask, position_ids=pos, output_attentions=True).attentions
    assert len(maps) == hf.config.num_hidden_layers
    real = mask.bool()
    for got, want in zip(maps, expected):
        assert got.shape == want.shape == (2, hf.config.num_attention_heads, 11, 11)  # grouped kv heads expanded
        for b in range(2):
            torch.testing.assert_close(got[b][:, real[b]], want[b][:, real[b]], atol=1e-5, rtol=0)
    _check_causal_rows(maps, mask)
    # and without padding: the unmasked (is_causal) path
    plain = attention_maps(ours, ids[:1])
    with torch.no_grad():
        want = hf(ids[:1], output_attentions=True).attentions
    for got, w in zip(plain, want):
        torch.testing.assert_close(got, w, atol=1e-5, rtol=0)


def test_hooks_are_gone_and_outputs_unchanged(hf_gpt2):
    _, ours = hf_gpt2
    ids = torch.randint(0, 101, (1, 9))
    with torch.no_grad():
        before = ours(ids)
    attention_maps(ours, ids)
    assert all(not m._forward_pre_hooks for m in ours.modules())
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), before, atol=0, rtol=0)


def test_bidirectional_module_and_no_attention():
    from fissure.models.attention import CausalSelfAttention

    torch.manual_seed(0)
    attn = CausalSelfAttention(16, 2)
    attn.causal = False  # a bidirectional encoder built from the same class
    x = torch.randn(1, 5, 16)

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = attn

        def forward(self, input_ids, attention_mask=None):
            return self.attn(x, mask=torch.ones(1, 1, 5, 5, dtype=torch.bool))

    (m,) = attention_maps(Wrapper(), torch.zeros(1, 5, dtype=torch.long))
    q, k, _ = attn.project(x)
    want = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, dim=-1)
    torch.testing.assert_close(m, want, atol=1e-6, rtol=0)
    assert (m[0, :, 0, 1:] > 0).all()  # the first query sees later keys
    with pytest.raises(ValueError, match="no attention module"):
        attention_maps(torch.nn.Linear(2, 2), torch.zeros(1, 2))
