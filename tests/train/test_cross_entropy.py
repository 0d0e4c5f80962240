"""fissure's slab-wise cross-entropy against torch's ``F.cross_entropy`` on float32 logits."""

import pytest
import torch
import torch.nn.functional as F

from fissure.train import cross_entropy as ce_module
from fissure.train.cross_entropy import cross_entropy


def _reference(logits, targets, **kw):
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), **kw)


def _both(logits, targets, scale=1.0, **kw):
    ours_in = logits.detach().clone().requires_grad_()
    ref_in = logits.detach().clone().requires_grad_()
    ours = cross_entropy(ours_in, targets, **kw)
    ref = _reference(ref_in, targets, **kw)
    (ours * scale).backward()
    (ref * scale).backward()
    return ours, ref, ours_in.grad, ref_in.grad


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("slab", [1, 7, 1 << 20])  # one row per slab (1 element), a ragged last slab, one slab
def test_float32_matches_torch(monkeypatch, smoothing, slab):
    monkeypatch.setattr(ce_module, "SLAB_ELEMENTS", slab * 97)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 11, 97, generator=g) * 4
    targets = torch.randint(0, 97, (3, 11), generator=g)
    targets[0, :5] = -100
    targets[2, -1] = -100
    ours, ref, g_ours, g_ref = _both(logits, targets, scale=2.5, label_smoothing=smoothing)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-8)
    assert g_ours.dtype == torch.float32
    assert (g_ours[0, :5] == 0).all()  # ignored targets get no gradient


def test_logits_are_not_modified():
    logits = torch.randn(4, 30, requires_grad=True)
    before = logits.detach().clone()
    cross_entropy(logits, torch.randint(0, 30, (4,))).backward()
    assert torch.equal(logits.detach(), before)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_bfloat16_logits_give_float32_loss_and_bfloat16_gradient(smoothing):
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(64, 500, generator=g) * 3).bfloat16()
    targets = torch.randint(0, 500, (64,), generator=g)
    ours, ref, g_ours, g_ref = _both(logits, targets, label_smoothing=smoothing)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)  # computed in float32 either way
    assert g_ours.dtype == torch.bfloat16
    # torch rounds its float32 gradient to bfloat16 once; so do we, from float32 arithmetic in another order
    torch.testing.assert_close(g_ours.float(), g_ref.float(), rtol=2 ** -7, atol=1e-7)


def test_under_autocast_matches_float32_loss():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 40)
    x, y = torch.randn(2, 5, 16), torch.randint(0, 40, (2, 5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(x)
        ours = cross_entropy(logits, y)
        ref = _reference(logits, y)
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(ours, ref)


def test_without_grad_gives_the_value_and_no_graph():
    logits, targets = torch.randn(8, 50, requires_grad=True), torch.randint(0, 50, (8,))
    with torch.no_grad():
        loss = cross_entropy(logits, targets)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, F.cross_entropy(logits.detach(), targets))
