"""Attention weights of any model built from fissure's attention modules, without slowing the
normal forward pass.

Our attention runs through ``F.scaled_dot_product_attention``, which never materialises the
weights. :func:`attention_maps` runs one ordinary forward pass with a forward pre-hook on every
attention module; each hook sees the module's input (``x``, ``mask``, ``rotary``) and recomputes
``softmax(q k^T / sqrt(head_dim) + mask)`` from the module's own projections
(:meth:`~.attention.CausalSelfAttention.project`). The hooks exist only during that call, so the
normal path pays nothing.

Extension point: :data:`ATTENTION_WEIGHTS` maps an attention module class to the function that
recomputes its weights from the module's call arguments; :func:`register_attention` adds one
(a cross-attention module registers a function that reads its memory's keys). A module that is
a subclass of a registered class uses its parent's function unless it registers its own.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
import torch.nn as nn

from .attention import CausalSelfAttention, CrossAttention

# (module, bound call arguments) -> weights (B, heads, queries, keys), float32, rows summing to 1
WeightsFn = Callable[[nn.Module, dict], torch.Tensor]
ATTENTION_WEIGHTS: dict[type, WeightsFn] = {}


def register_attention(cls: type) -> Callable[[WeightsFn], WeightsFn]:
    """Decorator: ``fn(module, args)`` recomputes the attention weights of modules of class ``cls``
    (``args``: the module's ``forward`` arguments by name, defaults filled in)."""
    def decorate(fn: WeightsFn) -> WeightsFn:
        ATTENTION_WEIGHTS[cls] = fn
        return fn
    return decorate


def weights_fn(module: nn.Module) -> WeightsFn | None:
    """The registered function for ``module``'s class or its nearest registered parent class."""
    for cls in type(module).__mro__:
        if cls in ATTENTION_WEIGHTS:
            return ATTENTION_WEIGHTS[cls]
    return None


def softmax_weights(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d) + mask)`` in float32; ``k`` with fewer heads than ``q`` serves
    groups of query heads (grouped-query attention: query head h reads key head h // group, as
    ``scaled_dot_product_attention(enable_gqa=True)``). ``mask``: boolean (True = may attend) or
    additive, broadcastable to ``(B, H, Tq, Tk)``."""
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k = k.repeat_interleave(group, dim=1)
    scores = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
    return scores.softmax(dim=-1)


@register_attention(CausalSelfAttention)
def self_attention_weights(module: CausalSelfAttention, args: dict) -> torch.Tensor:
    """Weights of :class:`~.attention.CausalSelfAttention` as its ``forward`` computes them: with no
    mask the attention is causal (SDPA's ``is_causal``) unless the module says ``causal = False``
    (a bidirectional encoder built from the same class)."""
    if args.get("kv_cache") is not None:
        raise ValueError("attention_maps runs one forward pass without a KV cache")
    q, k, _ = module.project(args["x"], args.get("rotary"))
    mask = args.get("mask")
    if mask is None and getattr(module, "causal", True):
        T = q.shape[2]
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    return softmax_weights(q, k, mask)


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every module in ``model`` whose attention weights can be recomputed."""
    return [(name, m) for name, m in model.named_modules() if weights_fn(m) is not None]


@register_attention(CrossAttention)
def cross_attention_weights(module: CrossAttention, args: dict) -> torch.Tensor:
    """Weights of the decoder's queries over the encoder's keys (``k``, given to ``forward``): every
    query sees every real source token."""
    x = args["x"]
    B, T, _ = x.shape
    q = module.q_proj(x).view(B, T, module.n_head, module.head_dim).transpose(1, 2)
    return softmax_weights(q, args["k"], args.get("mask"))


@torch.no_grad()
def attention_maps(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   **forward_kwargs) -> list[torch.Tensor]:
    """Attention weights ``(B, heads, T_query, T_key)`` of every attention module of ``model``, in the
    order the forward pass calls them (layer order), from one call
    ``model(input_ids, attention_mask=attention_mask, **forward_kwargs)`` (``attention_mask`` passed
    only when given).

    Works on any module tree containing registered attention modules (GPT, Llama, fused or not;
    BERT; an encoder-decoder, whose maps come as encoder self-attention, then per decoder layer its
    self-attention and its cross-attention: :func:`named_attention_maps` names them). Rows sum to 1;
    for causal self-attention everything above the diagonal is 0. With padding, a padded query row
    attends only to itself (the convention of :func:`.attention.attention_mask_4d`).
    """
    return [m for _, m in named_attention_maps(model, input_ids, attention_mask, **forward_kwargs)]


@torch.no_grad()
def named_attention_maps(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                         **forward_kwargs) -> list[tuple[str, torch.Tensor]]:
    """:func:`attention_maps` with each map's module name (``blocks.0.attn``, ``decoder.1.cross``...)."""
    modules = attention_modules(model)
    if not modules:
        raise ValueError(f"{type(model).__name__} has no attention module that attention_maps knows "
                         f"({', '.join(c.__name__ for c in ATTENTION_WEIGHTS)})")
    maps: list[tuple[str, torch.Tensor]] = []

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            bound = inspect.signature(module.forward).bind(*args, **kwargs)
            bound.apply_defaults()
            maps.append((name, weights_fn(module)(module, dict(bound.arguments))))
        return hook

    handles = [m.register_forward_pre_hook(hook_for(name), with_kwargs=True) for name, m in modules]
    if attention_mask is not None:
        forward_kwargs["attention_mask"] = attention_mask
    try:
        model(input_ids, **forward_kwargs)
    finally:
        for h in handles:
            h.remove()
    return maps
