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
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch

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
