"""Weight-only int8 and int4 quantisation for fast CPU decoding (as llama.cpp's Q8_0 / Q4_1 or
gpt-fast's int8 / int4).

Decoding one token reads every weight once, so at small batch sizes it is bound by memory
bandwidth: int8 weights read 4x fewer bytes than fp32, int4 8x. int8 keeps a scale per output row
(symmetric, per channel) and runs through ``torch._weight_int8pack_mm``: about 0.4% relative error
per weight. int4 keeps a scale and an offset per group of 32 weights of a row (asymmetric, 16
levels from the group's minimum to its maximum) and runs through torch's packed int4 CPU kernel
(``torch._weight_int4pack_mm_for_cpu``): an error of up to 1/30 of the group's range per weight.

Both kernels take their input rows in bf16 (their fp32 paths are scalar: 30-70x slower at 32 rows,
measured), so each quantised layer casts its input to bf16 and its output back. The rest of the model
(embeddings, norms, attention, the KV cache) stays fp32: against running it in bf16 too, batch-1
greedy decoding of SmolLM2 measured 16-19% faster on AVX-512 (int8 33.9 -> 39.4, int4 53.3 -> 63.4
tokens/s, in-process A/B, 2 threads) and 9% faster with the kernels held to AVX2, batch-32 sampling
the same on AVX-512 and 16-19% faster on AVX2, a compiled int4 step the same (its small ops fuse):
bf16's small per-op casts cost more than the bytes they save, and where the CPU has no bf16
instructions every bf16 op outside these kernels crawls.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .decode_linear import replace_linears

# what a model's weights can run in (fissure.load(dtype=...), --dtype): fp32 as trained, bf16, or
# weight-only int8 / int4 linear layers with the rest of the model as it was (fp32)
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "int8": "int8 linear weights, the rest fp32",
          "int4": "int4 linear weights in groups of 32, the rest fp32"}


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


class Int4Linear(nn.Module):
    """A bias-optional linear layer with int4 weights: per group of :attr:`GROUP` inputs of a row, a
    bf16 scale and offset, ``w = (q - 8) * scale + zero`` for ``q`` in 0..15 (``zero`` is the
    value of the middle level; torch's packed int4 layout and convention, as gpt-fast's)."""

    GROUP = 32

    @staticmethod
    def fits(linear: nn.Linear) -> bool:
        """Whether the kernel takes this shape: inputs in whole groups, outputs a multiple of 16."""
        return linear.in_features % Int4Linear.GROUP == 0 and linear.out_features % 16 == 0

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if not self.fits(linear):
            raise ValueError(f"int4 needs in_features divisible by {self.GROUP} and out_features by 16, "
                             f"not {linear.in_features} x {linear.out_features}")
        n, k = linear.out_features, linear.in_features
        w = linear.weight.detach().float().reshape(n, k // self.GROUP, self.GROUP)
        low, high = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
        scale = (high - low).clamp(min=1e-8) / 15
        q = torch.round((w - low) / scale).clamp(0, 15).to(torch.int32).reshape(n, k)
        self.register_buffer("weight_int4", torch._convert_weight_to_int4pack_for_cpu(q, 1))
        # (groups, out, 2): each group's scale and the value of its middle level (q = 8)
        self.register_buffer("scales_and_zeros", torch.cat([scale, low + 8 * scale], -1).transpose(0, 1)
                             .contiguous().to(torch.bfloat16))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(torch.bfloat16),
                                                                    requires_grad=False)
        self.in_features, self.out_features = k, n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1]).to(torch.bfloat16).contiguous()  # the kernel reads rows in place
        y = torch._weight_int4pack_mm_for_cpu(rows, self.weight_int4,
                                              self.GROUP, self.scales_and_zeros)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)


def _quantize(model: nn.Module, make) -> nn.Module:
    """Quantise every linear layer from its weights as they are; the rest of the model is left alone."""
    return replace_linears(model, make).eval()


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` (the output head included, even when tied to the embedding)
    with :class:`Int8Linear`; the rest of the model keeps its dtype (fp32 as loaded). In place;
    returns the model."""
    return _quantize(model, Int8Linear)


def quantize_int4(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` (the output head included) with :class:`Int4Linear`, or with
    :class:`Int8Linear` where the int4 kernel does not take its shape; the rest keeps its dtype. In
    place; returns the model."""
    return _quantize(model, lambda linear: Int4Linear(linear) if Int4Linear.fits(linear) else Int8Linear(linear))


def set_dtype(model: nn.Module, dtype: str) -> nn.Module:
    """Run ``model`` in one of :data:`DTYPES` (in place; returns the model). fp32 leaves it as it is."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype '{dtype}' ({', '.join(DTYPES)})")
    if dtype == "bf16":
        return model.to(torch.bfloat16)
    if dtype == "int8":
        return quantize_int8(model)
    if dtype == "int4":
        return quantize_int4(model)
    return model
