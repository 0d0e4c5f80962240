"""Token cross-entropy computed a slab of rows at a time, in float32, from logits of any dtype.

``F.cross_entropy(logits.float(), ...)`` writes a float32 copy of the logits, a float32
log-softmax it keeps for the backward pass, a zero-filled gradient and then a cast of that
gradient back to the logits' dtype: four tensors the size of the logits (for a GPT with a vocabulary
of 8,192 and a batch of 2,048 tokens, 67 MB each). Here one pass over a slab of rows at a time
(its float32 copy stays in cache) gives both the loss and the gradient ``softmax(z) - onehot(y)``,
written straight into a tensor of the logits' dtype, which is all the backward pass needs. Same
value and gradient as ``F.cross_entropy`` on the float32 logits (mean over the targets that are not
``ignore_index``; ``label_smoothing`` as in torch).
"""

from __future__ import annotations

import torch

SLAB_ELEMENTS = 1 << 20  # float32 elements per slab of rows (4 MiB): stays in cache


class _CrossEntropy(torch.autograd.Function):
    """The gradient ``(softmax(z) - target distribution) / count`` is written in the forward pass,
    while each slab of float32 logits is in cache: the backward pass only scales it."""

    @staticmethod
    def forward(ctx, logits, targets, ignore_index, label_smoothing):
        n, vocab = logits.shape
        keep = targets != ignore_index
        count = keep.sum()
        picked = targets.clamp(0, vocab - 1)[:, None]
        grad = torch.empty_like(logits) if ctx.needs_input_grad[0] else None
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        rows = max(1, SLAB_ELEMENTS // vocab)
        for s in range(0, n, rows):
            z = logits[s:s + rows].to(torch.float32, copy=True)
            z -= z.amax(-1, keepdim=True)
            if label_smoothing:
                z_mean = z.mean(-1)
            z_target = z.gather(1, picked[s:s + rows])[:, 0]
            p = z.exp_()
            sum_exp = p.sum(-1)
            log_sum_exp = sum_exp.log()
            nll = log_sum_exp - z_target
            if label_smoothing:
                nll = (1 - label_smoothing) * nll + label_smoothing * (log_sum_exp - z_mean)
            weight = keep[s:s + rows] / count
            total += (nll * weight).sum()
            if grad is not None:  # softmax - (1 - eps) onehot - eps / vocab, per kept row / count
                p *= (weight / sum_exp)[:, None]
                if label_smoothing:
                    p -= (weight * (label_smoothing / vocab))[:, None]
                p.scatter_add_(1, picked[s:s + rows], (weight * (label_smoothing - 1))[:, None])
                grad[s:s + rows] = p
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx, grad_loss):
        (grad,) = ctx.saved_tensors
        return (grad if bool(grad_loss == 1) else grad * grad_loss.to(grad.dtype)), None, None, None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` ``(..., vocab)`` against ``targets`` ``(...)``, computed in
    float32 whatever the logits' dtype; the gradient comes back in the logits' dtype."""
    vocab = logits.shape[-1]
    return _CrossEntropy.apply(logits.reshape(-1, vocab), targets.reshape(-1), ignore_index, float(label_smoothing))
