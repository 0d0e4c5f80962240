"""Batched generation for every causal model: greedy, sampling and beam search.

Prompts are left-padded into one batch; the prompt runs once (prefill) into the model's KV
cache, then one token per step. Tokens that every prompt of a batch starts with (a probe suite's
system prompt) run once, for one row, and are copied to every row of the cache: the cache then
holds ``[shared][padding][own tokens]`` per row, the attention mask hides the padding and the
positions follow the mask, so each row sees what it would see alone. Greedy and beam search reproduce HF ``generate`` token for
token; a greedy row's output does not depend on the other rows in its batch. Rows that finish
leave the batch (their cache rows are dropped) once a quarter of it has finished.

Token buffers hold ``-1`` at left-padding positions: the processors skip them, and the model
sees ``pad_token_id`` there (masked out by the attention mask either way).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..errors import GenerationError
from .config import Decoding
from .processors import build_processors, sample, sample_top_p

NEG_INF = -1.0e9
MIN_SHARED = 8  # a common prompt start shorter than this runs in every row (not worth the extra pass)


@dataclass
class GenerationOutput:
    """New tokens per prompt, without padding. A row that produced an end token ends with it
    (HF returns it too, then pads); a row ended by a stop string keeps every token up to and
    including the one that completed it (cut the text with :func:`truncate_at_stop`)."""

    sequences: list[list[int]]
    finish_reasons: list[str]  # "eos" | "stop" | "length"


def truncate_at_stop(text: str, stops: list[str]) -> str:
    """Cut ``text`` before the first occurrence of any stop string."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]


def end_tokens(eos_token_id: int | Sequence[int] | None) -> tuple[int, ...]:
    """The end-of-sequence ids as a tuple: one id, several (HF's ``eos_token_id`` list: Llama 3's
    ``<|end_of_text|>`` and ``<|eot_id|>``) or none."""
    if eos_token_id is None:
        return ()
    return (eos_token_id,) if isinstance(eos_token_id, int) else tuple(eos_token_id)


def _check(model, prompts: list[list[int]], decoding: Decoding) -> None:
    limit = model.max_positions
    for p in prompts:
        if not p:
            raise GenerationError("empty prompt: generation needs at least one token (prepend BOS/EOS)")
        if len(p) + decoding.max_new_tokens > limit:
            raise GenerationError(f"prompt ({len(p)} tokens) + max_new_tokens ({decoding.max_new_tokens}) "
                                  f"exceeds the model's context of {limit} tokens")


def shared_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every prompt has in common, leaving each at least one of its own."""
    first, n = prompts[0], min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        n = next((i for i in range(n) if p[i] != first[i]), n)
    return max(n, 0)


def _prefill(model, prompts: list[list[int]], pad: int, max_len: int, device: torch.device):
    """A KV cache of ``max_len`` positions with the prompts run into it, the next-token logits
    ``(B, 1, V)`` and the cache's padding mask (``None``: no padding). A start shared by every
    prompt (:func:`shared_prefix`) runs once."""
    B = len(prompts)
    shared = shared_prefix(prompts) if B > 1 else 0
    if shared < MIN_SHARED:
        shared = 0
    cache = model.new_kv_cache(1 if shared else B, max_len)
    if shared:
        model(torch.tensor([prompts[0][:shared]], device=device), kv_cache=cache, logits_to_keep=1)
        cache.reorder(torch.zeros(B, dtype=torch.long, device=device))
    ids, mask = _left_pad([p[shared:] for p in prompts], device)
    if mask is not None and shared:
        mask = torch.cat([mask.new_ones(B, shared), mask], dim=1)
    logits = model(ids if mask is None else torch.where(ids >= 0, ids, pad), attention_mask=mask, kv_cache=cache,
                   logits_to_keep=1)  # the prompt's last position is all that is read
    return cache, logits, mask


def _left_pad(prompts: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(B, L)`` ids with ``-1`` at padding, and the 1/0 mask (``None`` when nothing is padded)."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[-1] * (width - len(p)) + list(p) for p in prompts], dtype=torch.long, device=device)
    return ids, (None if all(len(p) == width for p in prompts) else (ids >= 0).long())


class _StopChecker:
    """Finds stop strings in the tail of a row's new text (decoding only the last few tokens)."""

    def __init__(self, stops: list[str], decode_fn: Callable[[list[int]], str] | None):
        self.stops = [s for s in stops if s] if decode_fn is not None else []
        self.decode_fn = decode_fn
        # a token decodes to >= 1 byte and a character is <= 4 bytes: the tail covers any stop string
        self.tail = 4 * max((len(s) for s in self.stops), default=0) + 4

    def __call__(self, tokens: list[int]) -> bool:
        text = self.decode_fn(tokens[-self.tail:])
        return any(s in text for s in self.stops)

    def first_stop(self, tokens: list[int]) -> int | None:
        """Length of the shortest prefix of ``tokens`` that contains a stop string."""
        return next((n for n in range(1, len(tokens) + 1) if self(tokens[:n])), None)


@torch.inference_mode()
def generate(model, prompts: list[list[int]], decoding: Decoding | None = None, *,
             eos_token_id: int | Sequence[int] | None = None, pad_token_id: int = 0,
             decode_fn: Callable[[list[int]], str] | None = None,
             on_token: Callable[[int, int], None] | None = None,
             on_prefill: Callable[[object, torch.Tensor, torch.Tensor | None], None] | None = None,
             room: int = 0) -> GenerationOutput:
    """Continue each prompt (a list of token ids) under ``decoding``.

    ``decoding.eos_token_id`` / ``pad_token_id`` take precedence over the keyword arguments; a row
    ends at the first of its end tokens (one id or several). ``decode_fn`` turns token ids into
    text (needed for stop strings); ``on_token(row, token)`` is called as each token is produced,
    for streaming (greedy and sampling). ``on_prefill(cache, logits, mask)`` is called once the
    prompts have run (greedy and sampling): the KV cache (a row per prompt, ``max(max_new_tokens,
    room)`` positions free after the longest; not to be changed), the next-token logits ``(B, V)``
    and the cache's padding mask (``None``: none), so text after each prompt can be scored without
    running the prompt again.
    """
    decoding = decoding or Decoding()
    eos = end_tokens(decoding.eos_token_id if decoding.eos_token_id is not None else eos_token_id)
    pad = decoding.pad_token_id if decoding.pad_token_id is not None else pad_token_id
    _check(model, prompts, decoding)
    if not prompts:
        return GenerationOutput([], [])
    stop = _StopChecker(decoding.stop, decode_fn)
    if decoding.num_beams > 1:
        return _beam_search(model, prompts, decoding, eos, pad, stop)
    if on_prefill is not None and decoding.num_beams > 1:
        raise GenerationError("on_prefill is for greedy decoding and sampling, not beam search")
    return _greedy_or_sample(model, prompts, decoding, eos, pad, stop, on_token, on_prefill, room)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _choose(scores: torch.Tensor, decoding: Decoding, generator: torch.Generator | None) -> torch.Tensor:
    if not decoding.sampling:
        return scores.argmax(dim=-1)
    if decoding.top_p < 1.0:
        return sample_top_p(scores, decoding.top_p, generator)
    return sample(scores, generator)


def _greedy_or_sample(model, prompts, decoding: Decoding, eos, pad, stop: _StopChecker, on_token,
                      on_prefill=None, room: int = 0) -> GenerationOutput:
    device = _device(model)
    ids, _ = _left_pad(prompts, device)
    B, L = ids.shape
    n_new = decoding.max_new_tokens
    history = torch.full((B, L + n_new), -1, dtype=torch.long, device=device)  # what the processors see
    history[:, :L] = ids
    cache, logits, mask = _prefill(model, prompts, pad, L + max(n_new, room), device)
    if on_prefill is not None:
        on_prefill(cache, logits[:, -1], mask)
    full_mask = positions = None
    if mask is not None:
        full_mask = torch.cat([mask, mask.new_ones(B, n_new)], dim=1)
        positions = mask.sum(dim=1, keepdim=True)  # position of each row's next token
    processors = build_processors(decoding, top_p=False)  # _choose samples the nucleus itself
    generator = None
    if decoding.sampling and decoding.seed is not None:
        generator = torch.Generator(device=device).manual_seed(decoding.seed)

    sequences: list[list[int]] = [[] for _ in range(B)]
    reasons = ["length"] * B
    slots = list(range(B))  # the prompt each batch row belongs to
    alive = [True] * B
    cur = L
    step = getattr(model, "decode_step", None) or model  # compiled, if the model was (Llama.compile_decode_step)
    for i_new in range(n_new):
        scores = logits[:, -1, :].float()
        for proc in processors:
            scores = proc(history[:, :cur], scores)
        nxt = _choose(scores, decoding, generator)
        history[:, cur] = nxt
        cur += 1
        finished = False
        for i, tok in enumerate(nxt.tolist()):
            if not alive[i]:
                continue
            row = slots[i]
            sequences[row].append(tok)
            if on_token is not None:
                on_token(row, tok)
            if tok in eos:
                reason = "eos"
            elif stop.stops and stop(sequences[row]):
                reason = "stop"
            else:
                continue
            alive[i], reasons[row], finished = False, reason, True
        if i_new == n_new - 1 or not any(alive):
            break
        if finished and 4 * alive.count(False) >= len(alive):  # drop finished rows from the batch
            keep = torch.tensor([i for i, a in enumerate(alive) if a], device=device)
            cache.reorder(keep)
            history, nxt = history[keep], nxt[keep]
            slots = [slots[i] for i in keep.tolist()]
            alive = [True] * len(slots)
            if full_mask is not None:
                full_mask, positions = full_mask[keep], positions[keep]
                if bool(full_mask[:, :L].all()):  # no padding left: the model's fast path
                    full_mask = positions = None
        logits = step(nxt[:, None], attention_mask=None if full_mask is None else full_mask[:, :cur],
                      position_ids=positions, kv_cache=cache)
        if positions is not None:
            positions = positions + 1
    return GenerationOutput(sequences, reasons)


def _beam_search(model, prompts, decoding: Decoding, eos, pad, stop: _StopChecker) -> GenerationOutput:
    """HF's vectorised beam search (transformers >= 4.50 ``_beam_search``), step for step.

    Stop strings do not steer the search; a finished sequence that contains one is cut after the
    token that completes it, with finish reason "stop".
    """
    nb, lp, early = decoding.num_beams, decoding.length_penalty, decoding.early_stopping
    device = _device(model)
    ids, mask = _left_pad(prompts, device)
    B, L = ids.shape
    max_length = L + decoding.max_new_tokens
    keep = max(2, 1 + len(eos)) * nb  # as HF: room for every end token among the candidates
    top_nb = torch.cat([torch.ones(nb, dtype=torch.bool), torch.zeros(keep - nb, dtype=torch.bool)]).to(device)
    processors = build_processors(decoding)

    flat_ids = ids.repeat_interleave(nb, dim=0)
    full_mask = None
    if mask is not None:
        full_mask = torch.ones(B * nb, max_length, dtype=torch.long, device=device)
        full_mask[:, :L] = mask.repeat_interleave(nb, dim=0)
    cache = model.new_kv_cache(B * nb, max_length)

    running = torch.full((B, nb, max_length), -1, dtype=torch.long, device=device)
    running[:, :, :L] = flat_ids.view(B, nb, L)
    finished_seqs = running.clone()
    running_scores = torch.zeros(B, nb, device=device)
    running_scores[:, 1:] = NEG_INF
    finished_scores = torch.full((B, nb), NEG_INF, device=device)
    is_finished = torch.zeros(B, nb, dtype=torch.bool, device=device)
    improvable = torch.ones(B, 1, dtype=torch.bool, device=device)
    batch_offset = (torch.arange(B, device=device) * nb)[:, None]

    step_input, cur = torch.where(flat_ids >= 0, flat_ids, pad), L
    while True:
        logits = model(step_input, attention_mask=None if full_mask is None else full_mask[:, :cur], kv_cache=cache,
                       logits_to_keep=1)
        log_probs = torch.log_softmax(logits[:, -1, :].float(), dim=-1)
        for proc in processors:
            log_probs = proc(running.view(B * nb, max_length)[:, :cur], log_probs)
        V = log_probs.shape[-1]
        acc = (log_probs.view(B, nb, V) + running_scores[:, :, None]).view(B, nb * V)
        topk_scores, topk_idx = torch.topk(acc, keep)
        src_beam = topk_idx // V
        tokens = topk_idx % V
        cand = running.gather(1, src_beam[:, :, None].expand(B, keep, max_length)).clone()
        cand[:, :, cur] = tokens
        hits = torch.isin(tokens, torch.tensor(eos, dtype=torch.long, device=device))
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
        done_scores = done_scores + (full | ~improvable | ~just_done).float() * NEG_INF
        merged_seqs = torch.cat([finished_seqs, cand], dim=1)
        merged_scores = torch.cat([finished_scores, done_scores], dim=1)
        merged_done = torch.cat([is_finished, just_done], dim=1)
        best = torch.topk(merged_scores, nb)[1]
        finished_seqs = merged_seqs.gather(1, best[:, :, None].expand(B, nb, max_length))
        finished_scores = merged_scores.gather(1, best)
        is_finished = merged_done.gather(1, best)

        cache.reorder(beam_idx)
        if full_mask is not None:
            full_mask = full_mask.index_select(0, beam_idx)
        cur += 1

        hyp_len = (max_length - L) if (early == "never" and lp > 0) else (cur - L)
        best_possible = running_scores[:, :1] / (hyp_len ** lp)
        worst_done = torch.where(is_finished, finished_scores.min(dim=1, keepdim=True)[0], NEG_INF)
        improvable = improvable & (best_possible > worst_done).any(dim=-1, keepdim=True)
        open_beams = not (bool(is_finished.all()) and early is True)
        if not (bool(improvable.any()) and open_beams and not bool(hits.all())):
            break
        step_input = running[:, :, cur - 1].reshape(-1, 1)

    sequences, reasons = [], []
    for new in finished_seqs[:, 0, L:].tolist():
        new = [t for t in new if t >= 0]
        reason = "length"
        end = next((i for i, t in enumerate(new) if t in eos), None)
        if end is not None:
            new, reason = new[:end + 1], "eos"
        if stop.stops and (n := stop.first_stop(new)) is not None:
            new, reason = new[:n], "stop"
        sequences.append(new)
        reasons.append(reason)
    return GenerationOutput(sequences, reasons)
