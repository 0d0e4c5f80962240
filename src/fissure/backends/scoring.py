"""Scoring text with a torch model: rolling-window log-likelihoods with explicit window and stride.

Semantics follow lm-evaluation-harness's ``loglikelihood_rolling`` (``get_rolling_token_windows``),
which is HF's "perplexity of fixed-length models" strided recipe, scoring every token once:

- ``window`` is how many tokens the model reads at once (at most ``model.max_positions``).
- The first window reads ``window`` tokens and scores the ``window`` tokens they predict. Every
  later window scores the next ``stride`` tokens (fewer at the end) and reads the ``window``
  tokens before the last of them, so a scored token sees at least ``window - stride + 1`` tokens
  of context. ``stride == window`` gives lm-eval's default disjoint windows. (HF's recipe with
  ``max_length = window + 1`` and the same stride gives the same windows, except that it
  shortens the last one where lm-eval, and we, keep its full context.)
- With a ``prefix_token`` (the tokenizer's EOS/BOS, as lm-eval does) the first token of the text
  is scored too; without one the first token is context only.

Log-probabilities come from float32 logits and are summed in float64 per window, in a fixed
order, so ``batch_size`` changes results at most by float32 rounding (padding shorter windows
changes kernel shapes; about 1e-9 relative measured), never by which tokens see which context.
This is the code that runs a model; :mod:`fissure.metrics.lm` turns its scores into rates.

Continuations after a context (:func:`score_continuations`, what ``loglikelihood`` asks) run each
distinct context once into a KV cache, batched and left-padded, and then only the continuations'
own tokens; the start that every context shares (a probe suite's system prompt) runs once per
batch, for one row, copied to every row.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from contextlib import contextmanager

import torch

from ..decode.search import MIN_SHARED, shared_prefix
from ..errors import ConfigError


def _check_window(window: int, stride: int) -> None:
    if window < 1:
        raise ConfigError(f"window must be at least 1 token, not {window}")
    if not 0 < stride <= window:
        raise ConfigError(f"stride must satisfy 0 < stride <= window ({window}), not {stride}")


def rolling_windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows ``(ctx_start, end, n_scored)`` over a sequence of ``n_tokens`` tokens.

    A window covers ``seq[ctx_start:end]``: the model reads all of it but its last token
    (at most ``window`` tokens) and scores its last ``n_scored`` tokens. Together the windows
    score ``seq[1:]`` exactly once; ``seq[0]`` (the prefix token, or the text's first token)
    is context only.
    """
    _check_window(window, stride)
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be non-negative, not {n_tokens}")
    n_targets = max(n_tokens - 1, 0)
    windows: list[tuple[int, int, int]] = []
    scored = 0
    while scored < n_targets:
        n = min(stride if windows else window, n_targets - scored)
        end = 1 + scored + n
        windows.append((max(0, end - 1 - window), end, n))
        scored += n
    return windows


@contextmanager
def _eval_mode(model):
    """Dropout off while scoring; the caller's train/eval mode is restored afterwards."""
    training = getattr(model, "training", False)
    if training:
        model.eval()
    try:
        yield
    finally:
        if training:
            model.train()


def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def pad_right(seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of right-padded rows (pad id 0). With causal attention pads
    after every real token cannot change its logits, and real tokens keep positions 0..n-1."""
    width = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, :len(seq)] = 1
    return ids, mask


def pad_left(seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token ids of left-padded rows (pad id 0) and the attention mask (``None``: no padding), so
    every row's last token sits in the last column."""
    width = max(len(s) for s in seqs)
    ids = torch.tensor([[0] * (width - len(s)) + list(s) for s in seqs], dtype=torch.long)
    if all(len(s) == width for s in seqs):
        return ids, None
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], dtype=torch.long)
    return ids, mask


MAX_EXTENSION = 32  # a context this much longer than another it extends runs as that one's continuation
PACK_LIMIT = 512  # at most this many continuation tokens packed in one row after a context


def score_continuations(model, requests: Sequence[tuple[Sequence[int], int]],
                        batch_size: int = 8) -> list[tuple[float, bool]]:
    """``(log-likelihood, greedy)`` of each request's last ``n`` tokens after the tokens before them,
    for ``(tokens, n)`` requests, on a model with a KV cache (``new_kv_cache``, ``reorder``).

    Contexts run once each; a context that extends another (a prompt plus a forced reply start,
    beside the prompt alone) runs as a continuation of it. Requests on one context read its last
    logits and run only their own tokens after it. ``batch_size`` contexts run together, left-padded
    behind the tokens every context starts with (run once per batch for one row, then copied to
    each); then the continuations, right-padded (causal attention hides what follows a token)."""
    contexts = {tuple(seq[:-n]) for seq, n in requests}
    roots = _roots(contexts)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (seq, n) in enumerate(requests):
        groups.setdefault(roots[tuple(seq[:-n])], []).append(i)
    order = sorted(groups, key=len)  # similar lengths together: little padding
    shared = shared_prefix(order) if len(order) > 1 else 0
    shared = shared if shared >= MIN_SHARED else 0
    device = _device(model)
    out: list[tuple[float, bool] | None] = [None] * len(requests)
    with torch.inference_mode(), _eval_mode(model):
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            members = [(row, i) for row, ctx in enumerate(batch) for i in groups[ctx]]
            rest = {i: list(requests[i][0][len(batch[row]):]) for row, i in members}  # after the run context
            scored = [(row, rest[i], requests[i][1]) for row, i in members]
            room, packed = max(len(rest[i]) - 1 for _, i in members), packed_width(scored)  # for the continuations
            room = max(room, packed) if packed <= PACK_LIMIT else room
            cache = model.new_kv_cache(1 if shared else len(batch), max(len(c) for c in batch) + room)
            if shared:
                model(torch.tensor([batch[0][:shared]], device=device), kv_cache=cache, logits_to_keep=1)
                cache.reorder(torch.zeros(len(batch), dtype=torch.long, device=device))
            ids, mask = pad_left([c[shared:] for c in batch])
            if mask is not None and shared:
                mask = torch.cat([mask.new_ones(len(batch), shared), mask], dim=1)
            mask = None if mask is None else mask.to(device)
            last = model(ids.to(device), attention_mask=mask, kv_cache=cache, logits_to_keep=1)[:, -1]
            for (_, i), result in zip(members, score_after(model, cache, mask, last, scored)):
                out[i] = result
    return out  # type: ignore[return-value]


def score_after(model, cache, mask: torch.Tensor | None, last: torch.Tensor,
                rows: Sequence[tuple[int, Sequence[int], int]]) -> list[tuple[float, bool]]:
    """``(log-likelihood, greedy)`` of each ``(row, tokens, n)``: the last ``n`` of ``tokens``, read
    after batch row ``row`` of a ``cache`` that holds contexts (their padding ``mask``, ``None``
    for none; ``last``: the next-token logits ``(B, V)`` after each). ``cache`` is left as it holds
    the contexts. A model that takes a 4-D mask (``packs_continuations``) reads every row's
    continuations in one pass, packed side by side after their context, each seeing the context
    and itself, where the cache has :func:`packed_width` free positions; another model (or a cache
    without the room) reads them from copies of the context rows."""
    long = [(row, k, list(tokens[:-1])) for k, (row, tokens, _) in enumerate(rows) if len(tokens) > 1]
    free = getattr(cache, "max_len", 0) - cache.length
    packs = getattr(model, "packs_continuations", False) and hasattr(cache, "crop") and packed_width(rows) <= free
    later = (_packed if packs else _copied)(model, cache, mask, long) if long else {}
    out = []
    for k, (row, tokens, n) in enumerate(rows):
        logits = last[row][None] if len(tokens) == 1 else torch.cat([last[row][None], later[k]])
        logprobs = logits[-n:].float().log_softmax(-1)  # the scored tokens only
        target = torch.tensor(list(tokens[-n:]), device=logprobs.device)
        chosen = logprobs.gather(-1, target[:, None])[:, 0]
        out.append((float(chosen.cpu().double().sum()), bool((logprobs.argmax(-1) == target).all())))
    return out


def packed_width(rows: Sequence[tuple[int, Sequence[int], int]]) -> int:
    """The cache positions :func:`score_after` packs a context row's continuations into (the most
    over the rows): every continuation's tokens but its last, side by side."""
    width: dict[int, int] = {}
    for row, tokens, _ in rows:
        width[row] = width.get(row, 0) + max(len(tokens) - 1, 0)
    return max(width.values(), default=0)


def _packed(model, cache, mask: torch.Tensor | None, long: list[tuple[int, int, list[int]]]) -> dict[int, torch.Tensor]:
    """The logits of each ``(row, k, inputs)`` from one pass: a row's inputs packed after its context,
    positions restarting at the context's end, a 4-D mask letting each see the context and itself."""
    device = _device(model)
    B, past = cache.batch_size, cache.length
    width = packed_width([(row, inputs + [0], 0) for row, _, inputs in long])
    ids = torch.zeros(B, width, dtype=torch.long)
    segment = torch.full((B, width), -1, dtype=torch.long)
    positions = torch.zeros(B, width, dtype=torch.long)
    ends = mask.sum(dim=1).cpu() if mask is not None else torch.full((B,), past)
    fill = [0] * B
    where = {}
    for j, (row, k, inputs) in enumerate(long):
        at, n = fill[row], len(inputs)
        ids[row, at:at + n] = torch.tensor(inputs)
        segment[row, at:at + n] = j
        positions[row, at:at + n] = ends[row] + torch.arange(n)
        where[k] = (row, at, n)
        fill[row] = at + n
    q = torch.arange(width)
    mine = (segment[:, :, None] == segment[:, None, :]) & (segment[:, :, None] >= 0) & (q[None, None, :] <= q[None, :, None])
    mine = mine | torch.eye(width, dtype=torch.bool)[None]  # a padding query sees itself: no empty row
    context = (mask.bool().cpu() if mask is not None else torch.ones(B, past, dtype=torch.bool))[:, None, :]
    full = torch.cat([context.expand(B, width, past), mine], dim=2)[:, None]
    logits = model(ids.to(device), attention_mask=full.to(device), position_ids=positions.to(device), kv_cache=cache)
    cache.crop(past)  # the cache holds the contexts again: what runs next overwrites the rest
    return {k: logits[row, at:at + n] for k, (row, at, n) in where.items()}


def _copied(model, cache, mask: torch.Tensor | None, long: list[tuple[int, int, list[int]]]) -> dict[int, torch.Tensor]:
    """The logits of each ``(row, k, inputs)``: a row each, right-padded, in passes of similar widths
    (little padding), each from a copy of the context rows (the cache is not changed)."""
    device = _device(model)
    inputs = {k: x for _, k, x in long}
    later: dict[int, torch.Tensor] = {}
    for part in _by_width([(row, k, len(x)) for row, k, x in long]):
        index = torch.tensor([row for row, _ in part], device=device)
        copied = copy.copy(cache)
        copied.reorder(index)
        ids, _ = pad_right([inputs[k] for _, k in part])
        part_mask = None if mask is None else torch.cat(
            [mask.index_select(0, index), mask.new_ones(len(part), ids.shape[1])], dim=1)
        logits = model(ids.to(device), attention_mask=part_mask, kv_cache=copied)
        later.update((k, logits[j, :len(inputs[k])]) for j, (_, k) in enumerate(part))
    return later


def _by_width(rows: list[tuple[int, int, int]]) -> list[list[tuple[int, int]]]:
    """``(row, request, width)`` in groups of widths within a power of two: 1-2, 3-4, 5-8, ..."""
    groups: dict[int, list[tuple[int, int]]] = {}
    for row, i, width in rows:
        groups.setdefault((width - 1).bit_length(), []).append((row, i))
    return [groups[k] for k in sorted(groups)]


def _roots(contexts: set[tuple[int, ...]]) -> dict[tuple[int, ...], tuple[int, ...]]:
    """The context each context runs as a continuation of: the shortest context that runs itself,
    is a prefix of it and at most :data:`MAX_EXTENSION` tokens shorter (itself where none is). In
    lexicographic order a context's prefixes come before it, each a prefix of the next: a stack."""
    roots: dict[tuple[int, ...], tuple[int, ...]] = {}
    chain: list[tuple[int, ...]] = []
    for ctx in sorted(contexts):
        while chain and ctx[:len(chain[-1])] != chain[-1]:
            chain.pop()
        roots[ctx] = next((r for r in chain if roots[r] == r and len(ctx) - len(r) <= MAX_EXTENSION), ctx)
        chain.append(ctx)
    return roots


def score_sequences(model, seqs: Sequence[Sequence[int]], window: int, stride: int,
                    batch_size: int = 8) -> list[tuple[float, int]]:
    """``(loglikelihood_nats, n_scored)`` of ``seq[1:]`` for each sequence, windows batched across all
    (``seq[0]`` is context only: start a sequence with the prefix token to score every token)."""
    _check_window(window, stride)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, not {batch_size}")
    max_positions = getattr(model, "max_positions", None)
    if max_positions is not None and window > max_positions:
        raise ConfigError(f"window {window} exceeds the model's context of {max_positions} tokens")
    jobs = [(doc, start, end, n) for doc, seq in enumerate(seqs)
            for start, end, n in rolling_windows(len(seq), window, stride)]
    # Windows of similar length together so a batch pads little (right padding, see pad_right).
    order = sorted(range(len(jobs)), key=lambda j: jobs[j][1] - jobs[j][2])
    window_ll = [0.0] * len(jobs)
    device = _device(model)
    with torch.inference_mode(), _eval_mode(model):
        for i in range(0, len(order), batch_size):
            batch = [jobs[j] for j in order[i:i + batch_size]]
            ids, _ = pad_right([seqs[doc][start:end - 1] for doc, start, end, _ in batch])
            logits = model(ids.to(device))
            for row, (doc, start, end, n) in enumerate(batch):
                length = end - 1 - start
                logprobs = logits[row, length - n:length].float().log_softmax(-1)
                targets = torch.tensor(seqs[doc][end - n:end], dtype=torch.long, device=logprobs.device)
                picked = logprobs.gather(-1, targets[:, None])
                window_ll[order[i + row]] = float(picked.cpu().sum(dtype=torch.float64))  # MPS lacks float64
    results = [[0.0, 0] for _ in seqs]
    for (doc, _, _, n), ll in zip(jobs, window_ll):  # window order within each document
        results[doc][0] += ll
        results[doc][1] += n
    return [(ll, n) for ll, n in results]
