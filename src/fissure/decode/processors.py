"""Logits processors with HF's names and semantics (``transformers.generation.logits_process``).

Each is a small callable ``(input_ids (B, T), scores (B, V)) -> scores`` that returns a new
tensor. One deliberate difference: :class:`RepetitionPenaltyLogitsProcessor` ignores negative
ids, which :func:`~fissure.decode.search.generate` puts at left-padding positions, so a row's
penalty never depends on the other prompts in its batch (HF penalises the pad token there).

:func:`sample` draws from ``softmax(scores)``; :func:`sample_top_p` draws from the top-p
distribution without sorting the vocabulary, which is where most of HF's sampling time goes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .config import Decoding

Processor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TemperatureLogitsWarper:
    def __init__(self, temperature: float):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, not {temperature}")
        self.temperature = temperature

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores / self.temperature


class TopKLogitsWarper:
    """Keep the ``top_k`` highest scores (ties with the k-th are kept, as HF)."""

    def __init__(self, top_k: int, filter_value: float = -float("inf"), min_tokens_to_keep: int = 1):
        if top_k < 1:
            raise ValueError(f"top_k must be a positive integer, not {top_k}")
        self.top_k = max(top_k, min_tokens_to_keep)
        self.filter_value = filter_value

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        k = min(self.top_k, scores.size(-1))
        kth = torch.topk(scores, k)[0][..., -1, None]
        return scores.masked_fill(scores < kth, self.filter_value)


class TopPLogitsWarper:
    """Nucleus filtering: drop the least likely tokens whose total probability is at most ``1 - top_p``."""

    def __init__(self, top_p: float, filter_value: float = -float("inf"), min_tokens_to_keep: int = 1):
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {top_p}")
        if min_tokens_to_keep < 1:
            raise ValueError(f"min_tokens_to_keep must be >= 1, not {min_tokens_to_keep}")
        self.top_p, self.filter_value, self.min_tokens_to_keep = top_p, filter_value, min_tokens_to_keep

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        sorted_logits, sorted_idx = torch.sort(scores, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative <= (1 - self.top_p)
        remove_sorted[..., -self.min_tokens_to_keep:] = False
        remove = remove_sorted.scatter(1, sorted_idx, remove_sorted)
        return scores.masked_fill(remove, self.filter_value)


class RepetitionPenaltyLogitsProcessor:
    """CTRL's penalty on every token already in ``input_ids``: positive scores are divided by
    ``penalty``, negative ones multiplied. Negative ids (padding) are not tokens and are skipped."""

    def __init__(self, penalty: float):
        if not penalty > 0:
            raise ValueError(f"repetition penalty must be > 0, not {penalty}")
        self.penalty = penalty

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        # count occurrences instead of HF's gather/scatter, so padding can carry weight 0
        counts = torch.zeros(scores.shape, dtype=torch.int32, device=scores.device)
        counts.scatter_add_(1, input_ids.clamp(min=0), (input_ids >= 0).int())
        penalised = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return torch.where(counts > 0, penalised, scores)


def build_processors(decoding: Decoding, *, top_p: bool = True) -> list[Processor]:
    """The processors ``decoding`` asks for, in HF's order: repetition penalty, then (only when
    sampling) temperature, top-k, top-p. ``top_p=False`` leaves the last out for callers that
    sample with :func:`sample_top_p` instead."""
    processors: list[Processor] = []
    if decoding.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(decoding.repetition_penalty))
    if decoding.sampling:
        if decoding.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(decoding.temperature))
        if decoding.top_k:
            processors.append(TopKLogitsWarper(decoding.top_k))
        if decoding.top_p < 1.0 and top_p:
            processors.append(TopPLogitsWarper(decoding.top_p))
    return processors


BLOCK = 256  # tokens per block of the two-level inverse CDF


def _below(t: torch.Tensor) -> torch.Tensor:
    """The next float toward zero from each entry of ``t``: just under it, for the positive sums here."""
    return torch.nextafter(t, torch.zeros_like(t))


def _inverse_cdf(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row of ``probs`` (B, V), with probability proportional to its entries
    (non-negative; zero entries are never drawn).

    Inverse-CDF sampling in two levels: one uniform number per row picks a block of ``BLOCK``
    tokens by the blocks' sums, then a token inside that block; both running sums are in float64.
    One pass over the vocabulary (the block sums, each summed in float32: a relative error of about
    1e-7 in a block's probability) instead of a float64 running sum of all of it, which at a batch
    of 32 and SmolLM2's 49,152 tokens is a 12.6 MB tensor made afresh every step.
    """
    B, V = probs.shape
    n_full, tail = divmod(V, BLOCK)
    sums = torch.empty(B, n_full + (tail > 0), dtype=torch.float64, device=probs.device)
    if n_full:
        sums[:, :n_full] = probs[:, :n_full * BLOCK].unflatten(1, (n_full, BLOCK)).sum(-1)
    if tail:
        sums[:, -1] = probs[:, n_full * BLOCK:].sum(-1)
    cdf = sums.cumsum(-1)
    u = torch.minimum(torch.rand((B, 1), generator=generator, device=probs.device, dtype=torch.float64)
                      * cdf[:, -1:], _below(cdf[:, -1:]))
    # right=True returns the first index whose cdf exceeds u: never a block (or token) of zero mass
    block = torch.searchsorted(cdf, u, right=True)
    u = u - torch.where(block > 0, cdf.gather(1, (block - 1).clamp(min=0)), 0.0)
    idx = block * BLOCK + torch.arange(BLOCK, device=probs.device)
    inside = probs.gather(1, idx.clamp(max=V - 1)).double() * (idx < V)
    inside_cdf = inside.cumsum(-1)
    u = torch.minimum(u, _below(inside_cdf[:, -1:]))  # the two sums of a block may differ in the last bit
    return (block * BLOCK + torch.searchsorted(inside_cdf, u, right=True))[:, 0]


def sample(scores: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from ``softmax(scores)`` (``-inf`` scores are never drawn).

    Inverse-CDF sampling over the vocabulary in id order (:func:`_inverse_cdf`): one uniform
    number per row, against the ``V`` exponentials that ``torch.multinomial`` draws on CPU.
    """
    return _inverse_cdf(scores.float().softmax(dim=-1), generator)


def sample_top_p(scores: torch.Tensor, top_p: float, generator: torch.Generator | None = None,
                 max_rounds: int = 8) -> torch.Tensor:
    """One token per row from the distribution that :class:`TopPLogitsWarper` leaves.

    Rejection sampling: draw from ``softmax(scores)`` and accept a token if it is in the nucleus,
    i.e. the tokens more likely than it hold less than ``top_p`` of the mass (HF's rule read from
    the likely end; the most likely token always passes). Accepted draws follow the nucleus
    distribution exactly; each draw is accepted with probability >= ``top_p``. Rows still
    rejected after ``max_rounds`` fall back to the sorting warper.
    """
    probs = scores.float().softmax(dim=-1)
    out = torch.empty(scores.shape[0], dtype=torch.long, device=scores.device)
    rows = torch.arange(scores.shape[0], device=scores.device)
    p = probs  # the rows still to draw
    for _ in range(max_rounds):
        tok = _inverse_cdf(p, generator)
        # the mass of the tokens more likely than the draw (where, not p * mask: a float-bool product
        # takes a slow casting path, ~7 ms a step at batch 32 x 49,152 on one thread against ~1)
        above = torch.where(p > p.gather(1, tok[:, None]), p, 0.0).sum(dim=-1)
        ok = above < top_p
        if bool(ok.all()):
            out[rows] = tok
            return out
        out[rows[ok]] = tok[ok]
        rows = rows[~ok]
        p = probs[rows]
    out[rows] = sample(TopPLogitsWarper(top_p)(None, scores[rows]), generator)
    return out
