import pytest
import torch

from fissure.models import GPT, GPTConfig


def test_logits_equal_hf_gpt2(hf_gpt2):
    hf, ours = hf_gpt2
    ids = torch.randint(0, 101, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours(ids)
    assert (ref - got).abs().max().item() < 1e-4


def test_logits_equal_hf_gpt2_with_left_padding(hf_gpt2):
    hf, ours = hf_gpt2
    ids = torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask, position_ids=pos).logits
        got = ours(ids, attention_mask=mask)
    real = mask.bool()
    assert (ref[real] - got[real]).abs().max().item() < 1e-4
    assert torch.isfinite(got).all()


def test_kv_cache_equals_full_recompute(hf_gpt2):
    _, ours = hf_gpt2
    ids = torch.randint(0, 101, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = ours(ids)
        cache = ours.new_kv_cache(2)
        first = ours(ids[:, :12], kv_cache=cache)
        steps = [ours(ids[:, t : t + 1], kv_cache=cache) for t in range(12, 20)]
    got = torch.cat([first] + steps, dim=1)
    assert (full - got).abs().max().item() < 1e-5


@pytest.mark.parametrize("pos", ["learned", "sinusoidal"])
def test_causality_future_tokens_do_not_change_past_logits(pos):
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, pos_encoding=pos)).eval()
    a = torch.randint(0, 50, (1, 10))
    b = a.clone()
    b[0, 7:] = (b[0, 7:] + 1) % 50
    with torch.no_grad():
        assert torch.allclose(m(a)[0, :7], m(b)[0, :7], atol=1e-6)
        assert not torch.allclose(m(a)[0, 7:], m(b)[0, 7:], atol=1e-6)


def test_sinusoidal_table_matches_formula():
    from fissure.models.attention import sinusoidal_positions

    pe = sinusoidal_positions(50, 16)
    p, i = 37, 3
    assert pe[p, 2 * i].item() == pytest.approx(torch.sin(torch.tensor(p / 10000 ** (2 * i / 16))).item(), abs=1e-6)
    assert pe[p, 2 * i + 1].item() == pytest.approx(torch.cos(torch.tensor(p / 10000 ** (2 * i / 16))).item(), abs=1e-6)


def test_weight_tying_shares_storage():
    m = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=1, n_embd=8))
    assert m.lm_head.weight.data_ptr() == m.tok_emb.weight.data_ptr()
    m2 = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=1, n_embd=8, tie_weights=False))
    assert m2.lm_head.weight.data_ptr() != m2.tok_emb.weight.data_ptr()


def test_block_size_exceeded_raises():
    m = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=1, n_embd=8))
    with pytest.raises(ValueError, match="block_size"):
        m(torch.zeros(1, 9, dtype=torch.long))


def test_conversion_to_hf_gpt2_round_trips(hf_gpt2):
    from fissure.models.hf_gpt2 import hf_gpt2_from_gpt

    hf, ours = hf_gpt2
    back = hf_gpt2_from_gpt(ours)
    ids = torch.randint(0, 101, (2, 30))
    with torch.no_grad():
        assert (back(ids).logits - hf(ids).logits).abs().max().item() < 1e-5
