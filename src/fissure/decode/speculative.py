"""Speculative decoding: a small draft model proposes, the target verifies several tokens at once.

Leviathan et al. 2023, "Fast Inference from Transformers via Speculative Decoding"; Chen et al.
2023, "Accelerating Large Language Model Decoding with Speculative Sampling". Each round the
draft proposes ``gamma`` tokens one at a time (cheap), then the target scores all of them in one
forward pass (about the cost of one target step on a memory-bound CPU or GPU). The output is the
target's, not the draft's:

- greedy: draft tokens are kept while they equal the target's argmax; at the first difference the
  target's own token is taken (after all ``gamma``, a bonus token). The text is the target's
  plain greedy text token for token (up to float rounding: the target scores ``gamma + 1``
  positions in one pass instead of one at a time, so a near-tie may break the other way, as in
  HF's assisted generation).
- sampling: draft token ``x ~ q`` is kept with probability ``min(1, p(x) / q(x))``; the first
  rejected one is replaced by a draw from ``norm(max(0, p - q))``; so every token is distributed
  exactly as the target's ``p``. ``p`` and ``q`` are both the processed distributions (repetition
  penalty, temperature, top-k, top-p applied to each model's logits with the same history).

Both models keep a KV cache; after a round each is cropped back to the tokens accepted
(:meth:`~fissure.models.attention.KVCache.crop`). Any causal model of fissure's protocol with the
target's vocabulary can draft, e.g. a smaller checkpoint, or :func:`first_layers` of the target
itself (an untrained early exit, sharing its weights).

Batches: all rows of a batch advance together, so one KV cache length and one padding mask serve
them. A round keeps the draft tokens that *every* unfinished row accepted (the smallest count) and
then one token per row (the target's own token, or a row's next accepted draft token where it
accepted more). For greedy this is exactly each row's greedy output. For sampling each row emits
a prefix of what speculative sampling alone would emit, cut at a point set by the other rows'
independent draws, so every token is still distributed as the target's. A batch accepts fewer
tokens per round than its rows would alone: speculation pays most at batch size 1.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import GenerationError
from .config import Decoding
from .processors import build_processors, sample
from .search import GenerationOutput, _check, _left_pad, _StopChecker, end_tokens

MAX_GAMMA = 64  # draft tokens per round, adaptive schedule included


class DraftError(GenerationError):
    """A draft model that cannot serve the target (another vocabulary, too few layers)."""


@dataclass
class SpeculativeOutput(GenerationOutput):
    drafted: int = 0  # draft tokens proposed to the target, summed over rows
    accepted: int = 0  # of those, the tokens the target kept

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted / proposed draft tokens (``None`` when nothing was proposed)."""
        return self.accepted / self.drafted if self.drafted else None


def first_layers(model: nn.Module, n: int) -> nn.Module:
    """A self-draft: ``model``'s embedding, its first ``n`` blocks, then its final norm and head.

    A shallow copy with its own block list and config: every weight is the target's (no memory,
    no training), and the target keeps all its layers. Untrained as an early exit, its guesses are
    only as good as the residual stream after block ``n`` happens to be."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or not hasattr(model, "config"):
        raise DraftError(f"a layers:N self-draft needs a model with a block list (GPT, Llama), not {type(model).__name__}")
    if not 1 <= n < len(blocks):
        raise DraftError(f"layers:{n}: a self-draft takes 1 to {len(blocks) - 1} of the target's {len(blocks)} layers")
    draft = copy.copy(model)
    draft._modules = dict(model._modules)  # its own module table: replacing blocks leaves the target whole
    draft.blocks = nn.ModuleList(list(blocks)[:n])
    draft.config = dataclasses.replace(model.config, n_layer=n)
    return draft


@torch.inference_mode()
def speculative_generate(target, draft, prompts: list[list[int]], decoding: Decoding | None = None, *,
                         gamma: int = 4, adaptive: bool = False, eos_token_id: int | Sequence[int] | None = None,
                         pad_token_id: int = 0, decode_fn: Callable[[list[int]], str] | None = None,
                         on_token: Callable[[int, int], None] | None = None) -> SpeculativeOutput:
    """Continue each prompt with ``target``'s greedy or sampled output, ``draft`` proposing
    ``gamma`` tokens per round. ``adaptive`` grows ``gamma`` by 2 after a round whose drafts were all
    accepted and shrinks it by 1 otherwise (HF's heuristic schedule). Other arguments as
    :func:`fissure.decode.generate`; beam search is not speculative."""
    decoding = decoding or Decoding()
    eos = end_tokens(decoding.eos_token_id if decoding.eos_token_id is not None else eos_token_id)
    pad = decoding.pad_token_id if decoding.pad_token_id is not None else pad_token_id
    if decoding.num_beams > 1:
        raise GenerationError("speculative decoding does not do beam search: use num_beams=1")
    if isinstance(gamma, bool) or not isinstance(gamma, int) or not 1 <= gamma <= MAX_GAMMA:
        raise GenerationError(f"gamma (draft tokens per round) must be an integer in [1, {MAX_GAMMA}], not {gamma!r}")
    _check(target, prompts, decoding)
    try:
        _check(draft, prompts, decoding)
    except GenerationError as exc:
        raise DraftError(f"draft: {exc}") from None
    if not prompts:
        return SpeculativeOutput([], [])
    return _speculate(target, draft, prompts, decoding, eos, pad, _StopChecker(decoding.stop, decode_fn),
                      on_token, gamma, adaptive)


def _processed(processors, history: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    scores = logits.float()
    for proc in processors:
        scores = proc(history, scores)
    return scores


def _accept_greedy(p: list[torch.Tensor], drafts: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Drafts every row keeps (the target's argmax agrees), and each row's next token."""
    best = torch.stack([s.argmax(dim=-1) for s in p], dim=1)  # (B, g + 1)
    kept = (best[:, :-1] == drafts).long().cumprod(dim=1).sum(dim=1)
    k = int(kept.min())
    return k, best[:, k]


def _accept_sampled(p: list[torch.Tensor], q: list[torch.Tensor], drafts: torch.Tensor,
                    generator: torch.Generator | None) -> tuple[int, torch.Tensor]:
    """The rejection rule: keep ``x ~ q`` with probability ``min(1, p(x) / q(x))``; the first
    rejected token is redrawn from ``norm(max(0, p - q))``; after all drafts, one draw from ``p``."""
    g = drafts.shape[1]
    if g == 0:
        return 0, sample(p[0], generator)
    P = torch.stack(p[:g], dim=1).softmax(dim=-1)  # (B, g, V)
    Q = torch.stack(q, dim=1).softmax(dim=-1)
    p_x = P.gather(-1, drafts[..., None])[..., 0]
    q_x = Q.gather(-1, drafts[..., None])[..., 0]  # > 0: the draft drew x from q
    u = torch.rand(p_x.shape, generator=generator, device=p_x.device)
    kept = (u * q_x < p_x).long().cumprod(dim=1).sum(dim=1)
    k = int(kept.min())
    if k == g:
        return k, sample(p[g], generator)
    residual = (P[:, k] - Q[:, k]).clamp(min=0)
    # p == q leaves nothing (and then a rejection has probability 0): fall back to p itself
    residual = torch.where(residual.sum(dim=-1, keepdim=True) > 0, residual, P[:, k])
    redrawn = torch.multinomial(residual, 1, generator=generator)[:, 0]
    return k, torch.where(kept > k, drafts[:, k], redrawn)


def _speculate(target, draft, prompts, decoding: Decoding, eos, pad, stop: _StopChecker, on_token, gamma: int,
               adaptive: bool) -> SpeculativeOutput:
    device = next(target.parameters()).device
    ids, mask = _left_pad(prompts, device)
    B, L = ids.shape
    n_new = decoding.max_new_tokens
    history = torch.full((B, L + n_new), -1, dtype=torch.long, device=device)  # -1 at padding
    history[:, :L] = ids
    full_mask = None if mask is None else torch.cat([mask, mask.new_ones(B, n_new)], dim=1)
    target_cache, draft_cache = target.new_kv_cache(B, L + n_new), draft.new_kv_cache(B, L + n_new)
    processors = build_processors(decoding)  # top-p too: p and q are the distributions actually drawn from
    generator = None
    if decoding.sampling and decoding.seed is not None:
        generator = torch.Generator(device=device).manual_seed(decoding.seed)

    def feed(model, cache, upto: int, keep: int) -> torch.Tensor:
        """Run ``model`` on the tokens its cache has not seen, up to position ``upto``: the last ``keep`` logits."""
        x = history[:, cache.length:upto]
        return model(torch.where(x >= 0, x, pad), kv_cache=cache,
                     attention_mask=None if full_mask is None else full_mask[:, :upto], logits_to_keep=keep)

    sequences: list[list[int]] = [[] for _ in range(B)]
    reasons = ["length"] * B
    slots = list(range(B))  # the prompt each batch row belongs to
    drafted = accepted = 0
    cur = L  # tokens per row so far (prompt, padding, output)
    while True:
        g = min(gamma, n_new - (cur - L) - 1)  # the round's last token is the target's own
        q = []
        for j in range(g):
            scores = _processed(processors, history[:, :cur + j], feed(draft, draft_cache, cur + j, 1)[:, -1])
            history[:, cur + j] = sample(scores, generator) if decoding.sampling else scores.argmax(dim=-1)
            q.append(scores)
        logits = feed(target, target_cache, cur + g, g + 1)  # prefill and verification in one pass
        p = [_processed(processors, history[:, :cur + j], logits[:, j]) for j in range(g + 1)]
        drafts = history[:, cur:cur + g]
        if decoding.sampling:
            k, nxt = _accept_sampled(p, q, drafts, generator)
        else:
            k, nxt = _accept_greedy(p, drafts)
        history[:, cur + k] = nxt
        target_cache.crop(cur + k)  # the new token is fed next round
        draft_cache.crop(min(draft_cache.length, cur + k))
        drafted, accepted = drafted + g * len(slots), accepted + k * len(slots)
        if adaptive:
            gamma = min(gamma + 2, MAX_GAMMA) if k == g else max(1, gamma - 1)
        emitted = history[:, cur:cur + k + 1].tolist()
        cur += k + 1

        alive = [True] * len(slots)
        for i, tokens in enumerate(emitted):
            row = slots[i]
            for tok in tokens:
                sequences[row].append(tok)
                if on_token is not None:
                    on_token(row, tok)
                if tok in eos:
                    reasons[row], alive[i] = "eos", False
                elif stop.stops and stop(sequences[row]):
                    reasons[row], alive[i] = "stop", False
                else:
                    continue
                break
        if cur - L >= n_new or not any(alive):
            break
        if not all(alive):  # finished rows leave the batch
            keep = torch.tensor([i for i, a in enumerate(alive) if a], device=device)
            target_cache.reorder(keep)
            draft_cache.reorder(keep)
            history = history[keep]
            slots = [slots[i] for i in keep.tolist()]
            if full_mask is not None:
                full_mask = full_mask[keep]
                if bool(full_mask[:, :L].all()):  # no padding left: the models' fast path
                    full_mask = None
    return SpeculativeOutput(sequences, reasons, drafted, accepted)
