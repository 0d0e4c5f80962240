"""DecodeLinear (the fused Llama's projections): the same outputs and gradients as ``F.linear`` for
every row count, shape and dtype; a fused model keeps its logits, greedy tokens, tied head and
parameter count, quantises like an unfused one, and follows training."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fissure.decode import Decoding, generate
from fissure.models.decode_linear import DecodeLinear, use_decode_linears
from fissure.models.llama import Llama, LlamaConfig
from fissure.models.quantize import Int8Linear, quantize_int8


@pytest.fixture(autouse=True)
def batched_path_for_small_weights(monkeypatch):
    """These tests use small weights; the batched path is what they check, so take it for any size."""
    monkeypatch.setattr(DecodeLinear, "min_weights", 0)


def test_small_weights_take_f_linear_exactly(monkeypatch):
    monkeypatch.setattr(DecodeLinear, "min_weights", 2**16)
    torch.manual_seed(0)
    small, large = nn.Linear(64, 256), nn.Linear(256, 256)  # 16,384 and 65,536 weights
    x1, x2 = torch.randn(1, 64), torch.randn(1, 256)
    with torch.no_grad():
        assert torch.equal(DecodeLinear.from_linear(small)(x1), F.linear(x1, small.weight, small.bias))
        torch.testing.assert_close(DecodeLinear.from_linear(large)(x2), F.linear(x2, large.weight, large.bias))


def tiny(tie: bool) -> Llama:
    torch.manual_seed(0)
    return Llama(LlamaConfig(vocab_size=300, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                             intermediate_size=48, tie_weights=tie)).eval()


@pytest.mark.parametrize("out_features", [300, 302, 7])  # divisible by the splits, by 2 only, by neither
@pytest.mark.parametrize("bias", [False, True])
def test_matches_f_linear_for_every_row_count(out_features, bias):
    torch.manual_seed(0)
    linear = nn.Linear(40, out_features, bias=bias)
    fast = DecodeLinear.from_linear(linear)
    assert fast.weight is linear.weight and fast.bias is linear.bias
    for shape in [(40,), (1, 40), (1, 1, 40), (2, 1, 40), (1, 3, 40), (4, 40), (2, 3, 40), (9, 40)]:
        x = torch.randn(*shape)
        torch.testing.assert_close(fast(x), F.linear(x, linear.weight, linear.bias), atol=1e-5, rtol=1e-5)


def test_gradients_match_f_linear():
    torch.manual_seed(0)
    linear = nn.Linear(24, 64)
    fast = DecodeLinear.from_linear(nn.Linear(24, 64))
    fast.load_state_dict(linear.state_dict())
    x = torch.randn(1, 3, 24, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    (fast(x) ** 2).sum().backward()
    (linear(x2) ** 2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(fast.weight.grad, linear.weight.grad)
    torch.testing.assert_close(fast.bias.grad, linear.bias.grad)


def test_bf16_equals_f_linear_exactly():
    torch.manual_seed(0)
    linear = nn.Linear(32, 64, dtype=torch.bfloat16)
    x = torch.randn(1, 1, 32, dtype=torch.bfloat16)
    assert torch.equal(DecodeLinear.from_linear(linear)(x), F.linear(x, linear.weight, linear.bias))


def test_use_decode_linears_swaps_plain_linears_only():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 8)))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    use_decode_linears(model)
    assert isinstance(model[0], DecodeLinear) and isinstance(model[2][0], DecodeLinear)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items()) and state.keys() == model.state_dict().keys()


def test_fused_model_gives_the_same_logits_and_tokens():
    for tie in (True, False):
        model = tiny(tie)
        ids = torch.randint(0, 300, (3, 9))
        with torch.no_grad():
            before = model(ids)
            one_row = model(ids[:1])
            greedy = generate(model, ids.tolist(), Decoding(max_new_tokens=8)).sequences
            single = generate(model, ids[:1].tolist(), Decoding(max_new_tokens=8)).sequences
            model.fuse_projections()
            linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
            assert len(linears) == 2 * 4 + 1 and all(type(m) is DecodeLinear for m in linears)
            assert (model.lm_head.weight is model.tok_emb.weight) == tie
            torch.testing.assert_close(model(ids), before, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(model(ids[:1]), one_row, atol=1e-5, rtol=1e-5)
        assert generate(model, ids.tolist(), Decoding(max_new_tokens=8)).sequences == greedy
        assert generate(model, ids[:1].tolist(), Decoding(max_new_tokens=8)).sequences == single
        assert model.num_params() == tiny(tie).num_params()
        assert not list(model.buffers()) or all(b.numel() < 1000 for b in model.buffers())  # no weight copies


def test_int8_quantises_a_fused_head():
    plain, fused = tiny(True), tiny(True).fuse_projections()
    quantize_int8(plain)
    quantize_int8(fused)
    assert isinstance(fused.lm_head, Int8Linear)
    ids = torch.randint(0, 300, (2, 7))
    with torch.no_grad():
        assert torch.equal(plain.lm_head.weight_int8, fused.lm_head.weight_int8)
        torch.testing.assert_close(fused(ids), plain(ids), atol=2e-2, rtol=0)


def test_a_fused_head_follows_training_and_passes_gradients():
    """Trained after fusing (an optimizer step changes the weight in place): one-row steps use the
    new weight, and gradients reach the head."""
    model = tiny(True).fuse_projections()
    ids = torch.randint(0, 300, (1, 3))
    model.train()
    loss = model(ids).logsumexp(-1).mean()
    loss.backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    model.eval()
    with torch.no_grad():
        h = model.hidden_states(ids)
        torch.testing.assert_close(model.lm_head(h[:, -1:]), h[:, -1:] @ model.tok_emb.weight.t())


def test_bf16_reorders_once_and_follows_weight_changes():
    torch.manual_seed(0)
    linear = nn.Linear(32, 64, dtype=torch.bfloat16)
    fast = DecodeLinear.from_linear(linear)
    x = torch.randn(5, 32, dtype=torch.bfloat16)
    with torch.no_grad():
        first = fast(x)
        packed = fast._packed[1]
        fast(x)
        assert fast._packed[1] is packed  # reordered once
        linear.weight.mul_(2)  # an in-place change (an optimizer step, a merge)
        torch.testing.assert_close(fast(x), F.linear(x, linear.weight, linear.bias))
        assert not torch.equal(fast(x), first)
    import copy
    twin = copy.deepcopy(fast)  # the oneDNN copy cannot be copied: the twin makes its own
    with torch.no_grad():
        torch.testing.assert_close(twin(x), fast(x))


def test_fused_gpt_equals_hf_gpt2():
    """Our GPT with every projection a DecodeLinear against HF's GPT-2 on the same weights: logits
    at one row and many, and greedy tokens (one row per step: the batched path)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from fissure.models.hf_gpt2 import gpt_from_hf_gpt2

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=120, n_positions=32, n_embd=48, n_layer=2, n_head=4,
                                    bos_token_id=0, eos_token_id=0)).eval()
    ours = gpt_from_hf_gpt2(hf).fuse_projections().eval()
    assert all(type(m) is DecodeLinear for m in ours.modules() if isinstance(m, nn.Linear))
    ids = torch.randint(1, 120, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours(ids[:, :1]), hf(ids[:, :1]).logits, atol=1e-4, rtol=1e-4)
        expected = hf.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=0)[0, 7:].tolist()
    assert generate(ours, ids.tolist(), Decoding(max_new_tokens=10)).sequences[0] == expected
