"""Shared helpers for benchmarks: machine peaks, thread setup, JSON output with provenance."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fissure.runs import provenance
from fissure.utils import matmul_gflops

RESULTS = Path(__file__).parent / "results"


MIN_GFLOPS = 20.0  # below this a dtype's matmuls would take a benchmark many minutes: skip its variants


def slow_dtype(dtype: torch.dtype, min_gflops: float = MIN_GFLOPS) -> str | None:
    """Why variants in ``dtype`` are skipped on this CPU (a short matmul probe under ``min_gflops``),
    or ``None`` when they are worth running. On CPUs without bf16 instructions (AVX2 only) a bf16
    matmul was measured at 1 GFLOP/s against 118 in fp32: a benchmark must not hang there."""
    peak = matmul_gflops(dtype, n=256, repeats=2)
    if peak >= min_gflops:
        return None
    return (f"{str(dtype).removeprefix('torch.')} skipped: its matmul probe ran at {peak:.1f} GFLOP/s on this CPU "
            f"({torch.backends.cpu.get_cpu_capability()}), under {min_gflops:g}")


def results_path(name: str) -> Path:
    """``results/NAME.json``; on a CPU whose kernels run below AVX-512 (an AVX2-only machine, or one
    held there by ``ATEN_CPU_CAPABILITY``), ``results/NAME-avx2.json``: one file per capability."""
    capability = torch.backends.cpu.get_cpu_capability()
    suffix = "" if capability.startswith("AVX512") else f"-{capability.lower()}"
    return RESULTS / f"{name}{suffix}.json"


def save(name: str, data: dict, seed: int, threads: int) -> Path:
    """Write ``data`` with its provenance to :func:`results_path`."""
    RESULTS.mkdir(exist_ok=True)
    path = results_path(name)
    data = {**data, "meta": provenance(seed, threads)}
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
