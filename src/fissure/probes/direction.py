"""The refusal direction (Arditi et al. 2024, "Refusal in language models is mediated by a single
direction"), and what it says about each attack.

1. **Activations**: the residual stream after every layer at the prompt's last token (where the
   reply starts), for restricted requests and for benign ones, from a local model
   (:func:`last_token_states`: forward hooks on the model's ``blocks``; no generation).
2. **Direction**: per layer, the difference of the two classes' means. The prompts are split in
   half (seeded); the direction is fitted on one half and each layer is scored by how well its
   projection separates the *other* half (AUROC); the best layer is the one reported
   (:func:`fit_direction`). The threshold between the classes is the midpoint of the two fitted
   means' projections.
3. **Mode attribution**: an attack prompt whose projection falls below the threshold was *not
   recognised* as a restricted request: its success is mismatched generalization (MG). One that
   still projects above it but whose reply complied was *recognised and overridden*: competing
   objectives (CO) (:func:`attribute`).
4. **Causal check**: :func:`ablated` removes the direction from the residual stream at every layer
   (x - (x . r)r, r the unit direction), which should stop refusals of plain restricted requests;
   :func:`added` adds the difference of means at the chosen layer, which should make the model
   refuse benign ones.

A backend without activations (an HTTP server) cannot do any of this: :func:`require_local` says so.
"""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ..backends.base import LanguageModel, Prompt
from ..backends.scoring import pad_right
from ..errors import UserError
from ..metrics.stats import wilson_interval

MIN_PER_CLASS = 4  # prompts per class in each half: 8 restricted and 8 benign prompts at least


def require_local(lm: LanguageModel) -> torch.nn.Module:
    """The torch model behind ``lm``, or a one-line error naming the backends that have activations."""
    model = getattr(lm, "model", None)
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "blocks") or not hasattr(lm, "prompt_ids"):
        raise UserError(f"{lm.capabilities.name} ({lm.capabilities.backend}) does not expose activations: a refusal "
                        "direction needs a local model run by fissure (a registry name such as smollm2, a checkpoint, "
                        "a local HF Llama directory or a GGUF file), not an HTTP server")
    return model


SHARED_PREFIX = 16  # tokens: a batch whose prompts share at least this many runs them once
SORT_KEY = 32  # prompts are grouped by their first tokens, then sorted by length (less padding)


def common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every row shares, leaving each row at least one token of its own."""
    n = min(len(r) for r in rows) - 1
    first = rows[0]
    for i in range(max(n, 0)):
        if any(r[i] != first[i] for r in rows[1:]):
            return i
    return max(n, 0)


class _Enough(Exception):
    """Raised by the last hook that is needed: the layers above it are not run."""


@torch.inference_mode()
def last_token_states(lm: LanguageModel, prompts: Sequence[Prompt], batch_size: int = 16,
                      layers: int | None = None) -> torch.Tensor:
    """``(layers, prompts, hidden)``: the residual stream after each layer at each prompt's last token
    (only the first ``layers`` layers, and the model stops there: projecting on a chosen layer's
    direction needs nothing above it).

    Prompts are grouped by their first tokens and sorted by length within a group, so that a batch
    shares its leading tokens (a policy's system prompt) and pads little; a shared start of
    :data:`SHARED_PREFIX` tokens or more is run once into a KV cache, and only each prompt's own
    tokens after it."""
    model = require_local(lm)
    ids = [lm.prompt_ids(p) for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: (ids[i][:SORT_KEY], len(ids[i])))  # same start, then length
    blocks = list(model.blocks)[:layers]
    if not blocks:
        raise UserError(f"layers must be from 1 to {len(model.blocks)}, not {layers}")
    captured: list[torch.Tensor] = []

    stop_after = len(blocks) - 1 if len(blocks) < len(model.blocks) else None

    def keep(_module, _args, output, layer: int):
        captured.append(output)
        if layer == stop_after:
            raise _Enough

    hooks = [b.register_forward_hook(functools.partial(keep, layer=i)) for i, b in enumerate(blocks)]

    def forward(ids: torch.Tensor, kv_cache=None, **kwargs) -> None:
        try:
            model(ids, kv_cache=kv_cache, **kwargs)
        except _Enough:  # stopped above the last layer needed: the cache still holds these positions
            if kv_cache is not None:
                kv_cache.advance(ids.shape[1])

    out: list[torch.Tensor | None] = [None] * len(ids)
    try:
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            chunk = [ids[i] for i in index]
            shared = common_prefix(chunk)
            cache, past = None, None
            if shared >= SHARED_PREFIX:
                cache = model.new_kv_cache(1, max(len(x) for x in chunk))
                forward(torch.tensor([chunk[0][:shared]]), kv_cache=cache)
                cache.reorder(torch.zeros(len(chunk), dtype=torch.long))
                chunk = [x[shared:] for x in chunk]
                past = torch.ones((len(chunk), shared), dtype=torch.long)
            batch, mask = pad_right(chunk)
            captured.clear()
            forward(batch, attention_mask=mask if past is None else torch.cat([past, mask], 1), kv_cache=cache)
            last = mask.sum(1) - 1
            states = torch.stack([h[torch.arange(len(chunk)), last].float() for h in captured], dim=1)  # (B, L, d)
            for row, i in enumerate(index):
                out[i] = states[row]
    finally:
        for h in hooks:
            h.remove()
    return torch.stack(out, dim=1)


def difference_of_means(restricted: torch.Tensor, benign: torch.Tensor) -> torch.Tensor:
    """``(layers, hidden)``: mean restricted state minus mean benign state, per layer."""
    return restricted.mean(dim=1) - benign.mean(dim=1)


def project(states: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """Each state's coordinate along the unit direction: ``states . unit``."""
    return states @ unit


def ablate(states: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """The states with their component along ``unit`` removed: x - (x . u) u."""
    return states - project(states, unit)[..., None] * unit


def auroc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """P(a random positive scores above a random negative), ties counting half (Mann-Whitney U)."""
    pos, neg = torch.as_tensor(positive, dtype=torch.float64), torch.as_tensor(negative, dtype=torch.float64)
    greater = (pos[:, None] > neg[None, :]).sum().item()
    ties = (pos[:, None] == neg[None, :]).sum().item()
    return (greater + 0.5 * ties) / (len(pos) * len(neg))


@dataclass(frozen=True)
class RefusalDirection:
    layer: int  # the layer whose held-out separation is best (0 = after the first block)
    mean_diff: torch.Tensor  # (hidden,) difference of means at that layer (fit half)
    unit: torch.Tensor  # mean_diff / |mean_diff|
    threshold: float  # midpoint of the two fitted class means' projections
    separation: tuple[float, ...]  # held-out AUROC per layer
    n_restricted: int
    n_benign: int

    def recognised(self, states: torch.Tensor) -> torch.Tensor:
        """Whether each state (``(n, hidden)`` at :attr:`layer`) projects above the threshold."""
        return project(states, self.unit) > self.threshold

    def as_dict(self) -> dict:
        return {"layer": self.layer, "threshold": self.threshold, "norm": float(self.mean_diff.norm()),
                "heldout_auroc": list(self.separation), "n_restricted": self.n_restricted, "n_benign": self.n_benign}


def _halves(n: int, rng: random.Random) -> tuple[list[int], list[int]]:
    order = list(range(n))
    rng.shuffle(order)
    return order[: n // 2], order[n // 2:]


def fit_direction(restricted: torch.Tensor, benign: torch.Tensor, seed: int = 0) -> RefusalDirection:
    """The refusal direction from ``(layers, n, hidden)`` states of restricted and benign prompts:
    fitted on one seeded half of each class, the layer chosen by AUROC on the other half."""
    n_r, n_b = restricted.shape[1], benign.shape[1]
    if min(n_r, n_b) < 2 * MIN_PER_CLASS:
        raise UserError(f"a refusal direction needs at least {2 * MIN_PER_CLASS} restricted and "
                        f"{2 * MIN_PER_CLASS} benign prompts (half to fit, half to choose the layer); got "
                        f"{n_r} and {n_b}")
    rng = random.Random(seed)
    (fit_r, held_r), (fit_b, held_b) = _halves(n_r, rng), _halves(n_b, rng)
    diffs = difference_of_means(restricted[:, fit_r], benign[:, fit_b])
    separation = []
    for layer, diff in enumerate(diffs):
        unit = diff / diff.norm().clamp_min(1e-12)
        separation.append(auroc(project(restricted[layer, held_r], unit).tolist(),
                                project(benign[layer, held_b], unit).tolist()))
    layer = max(range(len(separation)), key=lambda i: (separation[i], -i))  # ties: the earlier layer
    diff = diffs[layer]
    unit = diff / diff.norm().clamp_min(1e-12)
    mid = 0.5 * (project(restricted[layer, fit_r].mean(0), unit) + project(benign[layer, fit_b].mean(0), unit))
    return RefusalDirection(layer, diff, unit, float(mid), tuple(separation), n_r, n_b)


# --- interventions --------------------------------------------------------------------------

@contextlib.contextmanager
def ablated(model: torch.nn.Module, unit: torch.Tensor) -> Iterator[None]:
    """Inside the block, every layer's residual input and the last layer's output lack ``unit``'s
    component (directional ablation at every layer and position)."""
    unit = unit.detach()

    def pre(_module, args, kwargs):
        return (ablate(args[0], unit.to(args[0].dtype)), *args[1:]), kwargs

    hooks = [b.register_forward_pre_hook(pre, with_kwargs=True) for b in model.blocks]
    hooks.append(model.blocks[-1].register_forward_hook(lambda _m, _a, out: ablate(out, unit.to(out.dtype))))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


@contextlib.contextmanager
def added(model: torch.nn.Module, layer: int, vector: torch.Tensor, scale: float = 1.0) -> Iterator[None]:
    """Inside the block, ``scale * vector`` is added to the output of layer ``layer`` at every position."""
    vector = vector.detach() * scale
    hook = model.blocks[layer].register_forward_hook(lambda _m, _a, out: out + vector.to(out.dtype))
    try:
        yield
    finally:
        hook.remove()


# --- what each attack's prompts say ---------------------------------------------------------

def attribute(recognised: dict[str, Sequence[bool]], complied: dict[str, Sequence[bool]],
              registered: dict[str, str], confidence: float = 0.95) -> dict:
    """Per attack: how often its prompts were recognised (projected above the threshold), how
    often among the replies that complied, and the mode that implies: ``MG`` (mostly not
    recognised) or ``CO`` (mostly recognised), beside the attack's registered mode."""
    out = {}
    for attack, flags in recognised.items():
        flags = list(flags)
        leaks = [f for f, c in zip(flags, complied.get(attack, ())) if c]
        rate = wilson_interval(sum(flags), len(flags), confidence)
        out[attack] = {
            "registered": registered.get(attack, "none"),
            "attributed": "MG" if rate.estimate < 0.5 else "CO",
            "recognised": {"n": len(flags), "count": sum(flags), **rate.as_dict()},
            "recognised_when_complied": ({"n": len(leaks), **wilson_interval(sum(leaks), len(leaks), confidence).as_dict()}
                                         if leaks else None),
            "complied": len(leaks),
        }
    return out
