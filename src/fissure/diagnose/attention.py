"""Attention maps of a text on a model fissure runs itself, and a summary of each head.

The weights come from :func:`fissure.models.attention_maps.attention_maps` (hooks that recompute
them; the model's normal forward pass is untouched). Only backends that hold the torch module can
give them: a model behind a URL or run by transformers cannot.

Attention is not explanation: a head's weights show where it reads from, not why the model
predicts what it does (Jain & Wallace 2019; Wiegreffe & Pinter 2019). See docs/attention.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import UserError

MAX_TOKENS = 512  # maps grow as tokens^2 per head
NATIVE = ("a fissure checkpoint, smollm2, an HF Llama or BERT directory or a .gguf Llama file "
          "(the native and llama backends)")


class NoAttentionAccessError(UserError):
    """A model whose backend does not expose its torch module (HTTP, transformers)."""


@dataclass
class TextAttention:
    tokens: list[str]  # each token decoded on its own
    ids: list[int]
    maps: list[torch.Tensor]  # per layer: (heads, T, T), rows summing to 1
    causal: bool = True  # a decoder's rows see the keys before them; an encoder's (BERT) every key


def check_native(lm) -> None:
    """A one-line error unless ``lm`` runs a torch module with attention modules we can read."""
    from ..backends import TorchLM
    from ..models.attention_maps import attention_modules

    caps = lm.capabilities
    if not isinstance(lm, TorchLM) or not attention_modules(lm.model):
        raise NoAttentionAccessError(f"attention maps need a model fissure runs natively: {NATIVE}; "
                                     f"{caps.name} runs on the {caps.backend} backend")


@torch.no_grad()
def text_attention(lm, text: str) -> TextAttention:
    """The attention maps of ``text`` (as a generation prompt: after the start token when the model
    expects one) on the native model of ``lm``."""
    from ..models.attention_maps import attention_maps

    check_native(lm)
    ids = lm.prompt_ids(text)
    limit = min(MAX_TOKENS, lm.capabilities.max_context or MAX_TOKENS)
    if len(ids) > limit:
        raise UserError(f"the text is {len(ids)} tokens; attention maps take at most {limit}")
    maps = attention_maps(lm.model, torch.tensor([ids]))
    tokens = [lm.tokenizer.decode([i]) for i in ids]
    return TextAttention(tokens=tokens, ids=ids, maps=[m[0].float() for m in maps])


@torch.no_grad()
def encoder_attention(path, text: str) -> TextAttention:
    """The attention maps of ``[CLS] text [SEP]`` on a BERT (a fissure checkpoint trained with
    ``task = "mlm"`` or an HF BERT directory): bidirectional, every row sees every token."""
    from ..backends.masked_lm import load_masked_lm
    from ..models.attention_maps import attention_maps

    model, tokenizer = load_masked_lm(path)
    ids = [tokenizer.cls_id, *tokenizer.encode(text), tokenizer.sep_id]
    limit = min(MAX_TOKENS, model.config.block_size)
    if len(ids) > limit:
        raise UserError(f"the text is {len(ids)} tokens with [CLS] and [SEP]; attention maps take at most {limit}")
    maps = attention_maps(model, torch.tensor([ids]))
    return TextAttention(tokens=[tokenizer.decode([i]) for i in ids], ids=ids, maps=[m[0].float() for m in maps],
                         causal=False)


def is_encoder(path) -> bool:
    """Whether ``path`` holds a BERT (fissure's family ``bert`` or HF's ``model_type`` ``bert``)."""
    import json
    from pathlib import Path

    config = Path(path) / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and "bert" in (data.get("family"), data.get("model_type"))


def row_entropy(weights: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each attention row (``(..., T, T)`` -> ``(..., T)``); 0 log 0 = 0."""
    return -(weights * weights.clamp_min(1e-30).log()).sum(-1)


def head_summary(att: TextAttention) -> list[list[dict]]:
    """Per layer, per head: mean row entropy (nats), the same relative to its maximum (a causal row
    ``i`` sees ``i + 1`` keys: ``log(i + 1)``, an encoder's row all ``T``: ``log T``; the first row of
    a causal map, with one key, is left out of the ratio), and the share of attention on the first
    token (an attention sink)."""
    out = []
    T = len(att.ids)
    max_entropy = torch.log(torch.arange(1, T + 1, dtype=torch.float32)) if att.causal else \
        torch.full((T,), math.log(T))
    for layer in att.maps:
        ent = row_entropy(layer)  # (H, T)
        rel = (ent[:, 1:] / max_entropy[1:]).mean(-1) if T > 1 else torch.full((layer.shape[0],), math.nan)
        out.append([{"entropy": float(ent[h].mean()), "relative_entropy": float(rel[h]),
                     "first_token_share": float(layer[h, :, 0].mean())} for h in range(layer.shape[0])])
    return out
