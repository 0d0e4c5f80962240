"""Dose-response curves of attacks and the laws fitted to them.

- :func:`asr_at_n`: the attack success rate with N attempts per request (best-of-N sampling),
  estimated without bias from k >= N samples per request of which c succeeded:
  1 - C(k - c, N) / C(k, N), averaged over requests (the pass@k estimator of Chen et al. 2021,
  "Evaluating large language models trained on code").
- :func:`attempts_curve`: that rate for N = 1..k with a percentile-bootstrap interval over
  requests.
- :func:`fit_power_law`: y = C * x^b fitted by least squares in log-log space, with the exponent's
  t interval (scipy's ``linregress``). Many-shot jailbreaking (Anil et al. 2024) reports the
  compliant reply's negative log-likelihood falling as a power of the number of shots; best-of-N
  jailbreaking (Hughes et al. 2024) reports -log(ASR) falling as a power of N.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb

import numpy as np
from scipy import stats


def asr_at_n(samples: int, successes: int, n: int) -> float:
    """P(at least one success among ``n`` of ``samples`` attempts drawn without replacement)."""
    if not 0 <= successes <= samples or not 1 <= n <= samples:
        raise ValueError(f"need 0 <= successes <= samples and 1 <= n <= samples, got {successes}, {samples}, {n}")
    return 1.0 - comb(samples - successes, n) / comb(samples, n)


def attempts_curve(counts: Sequence[tuple[int, int]], confidence: float = 0.95, n_resamples: int = 1000,
                   seed: int = 0) -> list[dict]:
    """ASR with N attempts, N = 1..k, from (samples, successes) per request (every request with the
    same k): the estimate and a percentile-bootstrap interval over requests."""
    if not counts:
        return []
    k = min(s for s, _ in counts)
    table = np.array([[asr_at_n(k, min(c, k), n) for n in range(1, k + 1)] for _, c in counts])  # (requests, k)
    rng = np.random.default_rng(seed)
    boot = table[rng.integers(0, len(table), size=(n_resamples, len(table)))].mean(axis=1)  # (resamples, k)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(boot, alpha, axis=0), np.quantile(boot, 1 - alpha, axis=0)
    return [{"attempts": n + 1, "requests": len(table), "estimate": float(table[:, n].mean()), "low": float(low[n]),
             "high": float(high[n]), "confidence": confidence, "method": f"bootstrap-{n_resamples}"}
            for n in range(k)]


def fit_power_law(x: Sequence[float], y: Sequence[float], confidence: float = 0.95) -> dict | None:
    """``y = prefactor * x ** exponent`` by least squares on log y against log x, with the
    exponent's t interval and R^2; None with fewer than three positive points."""
    pts = [(a, b) for a, b in zip(x, y) if a > 0 and b > 0 and np.isfinite(a) and np.isfinite(b)]
    if len(pts) < 3 or len({a for a, _ in pts}) < 2:
        return None
    lx, ly = np.log([a for a, _ in pts]), np.log([b for _, b in pts])
    fit = stats.linregress(lx, ly)
    t = stats.t.ppf(1 - (1 - confidence) / 2, len(pts) - 2) if len(pts) > 2 else float("inf")
    return {"exponent": float(fit.slope), "low": float(fit.slope - t * fit.stderr),
            "high": float(fit.slope + t * fit.stderr), "prefactor": float(np.exp(fit.intercept)),
            "r2": float(fit.rvalue ** 2), "points": len(pts), "confidence": confidence}
