"""Weight-only int8 quantisation for fast CPU decoding (as llama.cpp's Q8_0 or gpt-fast's int8).

Decoding one token reads every weight once, so at small batch sizes it is bound by memory
bandwidth: int8 weights read 4x fewer bytes than fp32. Each output row keeps a scale
(symmetric, per channel); activations run in bf16 through ``torch._weight_int8pack_mm``.
Numbers differ slightly from fp32 (about 0.4% relative error per weight).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .blocks import OutputHead


class Int8Linear(nn.Module):
    """A bias-optional linear layer with int8 weights and per-output-channel bf16 scales."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        self.register_buffer("weight_int8", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(torch.bfloat16))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(torch.bfloat16),
                                                                    requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch._weight_int8pack_mm(x.reshape(-1, shape[-1]).to(torch.bfloat16), self.weight_int8, self.scale)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` (the output head included, even when tied to the embedding)
    with :class:`Int8Linear`; the rest of the model runs in bf16. In place; returns the model."""
    model.to(torch.bfloat16)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, OutputHead):
                child = child.as_linear()
            if isinstance(child, nn.Linear):
                setattr(module, name, Int8Linear(child))
    return model.eval()
