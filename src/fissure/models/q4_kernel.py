"""fissure's int4 matmul (``q4_kernel.cpp``): int4 weights in groups of 32 (a scale and a minimum
each, llama.cpp's Q4_1) times activations quantised to int8 per group of 32 on the fly (Q8_1), an
integer multiply-add per group. Against torch's int4 kernel (bf16 activations, each weight
converted to a float), batch-1 decoding of SmolLM2 measured faster on AVX-512 and far faster with
AVX2 only, where torch's made fissure 0.63x llama.cpp (benchmarks/README.md).

The C++ builds on first use with torch's extension builder (a C++ compiler and ninja; about 10 s,
once per machine: torch caches it under ``~/.cache/torch_extensions``) and registers
``torch.ops.fissure.q4_linear``, which ``torch.compile`` calls as an opaque kernel. Where it cannot
build, :func:`q4_linear_reference` computes the same sums in torch (slowly), and a warning says so.
"""

from __future__ import annotations

import sys
import warnings
from functools import cache
from pathlib import Path

import torch

GROUP = 32
SOURCE = Path(__file__).with_name("q4_kernel.cpp")


def kernel_isa() -> str:
    """Which build of the kernel this CPU runs: AVX2 (with FMA and F16C) or plain C++. torch's
    dispatch level decides, so ``ATEN_CPU_CAPABILITY=default`` holds it back as it holds torch. (An
    AVX-512 VNNI build, four groups a step, measured slower here than this one: 1.05-1.26x
    llama.cpp end to end against 1.28-1.34x, four runs each.)"""
    return "avx2" if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") else "scalar"


@cache
def kernel_loaded() -> bool:
    """Build (once per machine) and load the kernel; False, with a warning, where it cannot be built."""
    from torch.utils import cpp_extension

    isa = kernel_isa()
    name = f"fissure_q4_{isa}"
    if not any(Path(cpp_extension.get_default_build_root()).glob(f"*/{name}/{name}.so")):
        print("building fissure's int4 kernel (once per machine, about 10 s)", file=sys.stderr)
    try:
        cpp_extension.load(name=name, sources=[str(SOURCE)], is_python_module=False, verbose=False,
                           extra_cflags=["-O3", "-fopenmp"] + (["-mavx2", "-mfma", "-mf16c"] if isa == "avx2" else []),
                           extra_ldflags=["-fopenmp"])  # at::parallel_for on torch's own OpenMP threads
    except Exception as e:  # no compiler, no ninja, a read-only cache: torch computes the same sums
        warnings.warn(f"fissure's int4 kernel could not be built ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                      "int4 layers compute in torch instead (same results, slower)", stacklevel=2)
        return False

    @torch.library.register_fake("fissure::q4_linear")
    def _(x, qweight, scales, mins, bias):
        return x.new_empty(*x.shape[:-1], qweight.shape[0])

    return True


def pack(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A weight ``(N, K)`` as int4 levels per group of 32 of a row, round to nearest between the
    group's minimum and maximum: ``qweight`` ``(N, K / 2)`` uint8 (byte j of a group holds levels j
    and 16 + j), ``scales`` and ``mins`` ``(N, K / 32)`` fp16, ``w = scale * q + min``."""
    n, k = weight.shape
    w = weight.detach().float().reshape(n, k // GROUP, GROUP)
    low = w.amin(-1)
    scale = ((w.amax(-1) - low) / 15).clamp(min=1e-7)
    q = torch.round((w - low[..., None]) / scale[..., None]).clamp(0, 15).to(torch.uint8)
    if not (low.abs().max() < 65504 and scale.max() < 65504):  # stored in fp16, as llama.cpp's Q4_1
        raise ValueError("int4 keeps each group's scale and minimum in fp16: weights beyond +-65504 do not fit")
    return (q[..., :16] | (q[..., 16:] << 4)).reshape(n, k // 2).contiguous(), scale.half(), low.half()


def q4_linear_reference(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor,
                        bias: torch.Tensor | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """What the kernel computes, in torch (``dtype`` float64 for a reference): the activations
    quantised per group of 32 (``xq = round(x * 127 / max|x|)``), then per group
    ``scale * dx * sum(q * xq) + min * sum(x)``."""
    n, k = qweight.shape[0], qweight.shape[1] * 2
    g = qweight.reshape(n, k // GROUP, GROUP // 2)
    q = torch.cat([g & 15, g >> 4], dim=-1).to(dtype)
    xg = x.reshape(-1, k // GROUP, GROUP).float()
    amax = xg.abs().amax(-1, keepdim=True)
    xq = torch.round(xg * torch.where(amax > 0, 127 / amax, 0.0)).to(dtype)
    dx, sx = (amax / 127).to(dtype), xg.sum(-1).to(dtype)
    y = torch.einsum("mgj,ngj,ng,mg->mn", xq, q, scales.to(dtype), dx[..., 0]) + sx @ mins.to(dtype).T
    if bias is not None:
        y = y + bias.to(dtype)
    return y.reshape(*x.shape[:-1], n)
