"""Weight-only int8 and int4 quantisation for fast CPU decoding (as llama.cpp's Q8_0 / Q4_1 or
gpt-fast's int8 / int4).

Decoding one token reads every weight once, so at small batch sizes it is bound by memory
bandwidth: int8 weights read 4x fewer bytes than fp32, int4 8x. int8 keeps a scale per output row
(symmetric, per channel) and runs through ``torch._weight_int8pack_mm``: about 0.4% relative error
per weight. int4 keeps a scale and a minimum per group of 32 weights of a row (asymmetric, 16
levels from the group's minimum to its maximum: an error of up to 1/30 of the group's range per
weight) and runs through fissure's own kernel (:mod:`.q4_kernel`), which also rounds each group of
32 activations to int8, as llama.cpp does: on SmolLM2 that adds 0.007 nats a token to int4's cost
over fp32 (0.044 -> 0.050 on 1,023 tokens of Python; top-1 agreement with fp32 unchanged, 0.863),
and a step's projections run 1.1-1.2x faster than through torch's int4 kernel on AVX-512 and 2.2-2.5x
faster held to AVX2 (benchmarks/README.md).

torch's int8 kernel takes its input rows in bf16 (its fp32 path is scalar: 30-70x slower at 32
rows, measured), so each int8 layer casts its input to bf16 and its output back. The rest of the model
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

from . import q4_kernel
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
    """A bias-optional linear layer with int4 weights, a scale and a minimum per group of
    :attr:`GROUP` inputs of a row (``w = scale * q + min``, q in 0..15, llama.cpp's Q4_1), run by
    fissure's kernel (:mod:`.q4_kernel`: activations quantised to int8 per group on the fly)."""

    GROUP = q4_kernel.GROUP

    @staticmethod
    def fits(linear: nn.Linear) -> bool:
        """Whether the kernel takes this shape: inputs in whole groups."""
        return linear.in_features % Int4Linear.GROUP == 0

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if not self.fits(linear):
            raise ValueError(f"int4 needs in_features divisible by {self.GROUP}, not {linear.in_features}")
        self.fast = q4_kernel.kernel_loaded()  # built here (once per machine), at load time
        qweight, scales, mins = q4_kernel.pack(linear.weight)
        self.register_buffer("weight_int4", qweight)
        self.register_buffer("scales", scales)
        self.register_buffer("mins", mins)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        run = torch.ops.fissure.q4_linear if self.fast else q4_kernel.q4_linear_reference
        return run(x.float(), self.weight_int4, self.scales, self.mins, self.bias).to(x.dtype)


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
    :class:`Int8Linear` where the int4 kernel does not take its shape (inputs not in whole groups of
    32); the rest keeps its dtype. In place; returns the model."""
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
