"""Shared helpers for benchmarks: machine peaks, thread setup, JSON output with provenance."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from fissure.runs import provenance

RESULTS = Path(__file__).parent / "results"


def matmul_peak(dtype: torch.dtype, n: int = 1536, repeats: int = 5) -> float:
    """Best-of-``repeats`` GFLOP/s of an n x n x n matmul in ``dtype`` on this machine, now."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def save(name: str, data: dict, seed: int, threads: int) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {**data, "meta": provenance(seed, threads)}
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
