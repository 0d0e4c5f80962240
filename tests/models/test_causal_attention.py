"""The written-out causal attention used for short bf16 training sequences on a CPU: the same
function as SDPA's (values and gradients), the same grouping of query heads, taken only where
it was measured faster."""

import pytest
import torch
import torch.nn.functional as F

import fissure.models.attention as attention
from fissure.models import GPT, GPTConfig
from fissure.models.attention import causal_attention_explicit
from fissure.models.llama import Llama, LlamaConfig


@pytest.mark.parametrize("heads,kv_heads", [(6, 6), (9, 3), (4, 1)])
def test_equals_sdpa_values_and_gradients_in_float64(heads, kv_heads):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, heads, 37, 16, generator=g, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(2, kv_heads, 37, 16, generator=g, dtype=torch.float64, requires_grad=True)
            for _ in range(2))
    upstream = torch.randn(2, heads, 37, 16, generator=g, dtype=torch.float64)
    ours = causal_attention_explicit(q, k, v)
    grads = torch.autograd.grad(ours, (q, k, v), upstream)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=heads != kv_heads)
    ref_grads = torch.autograd.grad(ref, (q, k, v), upstream)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_bf16_training_takes_it_and_stays_at_bf16_precision(family, monkeypatch):
    """Under bf16 autocast with gradients on, the models' attention goes through the written-out
    path; loss and gradients stay within bf16's precision of the fp32 model's."""
    torch.manual_seed(0)
    if family == "gpt":
        model = GPT(GPTConfig(vocab_size=96, block_size=64, n_layer=2, n_head=4, n_embd=64))
    else:
        model = Llama(LlamaConfig(vocab_size=96, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
                                  intermediate_size=128))
    x = torch.randint(0, 96, (3, 64), generator=torch.Generator().manual_seed(1))

    def loss_and_grads(autocast: bool):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(x)
        loss = F.cross_entropy(logits.float()[:, :-1].reshape(-1, 96), x[:, 1:].reshape(-1))
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters()]

    ref_loss, ref_grads = loss_and_grads(False)
    calls = []
    real = attention.causal_attention_explicit
    monkeypatch.setattr(attention, "causal_attention_explicit", lambda *a: calls.append(1) or real(*a))
    loss, grads = loss_and_grads(True)
    assert len(calls) == 2  # one per layer, in bf16 only (the fp32 pass above went through SDPA)
    assert abs(loss - ref_loss) < 0.02 * ref_loss
    flat, ref_flat = torch.cat([g.flatten() for g in grads]), torch.cat([g.flatten() for g in ref_grads])
    assert _rel(flat, ref_flat) < 0.05


def test_sdpa_everywhere_else(monkeypatch):
    """fp32, inference, padding masks and sequences past the measured crossover keep SDPA."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=32, n_layer=1, n_head=2, n_embd=32))
    calls = []
    monkeypatch.setattr(attention, "causal_attention_explicit", lambda *a: calls.append(1))
    x = torch.randint(0, 64, (2, 32))
    model(x).sum().backward()  # fp32 with gradients
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)  # bf16 inference
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x, attention_mask=torch.ones(2, 32, dtype=torch.bool)).float().sum().backward()  # a mask
        monkeypatch.setattr(attention, "EXPLICIT_ATTENTION_MAX_LEN", 31)
        model(x).float().sum().backward()  # longer than the crossover
    assert calls == []
