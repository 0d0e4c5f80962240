"""Token cross-entropy, perplexity and bits per byte of texts, with explicit window and stride.

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
Bits per byte divide by the UTF-8 bytes of the whole text, which makes models with different
tokenizers comparable.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from .. import __version__
from ..errors import ConfigError, DataError
from .stats import Interval, bootstrap_interval


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


def _score_sequences(model, seqs: Sequence[Sequence[int]], window: int, stride: int, batch_size: int,
                     progress: bool = False) -> list[tuple[float, int]]:
    """``(loglikelihood_nats, n_scored)`` of ``seq[1:]`` for each sequence, windows batched across all."""
    _check_window(window, stride)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, not {batch_size}")
    max_positions = getattr(model, "max_positions", None)
    if max_positions is not None and window > max_positions:
        raise ConfigError(f"window {window} exceeds the model's context of {max_positions} tokens")
    jobs = [(doc, start, end, n) for doc, seq in enumerate(seqs)
            for start, end, n in rolling_windows(len(seq), window, stride)]
    # Longest windows first so a batch pads little. Windows are right padded: with causal
    # attention the pads come after every real token and cannot change its logits.
    order = sorted(range(len(jobs)), key=lambda j: jobs[j][1] - jobs[j][2])
    window_ll = [0.0] * len(jobs)
    device = _device(model)
    with torch.inference_mode(), _eval_mode(model), \
            tqdm(total=len(jobs), unit="window", file=sys.stderr, disable=not progress) as bar:
        for i in range(0, len(order), batch_size):
            batch = [jobs[j] for j in order[i:i + batch_size]]
            width = max(end - 1 - start for _, start, end, _ in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (doc, start, end, _) in enumerate(batch):
                ids[row, :end - 1 - start] = torch.tensor(seqs[doc][start:end - 1], dtype=torch.long)
            logits = model(ids.to(device))
            for row, (doc, start, end, n) in enumerate(batch):
                length = end - 1 - start
                logprobs = logits[row, length - n:length].float().log_softmax(-1)
                targets = torch.tensor(seqs[doc][end - n:end], dtype=torch.long, device=logprobs.device)
                picked = logprobs.gather(-1, targets[:, None])
                window_ll[order[i + row]] = float(picked.cpu().sum(dtype=torch.float64))  # MPS lacks float64
            bar.update(len(batch))
    results = [[0.0, 0] for _ in seqs]
    for (doc, _, _, n), ll in zip(jobs, window_ll):  # window order within each document
        results[doc][0] += ll
        results[doc][1] += n
    return [(ll, n) for ll, n in results]


def _with_prefix(token_ids: Sequence[int], prefix_token: int | None) -> list[int]:
    return ([prefix_token] if prefix_token is not None else []) + list(token_ids)


def score_tokens(model, token_ids: Sequence[int], window: int, stride: int, prefix_token: int | None = None,
                 batch_size: int = 8) -> tuple[float, int]:
    """Log-likelihood (nats) of ``token_ids`` under ``model`` and the number of tokens scored.

    With ``prefix_token`` every token is scored (``len(token_ids)``); without, the first token
    is context only (``len(token_ids) - 1``).
    """
    return _score_sequences(model, [_with_prefix(token_ids, prefix_token)], window, stride, batch_size)[0]


@dataclass(frozen=True)
class RollingResult:
    """A summed log-likelihood with the counts that turn it into per-token and per-byte rates."""

    loglikelihood: float  # nats, summed over scored tokens
    tokens: int  # tokens scored
    bytes: int  # UTF-8 bytes of the text(s)
    window: int
    stride: int
    prefix_token: int | None = None
    tokenizer: str = "unknown"

    @property
    def cross_entropy(self) -> float:
        """Nats per scored token."""
        return -self.loglikelihood / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.cross_entropy)

    @property
    def bits_per_byte(self) -> float:
        return -self.loglikelihood / (self.bytes * math.log(2))

    @property
    def signature(self) -> str:
        prefix = "none" if self.prefix_token is None else str(self.prefix_token)
        return (f"window={self.window}|stride={self.stride}|prefix={prefix}|tok={self.tokenizer}"
                f"|fissure={__version__}")

    def to_dict(self) -> dict:
        return {"perplexity": self.perplexity, "bits_per_byte": self.bits_per_byte,
                "cross_entropy": self.cross_entropy, "loglikelihood": self.loglikelihood,
                "tokens": self.tokens, "bytes": self.bytes, "window": self.window, "stride": self.stride,
                "signature": self.signature}


def ratio_interval(numerators: Sequence[float], denominators: Sequence[float],
                   transform: Callable[[float], float] = float, confidence: float = 0.95,
                   n_resamples: int = 1000, seed: int = 0) -> Interval:
    """Percentile bootstrap of ``transform(sum(numerators) / sum(denominators))``.

    Pairs are resampled together (documents, not tokens, are the independent units), and the
    ratio of sums is recomputed on each resample, as the corpus-level metric is.
    """
    num = np.asarray(numerators, dtype=np.float64)
    den = np.asarray(denominators, dtype=np.float64)

    def statistic(index: np.ndarray) -> float:
        rows = index.astype(np.intp)
        return transform(num[rows].sum() / den[rows].sum())

    return bootstrap_interval(np.arange(num.size), statistic, confidence=confidence,
                              n_resamples=n_resamples, seed=seed)


def evaluate_texts(model, encode: Callable[[str], list[int]], texts: Sequence[str], window: int, stride: int,
                   prefix_token: int | None = None, batch_size: int = 8, confidence: float = 0.95,
                   progress: bool = False, tokenizer: str = "unknown") -> dict:
    """Corpus perplexity, bits per byte and cross-entropy of ``texts`` (sum of log-likelihoods
    over sum of tokens or bytes), with bootstrap intervals over documents.

    The intervals (``perplexity_ci``, ``bits_per_byte_ci``; ``None`` with fewer than two scored
    documents) resample the documents that have at least one scored token. Without a
    ``prefix_token`` each text's first token is unscored but its bytes still count, so bits per
    byte come out slightly low: pass the tokenizer's EOS/BOS to score every byte.
    """
    if not texts:
        raise DataError("no texts to score")
    seqs = [_with_prefix(encode(text), prefix_token) for text in texts]
    scores = _score_sequences(model, seqs, window, stride, batch_size, progress=progress)
    return summarise_scores([s[0] for s in scores], [s[1] for s in scores],
                            [len(text.encode("utf-8")) for text in texts], window, stride,
                            prefix_token=prefix_token, tokenizer=tokenizer, confidence=confidence)


def summarise_scores(loglikelihoods: Sequence[float], tokens: Sequence[int], nbytes: Sequence[int], window: int,
                     stride: int, prefix_token: int | None = None, tokenizer: str = "unknown",
                     confidence: float = 0.95) -> dict:
    """Corpus metrics from per-document (log-likelihood, scored tokens, bytes), with bootstrap
    intervals over documents; what :func:`evaluate_texts` returns, for scores from any backend."""
    ll = np.asarray(loglikelihoods, dtype=np.float64)
    tokens = np.asarray(tokens, dtype=np.int64)
    nbytes = np.asarray(nbytes, dtype=np.int64)
    if tokens.sum() == 0:
        raise DataError("no tokens to score: the texts are empty (or one token each and no prefix token)")
    total = RollingResult(float(ll.sum()), int(tokens.sum()), int(nbytes.sum()), window, stride,
                          prefix_token, tokenizer)
    result = total.to_dict()
    result["documents"] = len(ll)
    result["perplexity_ci"] = result["bits_per_byte_ci"] = None
    scored = tokens > 0
    if scored.sum() >= 2:
        nll = -ll[scored]
        result["perplexity_ci"] = ratio_interval(nll, tokens[scored], math.exp, confidence).as_dict()
        result["bits_per_byte_ci"] = ratio_interval(nll, nbytes[scored] * math.log(2), float,
                                                    confidence).as_dict()
    return result
