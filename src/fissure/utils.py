"""Small process-wide helpers: seeding and thread count."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


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


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count (``None``/0 = :func:`default_threads`); return it."""
    n = threads or default_threads()
    torch.set_num_threads(n)
    return n
