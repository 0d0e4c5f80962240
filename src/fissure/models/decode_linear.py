"""A linear layer that is fast for the few rows of a decoding step (fp32 on CPU)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class DecodeLinear(nn.Linear):
    """An ``nn.Linear`` that multiplies a few input rows (decoding a token or a speculative block
    per sequence) as one batched matmul over ``splits`` slices of its weight's rows, with no copy
    of the weight. In fp32, MKL's path for a single row reads the weight at 8-10 GB/s on this
    machine; the batched form reads it at 25-40 GB/s (2 threads, weights streamed from memory:
    SmolLM2's gate/up projection x 30 layers 24 ms -> 7 ms, its 49,152-row head 12 ms -> 4 ms; 2x
    also on one thread). bf16 keeps ``F.linear``, which is faster there, and so do more rows. Same
    numbers up to rounding (the products are summed in another order).

    Made by :meth:`from_linear`, which shares the parameters (a head tied to the embedding stays
    tied); state-dict names are ``nn.Linear``'s, and gradients flow through either path."""

    max_rows = 4  # at most this many input rows take the batched path
    splits = 4

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "DecodeLinear":
        new = cls(linear.in_features, linear.out_features, bias=False, device="meta")
        new.weight, new.bias = linear.weight, linear.bias
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if (rows > self.max_rows or self.weight.dtype != torch.float32
                or self.out_features % self.splits):
            return F.linear(x, self.weight, self.bias)
        s, n, k = self.splits, self.out_features, self.in_features
        flat = x.reshape(rows, k)
        y = torch.bmm(self.weight.view(s, n // s, k), flat.t().unsqueeze(0).expand(s, k, rows))  # (s, n/s, rows)
        y = y.view(n, rows).t() if rows == 1 else y.permute(2, 0, 1).reshape(rows, n)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], n)


def use_decode_linears(model: nn.Module) -> nn.Module:
    """Swap every plain ``nn.Linear`` in ``model`` for a :class:`DecodeLinear` sharing its
    parameters. In place; returns the model."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, name, DecodeLinear.from_linear(child))
    return model
