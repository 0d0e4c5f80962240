import torch

from fissure.models import GPT, GPTConfig
import pytest

from fissure.models.quantize import Int4Linear, Int8Linear, quantize_int4, quantize_int8


def test_int8_linear_is_close_to_float():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96)
    q = Int8Linear(lin)
    x = torch.randn(5, 7, 64)
    ref = lin(x)
    err = (q(x).float() - ref).abs().max() / ref.abs().max()
    assert err < 0.02
    assert q.weight_int8.dtype == torch.int8 and q.weight_int8.abs().max() == 127


def test_quantised_model_keeps_its_predictions():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=200, block_size=32, n_layer=2, n_head=2, n_embd=64)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)  # sharper predictions than the tiny init
    x = torch.randint(0, 200, (3, 20))
    with torch.no_grad():
        ref = model(x)
        quantize_int8(model)
        got = model(x).float()
    assert all(isinstance(m, Int8Linear) for m in (model.lm_head, model.blocks[0].attn.qkv))
    agree = (ref.argmax(-1) == got.argmax(-1)).float().mean()
    assert agree > 0.9
    total_variation = 0.5 * (got.softmax(-1) - ref.softmax(-1)).abs().sum(-1)
    assert total_variation.mean() < 0.05


def dequantised_int4(w: torch.Tensor, group: int = 32) -> torch.Tensor:
    """Round-to-nearest int4 per group of a row, written out independently of fissure: 16 levels
    from the group's minimum to its maximum."""
    n, k = w.shape
    g = w.double().reshape(n, k // group, group)
    low, high = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    step = (high - low) / 15
    return (torch.round((g - low) / step) * step + low).reshape(n, k)


def test_int4_linear_computes_with_the_dequantised_weights(int4_scheme):
    import copy

    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 48)
    q = Int4Linear(lin)
    deq = dequantised_int4(lin.weight.detach())
    group_range = lin.weight.detach().reshape(48, 3, 32).aminmax(dim=-1)
    half_step = ((group_range.max - group_range.min) / 30).repeat_interleave(32, dim=1)
    assert ((deq - lin.weight.double()).abs() <= half_step.double() + 1e-6).all()  # round to nearest
    x = torch.randn(5, 7, 96)
    got = q(x).double()
    want = int4_scheme(copy.deepcopy(lin))(x.double())  # the scheme written out in tests/conftest.py
    assert ((got - want).abs().max() / want.abs().max()) < 1e-5  # fp32 sums of the same products
    assert q.weight_int4.dtype == torch.uint8 and q.weight_int4.numel() == 48 * 96 // 2  # two weights a byte
    strided = torch.randn(96, 10).t()  # a transposed view, as attention outputs can be
    assert torch.equal(q(strided), q(strided.contiguous()))


def test_int4_falls_back_to_int8_where_the_kernel_does_not_take_the_shape():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=200, block_size=32, n_layer=2, n_head=2, n_embd=48)).eval()
    x = torch.randint(0, 200, (3, 20))
    with torch.no_grad():
        fp32 = {name: m.weight.detach().clone() for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        quantize_int4(model)
    kinds = {name: type(m).__name__ for name, m in model.named_modules() if name in fp32 or name == "lm_head"}
    assert kinds["lm_head"] == "Int8Linear"  # 48 inputs: not whole groups of 32
    assert kinds["blocks.0.mlp.proj"] == "Int4Linear"  # 192 inputs
    with pytest.raises(ValueError, match="divisible by 32"):
        Int4Linear(torch.nn.Linear(40, 16))
    assert model(x).shape == (3, 20, 200)


def test_int4_model_equals_the_model_computing_the_scheme_independently(int4_scheme):
    """The quantised GPT against a copy whose linear layers compute the int4 scheme written out in
    the test (dequantised weights, activations quantised per group) in float64: the same next-token
    choices, the same distributions up to a rare rounding flip."""
    import copy

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=256, block_size=32, n_layer=2, n_head=2, n_embd=64)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)
    reference = int4_scheme(copy.deepcopy(model))
    x = torch.randint(0, 256, (3, 20))
    with torch.no_grad():
        want = reference(x)
        got = quantize_int4(model)(x).float()
    assert isinstance(model.lm_head, Int4Linear)
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.99
    # fp32 against float64 moves an activation across a rounding boundary now and then (a level's
    # worth downstream), so the distributions are compared, not each logit: a level is ~1% of a range
    total_variation = 0.5 * (got.softmax(-1) - want.softmax(-1)).abs().sum(-1)
    print(f"argmax agreement {(got.argmax(-1) == want.argmax(-1)).float().mean():.3f}, mean TV {total_variation.mean():.2e}")
    assert total_variation.mean() < 0.005


def test_load_with_int4_quantises_a_native_llama(tiny_llama):
    """The wiring (the numbers are the GPT test's above): every projection int4 or int8, decoding runs."""
    import fissure
    from fissure.backends import BackendError
    from fissure.decode import Decoding

    lm = fissure.load(str(tiny_llama[0]), dtype="int4")
    kinds = {type(m).__name__ for m in lm.model.modules()}
    assert "Int4Linear" in kinds and "Linear" not in kinds
    assert len(lm.generate(["hello"], Decoding(max_new_tokens=4))[0]) > 0
    with pytest.raises(BackendError, match="int4"):
        fissure.load(str(tiny_llama[0]), dtype="int2")


@pytest.mark.parametrize("quantize", [quantize_int8, quantize_int4])
def test_only_the_linear_layers_change_the_rest_stays_fp32(quantize):
    """Quantising swaps the linear layers and leaves every other weight as it was, in fp32 (faster
    than bf16 for a decoding step, measured; the module docstring has the numbers): the embedding,
    the norms, the KV cache and the logits stay fp32, and the embedding keeps its exact values."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=256, block_size=32, n_layer=2, n_head=2, n_embd=64)).eval()
    before = {name: p.detach().clone() for name, p in model.named_parameters() if "ln" in name or "emb" in name}
    quantize(model)
    linear_kinds = (Int8Linear, Int4Linear)
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    rest = {name: p for name, p in model.named_parameters()
            if not isinstance(model.get_submodule(name.rsplit(".", 1)[0]), linear_kinds)}
    assert rest and all(p.dtype == torch.float32 for p in rest.values())
    for name, p in before.items():
        assert torch.equal(dict(model.named_parameters())[name], p), name
    assert model.new_kv_cache(2, 8).k[0].dtype == torch.float32
    with torch.no_grad():
        assert model(torch.randint(0, 256, (2, 5))).dtype == torch.float32
