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
    data = _config(path)
    return "bert" in (data.get("family"), data.get("model_type"))


def row_entropy(weights: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each attention row (``(..., T, T)`` -> ``(..., T)``); 0 log 0 = 0."""
    return -(weights * weights.clamp_min(1e-30).log()).sum(-1)


def head_summary(att: TextAttention) -> list[list[dict]]:
    """:func:`head_stats` of a text's maps."""
    return head_stats(att.maps, att.causal)


def head_stats(maps: list[torch.Tensor], causal: bool) -> list[list[dict]]:
    """Per layer of ``maps`` ``(H, queries, keys)``, per head: mean row entropy (nats), the same
    relative to its maximum (a causal row ``i`` sees ``i + 1`` keys: ``log(i + 1)``, and the first
    row, with one key, is left out of the ratio; otherwise every row sees all keys: ``log keys``),
    and the share of attention on the first key (an attention sink)."""
    out = []
    for layer in maps:
        H, T, K = layer.shape
        ent = row_entropy(layer)  # (H, T)
        if causal:
            rel = (ent[:, 1:] / torch.log(torch.arange(2, T + 1, dtype=torch.float32))).mean(-1) if T > 1 else None
        else:
            rel = (ent / math.log(K)).mean(-1) if K > 1 else None
        out.append([{"entropy": float(ent[h].mean()), "relative_entropy": float(rel[h]) if rel is not None else math.nan,
                     "first_token_share": float(layer[h, :, 0].mean())} for h in range(H)])
    return out


@dataclass
class TranslationAttention:
    """An encoder-decoder's attention on a source and its translation (the model's greedy one, or
    one given): per layer ``(heads, queries, keys)``."""

    source_tokens: list[str]
    source_ids: list[int]
    target_tokens: list[str]  # the decoder's inputs: the start token, then the translation
    target_ids: list[int]
    translation: str
    encoder: list[torch.Tensor]  # source over source
    decoder: list[torch.Tensor]  # target over the target before it (causal)
    cross: list[torch.Tensor]  # target over source

    def groups(self) -> dict[str, tuple[list[torch.Tensor], list[str], list[str], bool]]:
        """name -> (maps, query tokens, key tokens, causal)."""
        s, t = self.source_tokens, self.target_tokens
        return {"encoder": (self.encoder, s, s, False), "decoder": (self.decoder, t, t, True),
                "cross": (self.cross, t, s, False)}


def is_translation_model(path) -> bool:
    """Whether ``path`` holds an encoder-decoder (fissure's family ``seq2seq`` or an HF Marian)."""
    data = _config(path)
    return data.get("family") == "seq2seq" or data.get("model_type") == "marian"


@torch.no_grad()
def translation_attention(path, source: str, max_new_tokens: int = 64) -> TranslationAttention:
    """Encoder self-attention, decoder self-attention and cross-attention of ``source`` and the model's
    greedy translation of it (one forward pass over the translation, teacher-forced)."""
    from ..backends.translation import load_translator
    from ..decode import Decoding
    from ..decode.seq2seq import generate_seq2seq
    from ..models.attention_maps import named_attention_maps

    translator = load_translator(path)
    model = translator.model
    src = translator.codec.encode_sources([source])[0]
    limit = min(MAX_TOKENS, model.config.block_size)
    if len(src) > limit:
        raise UserError(f"the source is {len(src)} tokens; attention maps take at most {limit}")
    out = generate_seq2seq(model, [src], Decoding(max_new_tokens=min(max_new_tokens, limit - 1)),
                           forced_eos_token_id=translator.forced_eos_token_id, suppress_ids=translator.suppress_ids)
    tgt = [model.config.decoder_start_token_id, *out.sequences[0]]
    named = named_attention_maps(model, torch.tensor([src]), tgt_ids=torch.tensor([tgt]))
    pick = lambda test: [m[0].float() for name, m in named if test(name)]  # noqa: E731
    token = translator.codec.token
    return TranslationAttention(
        source_tokens=[token(i) for i in src], source_ids=src, target_tokens=[token(i) for i in tgt], target_ids=tgt,
        translation=translator.codec.decode_target(out.sequences[0]),
        encoder=pick(lambda n: n.startswith("encoder")), decoder=pick(lambda n: n.startswith("decoder") and
                                                                      n.endswith(".attn")),
        cross=pick(lambda n: n.endswith(".cross")))


def _config(path) -> dict:
    import json
    from pathlib import Path

    try:
        data = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
