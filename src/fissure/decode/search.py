"""Batched generation for every causal model: greedy, sampling and beam search.

Prompts are left-padded into one batch; the prompt is run once (prefill) into the model's KV
cache, then one token per step. Greedy and beam search reproduce HF ``generate`` token for
token; a row's output never depends on the other rows in its batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import GenerationError
from .config import Decoding
from .processors import process, sample, seen_mask

NEG_INF = -1.0e9


@dataclass
class GenerationOutput:
    sequences: list[list[int]]  # new tokens per prompt, eos included when it was produced (as HF)
    finish_reasons: list[str]  # "eos" | "stop" | "length"


def truncate_at_stop(text: str, stops: list[str]) -> str:
    """Cut ``text`` before the first occurrence of any stop string."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]


def _check(model, prompts: list[list[int]], decoding: Decoding) -> None:
    limit = model.max_positions
    for p in prompts:
        if not p:
            raise GenerationError("empty prompt: generation needs at least one token (prepend BOS/EOS)")
        if len(p) > limit or len(p) + decoding.max_new_tokens > limit:
            raise GenerationError(f"prompt ({len(p)} tokens) + max_new_tokens ({decoding.max_new_tokens}) "
                                  f"exceeds the model's context of {limit} tokens")


def _left_pad(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[row, width - len(p):] = 1
    return ids, (None if bool(mask.all()) else mask)


class _StopChecker:
    """Finds stop strings in the tail of each row's new text (decoding only the last few tokens)."""

    def __init__(self, stops: list[str], decode_fn: Callable[[list[int]], str] | None):
        self.stops = [s for s in stops if s]
        self.decode_fn = decode_fn
        self.tail = 4 * max((len(s) for s in self.stops), default=0) + 4  # byte tokens: 4 per character

    def __call__(self, tokens: list[int]) -> bool:
        if not self.stops or self.decode_fn is None:
            return False
        text = self.decode_fn(tokens[-self.tail:])
        return any(s in text for s in self.stops)


@torch.inference_mode()
def generate(model, prompts: list[list[int]], decoding: Decoding | None = None, *, eos_token_id: int | None = None,
             pad_token_id: int = 0, decode_fn: Callable[[list[int]], str] | None = None,
             on_token: Callable[[int, int], None] | None = None) -> GenerationOutput:
    """Continue each prompt (a list of token ids) under ``decoding``.

    ``decode_fn`` turns token ids into text (needed for stop strings); ``on_token(row, token)``
    is called as each token is produced, for streaming.
    """
    decoding = decoding or Decoding()
    eos = decoding.eos_token_id if decoding.eos_token_id is not None else eos_token_id
    pad = decoding.pad_token_id if decoding.pad_token_id is not None else pad_token_id
    _check(model, prompts, decoding)
    if decoding.num_beams > 1:
        return _beam_search(model, prompts, decoding, eos, pad)
    return _greedy_or_sample(model, prompts, decoding, eos, pad, _StopChecker(decoding.stop, decode_fn), on_token)


def _greedy_or_sample(model, prompts, decoding: Decoding, eos, pad, stop: _StopChecker, on_token):
    ids, mask = _left_pad(prompts, pad)
    B, L = ids.shape
    total = L + decoding.max_new_tokens
    cache = model.new_kv_cache(B, total)
    full_mask = None
    if mask is not None:
        full_mask = torch.ones(B, total, dtype=torch.long)
        full_mask[:, :L] = mask
    generator = torch.Generator().manual_seed(decoding.seed) if decoding.sampling and decoding.seed is not None else None
    seen = None
    if decoding.repetition_penalty != 1.0:
        seen = seen_mask(ids, _vocab_size(model), mask)
    new_tokens = [[] for _ in range(B)]
    reasons = ["length"] * B
    alive = torch.ones(B, dtype=torch.bool)
    alive_rows = [True] * B
    step_input, cur = ids, L
    for _ in range(decoding.max_new_tokens):
        logits = model(step_input, attention_mask=None if full_mask is None else full_mask[:, :cur], kv_cache=cache)
        scores = process(logits[:, -1, :].float(), decoding, seen)
        if decoding.sampling:
            nxt = sample(scores, generator)
        else:
            nxt = scores.argmax(dim=-1)
        nxt = torch.where(alive, nxt, torch.full_like(nxt, pad))
        if seen is not None:
            seen[torch.arange(B), nxt] |= alive
        for row, tok in enumerate(nxt.tolist()):
            if not alive_rows[row]:
                continue
            new_tokens[row].append(tok)
            if on_token is not None:
                on_token(row, tok)
            if tok == eos:
                alive_rows[row], reasons[row] = False, "eos"
            elif stop.stops and stop(new_tokens[row]):
                alive_rows[row], reasons[row] = False, "stop"
        if not any(alive_rows):
            break
        alive = torch.tensor(alive_rows)
        step_input, cur = nxt[:, None], cur + 1
    return GenerationOutput(new_tokens, reasons)


def _vocab_size(model) -> int:
    return model.config.vocab_size


def _beam_search(model, prompts, decoding: Decoding, eos, pad) -> GenerationOutput:
    """HF's vectorised beam search (transformers >= 4.50 ``_beam_search``), step for step."""
    nb, lp, early = decoding.num_beams, decoding.length_penalty, decoding.early_stopping
    ids, mask = _left_pad(prompts, pad)
    B, L = ids.shape
    max_length = L + decoding.max_new_tokens
    keep = 2 * nb  # HF: max(2, 1 + n_eos) * num_beams
    top_nb = torch.cat([torch.ones(nb, dtype=torch.bool), torch.zeros(keep - nb, dtype=torch.bool)])

    flat_ids = ids.repeat_interleave(nb, dim=0)
    full_mask = None
    if mask is not None:
        full_mask = torch.ones(B * nb, max_length, dtype=torch.long)
        full_mask[:, :L] = mask.repeat_interleave(nb, dim=0)
    cache = model.new_kv_cache(B * nb, max_length)
    seen = seen_mask(flat_ids, _vocab_size(model), None if mask is None else full_mask[:, :L]) \
        if decoding.repetition_penalty != 1.0 else None

    running = torch.full((B, nb, max_length), pad, dtype=torch.long)
    running[:, :, :L] = flat_ids.view(B, nb, L)
    finished_seqs = running.clone()
    running_scores = torch.zeros(B, nb)
    running_scores[:, 1:] = NEG_INF
    finished_scores = torch.full((B, nb), NEG_INF)
    is_finished = torch.zeros(B, nb, dtype=torch.bool)
    improvable = torch.ones(B, 1, dtype=torch.bool)
    batch_offset = (torch.arange(B) * nb)[:, None]

    step_input, cur = flat_ids, L
    while True:
        logits = model(step_input, attention_mask=None if full_mask is None else full_mask[:, :cur], kv_cache=cache)
        log_probs = torch.log_softmax(logits[:, -1, :].float(), dim=-1)
        log_probs = process(log_probs, decoding, seen)
        V = log_probs.shape[-1]
        acc = (log_probs.view(B, nb, V) + running_scores[:, :, None]).view(B, nb * V)
        topk_scores, topk_idx = torch.topk(acc, keep)
        src_beam = topk_idx // V
        tokens = topk_idx % V
        cand = running.gather(1, src_beam[:, :, None].expand(B, keep, max_length)).clone()
        cand[:, :, cur] = tokens
        hits = torch.zeros(B, keep, dtype=torch.bool) if eos is None else tokens == eos
        if cur + 1 >= max_length:
            hits = torch.ones_like(hits)

        # the best unfinished candidates keep running
        run_scores = topk_scores + hits.float() * NEG_INF
        nxt = torch.topk(run_scores, nb)[1]
        running = cand.gather(1, nxt[:, :, None].expand(B, nb, max_length))
        running_scores = run_scores.gather(1, nxt)
        beam_idx = (src_beam.gather(1, nxt) + batch_offset).view(-1)

        # finished candidates among the top num_beams join the hypotheses if they beat them
        just_done = hits & top_nb[None, :]
        done_scores = topk_scores / ((cur + 1 - L) ** lp)
        full = is_finished.all(dim=-1, keepdim=True) & (early is True)
        done_scores = done_scores + full.float() * NEG_INF + (~improvable).float() * NEG_INF + (~just_done).float() * NEG_INF
        merged_seqs = torch.cat([finished_seqs, cand], dim=1)
        merged_scores = torch.cat([finished_scores, done_scores], dim=1)
        merged_done = torch.cat([is_finished, just_done], dim=1)
        best = torch.topk(merged_scores, nb)[1]
        finished_seqs = merged_seqs.gather(1, best[:, :, None].expand(B, nb, max_length))
        finished_scores = merged_scores.gather(1, best)
        is_finished = merged_done.gather(1, best)

        cache.reorder(beam_idx)
        if seen is not None:
            seen = seen.index_select(0, beam_idx)
            seen[torch.arange(B * nb), running[:, :, cur].reshape(-1)] = True
        if full_mask is not None:
            full_mask = full_mask.index_select(0, beam_idx)
        cur += 1

        hyp_len = (max_length - L) if (early == "never" and lp > 0) else (cur - L)
        best_possible = running_scores[:, :1] / (hyp_len ** lp)
        worst_done = torch.where(is_finished, finished_scores.min(dim=1, keepdim=True)[0], torch.tensor(NEG_INF))
        improvable = improvable & (best_possible > worst_done).any(dim=-1, keepdim=True)
        open_beams = not (bool(is_finished.all()) and early is True)
        if not (bool(improvable.any()) and open_beams and not bool(hits.all())):
            break
        step_input = running[:, :, cur - 1].reshape(-1, 1)

    sequences, reasons = [], []
    for b in range(B):
        new = finished_seqs[b, 0, L:].tolist()
        if eos is not None and eos in new:
            new = new[: new.index(eos) + 1]
            reasons.append("eos")
        else:
            reasons.append("length")
        sequences.append(new)
    return GenerationOutput(sequences, reasons)
