"""Small process-wide helpers: seeding, thread count, and what this CPU computes fast."""

from __future__ import annotations

import functools
import os
import random
import time

import numpy as np
import torch

from .config import check_range
from .errors import ConfigError

MAX_THREADS = 1024


def check_seed(seed: int, name: str = "seed") -> None:
    """``ValueError`` unless ``seed`` is an integer torch, NumPy and Python all accept."""
    check_range(name, seed, 0, 2**63 - 1, integer=True)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def default_threads() -> int:
    """Cores that are free right now: total cores minus the current 1-minute load, at least 1.

    With another process busy on one of two cores, torch's default of one thread per core
    makes small models 10-20x slower, so we never take cores that are in use.
    """
    cores = os.cpu_count() or 1
    try:
        busy = int(round(os.getloadavg()[0]))
    except OSError:
        busy = 0
    return max(1, min(cores, cores - busy))


def check_threads(threads: int | None, name: str = "threads") -> None:
    """``ValueError`` unless ``threads`` is None or 0 (free cores) up to :data:`MAX_THREADS`."""
    if threads is not None:
        check_range(name, threads, 0, MAX_THREADS, integer=True)


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count (``None``/0 = :func:`default_threads`); return it."""
    try:
        check_threads(threads)
    except ValueError as exc:
        raise ConfigError(f"{exc} (0 = the free cores)") from None
    n = threads or default_threads()
    torch.set_num_threads(n)
    return n


CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # the ones that decide which dtype is fast
ISA_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")  # settings that hold kernels below the CPU


def cpu_features() -> dict:
    """What this CPU can do for torch: its dispatch level (``DEFAULT``, ``AVX2``, ``AVX512``...) and
    the instruction-set flags that make bf16 fast or slow, and any setting that holds the kernels
    below what the CPU has (an AVX2-only machine emulated on a newer one). Machines of one kind differ
    here, so every run and benchmark records it beside its numbers."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    return {"torch_capability": torch.backends.cpu.get_cpu_capability(),
            "flags": [flag for flag in CPU_FLAGS if flag in flags],
            "isa_caps": {name: os.environ[name] for name in ISA_CAPS if name in os.environ}}


def matmul_gflops(dtype: torch.dtype, n: int = 1536, repeats: int = 5) -> float:
    """Best-of-``repeats`` GFLOP/s of an n x n x n matmul in ``dtype`` on this machine, now (after one
    untimed call, which pays for the kernel's setup)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


@functools.cache
def bf16_verdict() -> tuple[bool, str]:
    """Whether bf16 matmuls beat fp32 ones here (so that ``dtype = "auto"`` may choose bf16), and why.

    The CPU flags come first (no AVX-512 BF16 and no AMX: a bf16 matmul was measured at 1 GFLOP/s
    against 118 in fp32, so no). Where they promise bf16, a 256^3 matmul in each dtype is timed once
    per process: the flags say what the CPU has, not what the kernels use (``ONEDNN_MAX_CPU_ISA``,
    a virtual machine that hides the instructions from the library). bf16 must reach half of fp32's
    rate; the two cases sit far either side of that line (about 2.5x and 0.01x).

    The probe runs on one thread: the question is which instructions the kernels use, and with another
    process busy on the cores a two-thread matmul this small can wait a whole scheduler slice for its
    second thread (measured: 3 GFLOP/s in either dtype, or in one and not the other, which chose fp32
    for a run whose neighbour had just started)."""
    if not {"avx512_bf16", "amx_bf16"} & set(cpu_features()["flags"]):
        return False, "this CPU has no bf16 instructions (AVX-512 BF16 or AMX)"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        bf16, fp32 = matmul_gflops(torch.bfloat16, n=256, repeats=5), matmul_gflops(torch.float32, n=256, repeats=5)
    finally:
        torch.set_num_threads(threads)
    return bf16 >= fp32 / 2, f"bf16 matmul: {bf16:.0f} GFLOP/s on one thread here, fp32 {fp32:.0f}"


def resolve_dtype(dtype: str) -> str:
    """What ``dtype`` means on this CPU: ``auto`` is ``bf16`` where its matmuls beat fp32's, else
    ``fp32``; any other value is itself."""
    if dtype == "auto":
        return "bf16" if bf16_verdict()[0] else "fp32"
    return dtype
