"""Logits processors with HF's semantics (``transformers.generation.logits_process``), as plain
functions on ``scores`` of shape ``(batch, vocab)``.

The repetition penalty takes a boolean ``seen`` mask ``(batch, vocab)`` instead of the token
history: the same result as HF's gather/scatter over ``input_ids``, but padding is never
penalised and the mask is updated in O(batch) per step.
"""

from __future__ import annotations

import torch

from .config import Decoding


def seen_mask(input_ids: torch.Tensor, vocab_size: int, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, V)`` True where a token occurs in a row (ignoring padded positions)."""
    weight = torch.ones_like(input_ids) if attention_mask is None else attention_mask.long()
    counts = torch.zeros(input_ids.shape[0], vocab_size, dtype=torch.long, device=input_ids.device)
    return counts.scatter_add_(1, input_ids, weight) > 0


def repetition_penalty(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty: divide positive scores of seen tokens by ``penalty``, multiply negative ones."""
    penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalised, scores)


def temperature(scores: torch.Tensor, t: float) -> torch.Tensor:
    return scores / t


def top_k(scores: torch.Tensor, k: int, filter_value: float = -float("inf")) -> torch.Tensor:
    """Keep the ``k`` highest scores (ties with the k-th are kept, as HF)."""
    k = min(k, scores.size(-1))
    kth = torch.topk(scores, k)[0][..., -1, None]
    return scores.masked_fill(scores < kth, filter_value)


def top_p(scores: torch.Tensor, p: float, min_tokens_to_keep: int = 1,
          filter_value: float = -float("inf"), candidates: int = 128) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of tokens whose probability mass reaches ``p``.

    HF sorts the whole vocabulary; the nucleus is usually a few dozen tokens, so we first try the
    ``candidates`` most likely ones and sort everything only when they do not reach ``p``. A token
    is kept when the mass of the tokens strictly more likely than it is below ``p``, which is
    HF's rule (drop where the ascending cumulative mass is <= 1 - p) read from the other end.
    """
    k = min(candidates, scores.size(-1))
    if k < scores.size(-1):
        values, index = torch.topk(scores, k)
        probs = (values - scores.logsumexp(dim=-1, keepdim=True)).exp()
        mass = probs.cumsum(dim=-1)
        if bool((mass[:, -1] > p).all()):
            keep = (mass - probs) < p
            keep[:, :min_tokens_to_keep] = True
            kept = torch.full_like(scores, filter_value).scatter(1, index, torch.where(keep, values, filter_value))
            return kept
    sorted_logits, sorted_idx = torch.sort(scores, descending=False)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cum <= (1 - p)
    remove_sorted[..., -min_tokens_to_keep:] = False
    remove = remove_sorted.scatter(1, sorted_idx, remove_sorted)
    return scores.masked_fill(remove, filter_value)


def sample(scores: torch.Tensor, generator: torch.Generator | None, candidates: int = 128) -> torch.Tensor:
    """One token per row from ``softmax(scores)``. When top-k/top-p left at most ``candidates``
    tokens per row, sample among those only (same distribution, far less work than the full vocabulary)."""
    k = min(candidates, scores.size(-1))
    if k < scores.size(-1) and int(torch.isfinite(scores).sum(dim=-1).max()) <= k:
        values, index = torch.topk(scores, k)
        return index.gather(1, torch.multinomial(values.softmax(dim=-1), 1, generator=generator))[:, 0]
    return torch.multinomial(scores.softmax(dim=-1), 1, generator=generator)[:, 0]


def process(scores: torch.Tensor, decoding: Decoding, seen: torch.Tensor | None) -> torch.Tensor:
    """All processors in HF's order: repetition penalty, then (when sampling) temperature, top-k, top-p."""
    if decoding.repetition_penalty != 1.0 and seen is not None:
        scores = repetition_penalty(scores, seen, decoding.repetition_penalty)
    if decoding.sampling:
        if decoding.temperature != 1.0:
            scores = temperature(scores, decoding.temperature)
        if decoding.top_k:
            scores = top_k(scores, decoding.top_k)
        if decoding.top_p < 1.0:
            scores = top_p(scores, decoding.top_p)
    return scores
