"""The encoder-decoder Transformer of "Attention Is All You Need", written to be read top to bottom.

Source tokens -> embedding (times sqrt(n_embd)) + positions -> ``n_layer`` encoder layers of
bidirectional self-attention and a feed-forward -> the "memory". Target tokens (shifted right
behind a decoder start token) -> embedding + positions -> ``n_decoder_layer`` decoder layers of
causal self-attention, cross-attention over the memory and a feed-forward -> a linear head.

Source and target share one vocabulary and one embedding (as Marian does). Layer norms sit after
each residual sum (``norm_position = "post"``: the paper, Marian) or before each sublayer with a
final norm on each side (``"pre"``: trains more stably when deep). With ``pos_encoding =
"sinusoidal_halves"``, ``scale_embedding``, ``activation = "silu"`` and ``logits_bias`` the model
is exactly HF's ``MarianMTModel`` (:mod:`.hf_marian` loads one).

Generation runs the encoder once; :meth:`Seq2Seq.new_kv_cache` then holds each decoder layer's
self-attention keys/values (a :class:`~.attention.KVCache`) and the cross-attention keys/values
of the memory, computed once per source.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import CausalSelfAttention, CrossAttention, KVCache, sinusoidal_positions
from .limits import LIMITS, check_range, check_size

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu, "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "silu": F.silu}
NORM_POSITIONS = ("post", "pre")
POS_ENCODINGS = ("sinusoidal", "sinusoidal_halves", "learned")


@dataclass
class Seq2SeqConfig:
    vocab_size: int = 8192  # one vocabulary for source and target
    block_size: int = 128  # longest source, and longest target (decoder start token included)
    n_layer: int = 3  # encoder layers
    n_decoder_layer: int = 3
    n_head: int = 4
    n_embd: int = 256
    intermediate_size: int = 1024  # feed-forward width
    dropout: float = 0.1
    bias: bool = True
    norm_position: str = "post"  # "post" (the paper, Marian) | "pre" (norm before each sublayer, final norms)
    pos_encoding: str = "sinusoidal"  # "sinusoidal" (sin/cos interleaved) | "sinusoidal_halves" (sin then cos: Marian) | "learned"
    scale_embedding: bool = True  # token embeddings times sqrt(n_embd), as the paper
    tie_weights: bool = True  # the output head shares the token embedding
    logits_bias: bool = False  # a fixed (untrained) bias on the logits: Marian's final_logits_bias
    activation: str = "relu"  # "relu" (the paper) | "gelu" | "gelu_tanh" | "silu" (Marian's "swish")
    layer_norm_eps: float = 1e-5
    decoder_start_token_id: int = 0
    eos_token_id: int = 0
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        for name, most in LIMITS.items():
            check_range(name, getattr(self, name), 1, most, integer=True)
        check_range("n_decoder_layer", self.n_decoder_layer, 1, LIMITS["n_layer"], integer=True)
        check_range("intermediate_size", self.intermediate_size, 1, 2**20, integer=True)
        check_range("dropout", self.dropout, 0, 1)
        check_range("layer_norm_eps", self.layer_norm_eps, 0, 1)
        for name in ("decoder_start_token_id", "eos_token_id", "pad_token_id"):
            check_range(name, getattr(self, name), 0, self.vocab_size - 1, integer=True)
        if self.n_embd % self.n_head or self.n_embd % 2:
            raise ValueError(f"n_embd ({self.n_embd}) must be even and divisible by n_head ({self.n_head})")
        for name, allowed in (("norm_position", NORM_POSITIONS), ("pos_encoding", POS_ENCODINGS),
                              ("activation", tuple(ACTIVATIONS))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        check_size(self.approx_params(), "seq2seq")

    def approx_params(self) -> int:
        d, f = self.n_embd, self.intermediate_size
        encoder = self.n_layer * (4 * d * d + 2 * d * f)
        decoder = self.n_decoder_layer * (8 * d * d + 2 * d * f)
        return self.vocab_size * d * (1 if self.tie_weights else 2) + 2 * self.block_size * d + encoder + decoder


def position_table(n_positions: int, dim: int, layout: str) -> torch.Tensor:
    """Fixed sinusoids: interleaved (``sinusoidal``, the paper's formula) or all sines then all
    cosines of the same frequencies (``sinusoidal_halves``: tensor2tensor and Marian)."""
    table = sinusoidal_positions(n_positions, dim)
    return torch.cat([table[:, 0::2], table[:, 1::2]], dim=1) if layout == "sinusoidal_halves" else table


class FeedForward(nn.Module):
    """Linear -> activation -> Linear (blocks.MLP knows only the GELUs; the paper uses ReLU, Marian SiLU)."""

    def __init__(self, n_embd: int, hidden: int, activation: str, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.fc = nn.Linear(n_embd, hidden, bias=bias)
        self.proj = nn.Linear(hidden, n_embd, bias=bias)
        self.act = ACTIVATIONS[activation]
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(self.act(self.fc(x))))


def residual(x: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor], norm: nn.LayerNorm,
             pre: bool) -> torch.Tensor:
    """``x + f(norm(x))`` (pre-LN) or ``norm(x + f(x))`` (post-LN, the paper)."""
    return x + sublayer(norm(x)) if pre else norm(x + sublayer(x))


class EncoderLayer(nn.Module):
    def __init__(self, c: Seq2SeqConfig):
        super().__init__()
        self.pre = c.norm_position == "pre"
        self.attn = CausalSelfAttention(c.n_embd, c.n_head, bias=c.bias, dropout=c.dropout, fused_qkv=False)
        self.norm1 = nn.LayerNorm(c.n_embd, eps=c.layer_norm_eps, bias=c.bias)
        self.mlp = FeedForward(c.n_embd, c.intermediate_size, c.activation, bias=c.bias, dropout=c.dropout)
        self.norm2 = nn.LayerNorm(c.n_embd, eps=c.layer_norm_eps, bias=c.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # an explicit mask (never None) keeps CausalSelfAttention bidirectional
        x = residual(x, lambda h: self.attn(h, mask=mask), self.norm1, self.pre)
        return residual(x, self.mlp, self.norm2, self.pre)


class DecoderLayer(nn.Module):
    def __init__(self, c: Seq2SeqConfig):
        super().__init__()
        self.pre = c.norm_position == "pre"
        self.attn = CausalSelfAttention(c.n_embd, c.n_head, bias=c.bias, dropout=c.dropout, fused_qkv=False)
        self.norm1 = nn.LayerNorm(c.n_embd, eps=c.layer_norm_eps, bias=c.bias)
        self.cross = CrossAttention(c.n_embd, c.n_head, bias=c.bias, dropout=c.dropout)
        self.norm2 = nn.LayerNorm(c.n_embd, eps=c.layer_norm_eps, bias=c.bias)
        self.mlp = FeedForward(c.n_embd, c.intermediate_size, c.activation, bias=c.bias, dropout=c.dropout)
        self.norm3 = nn.LayerNorm(c.n_embd, eps=c.layer_norm_eps, bias=c.bias)

    def forward(self, x: torch.Tensor, memory_kv: tuple[torch.Tensor, torch.Tensor], memory_mask: torch.Tensor | None,
                layer: int, kv_cache: KVCache | None) -> torch.Tensor:
        x = residual(x, lambda h: self.attn(h, layer=layer, kv_cache=kv_cache), self.norm1, self.pre)
        x = residual(x, lambda h: self.cross(h, *memory_kv, mask=memory_mask), self.norm2, self.pre)
        return residual(x, self.mlp, self.norm3, self.pre)


class Seq2SeqCache(KVCache):
    """The decoder's self-attention cache plus, per decoder layer, the cross-attention keys/values
    of the memory and the source key mask, so :mod:`fissure.decode.search` drives a seq2seq
    decoder unchanged.

    The memory is held once per source while each source's rows (its beams) sit next to each other
    in the batch: :meth:`reorder` within sources (beam search) then moves no memory at all. When rows
    leave the batch or change source, the memory is copied out to one row per decoder row."""

    def __init__(self, n_layer: int, batch: int, n_head: int, head_dim: int, max_len: int,
                 memory_kv: list[tuple[torch.Tensor, torch.Tensor]], memory_mask: torch.Tensor | None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        super().__init__(n_layer, batch, n_head, head_dim, max_len, dtype=dtype, device=device)
        self.memory_kv, self.memory_mask = memory_kv, memory_mask
        sources = memory_kv[0][0].shape[0]
        if batch % sources:
            raise ValueError(f"a batch of {batch} rows cannot share {sources} sources evenly")
        self.row_source = torch.arange(batch, device=device) // (batch // sources)

    def reorder(self, index: torch.Tensor) -> None:
        super().reorder(index)
        source = self.row_source[index]
        sources, rows = self.memory_kv[0][0].shape[0], len(index)
        if rows % sources == 0 and torch.equal(source, torch.arange(rows, device=source.device) // (rows // sources)):
            self.row_source = source
            return
        self.memory_kv = [(k.index_select(0, source), v.index_select(0, source)) for k, v in self.memory_kv]
        if self.memory_mask is not None:
            self.memory_mask = self.memory_mask.index_select(0, source)
        self.row_source = torch.arange(rows, device=source.device)


class Seq2Seq(nn.Module):
    family = "seq2seq"

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.config = c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.n_embd)
        self.embed_scale = c.n_embd ** 0.5 if c.scale_embedding else 1.0
        if c.pos_encoding == "learned":
            self.enc_pos = nn.Embedding(c.block_size, c.n_embd)
            self.dec_pos = nn.Embedding(c.block_size, c.n_embd)
        else:
            self.register_buffer("pos_table", position_table(c.block_size, c.n_embd, c.pos_encoding), persistent=False)
        self.drop = nn.Dropout(c.dropout)
        self.encoder = nn.ModuleList([EncoderLayer(c) for _ in range(c.n_layer)])
        self.decoder = nn.ModuleList([DecoderLayer(c) for _ in range(c.n_decoder_layer)])
        if c.norm_position == "pre":  # pre-LN leaves the residual stream unnormalised: norm it at the end
            self.enc_norm = nn.LayerNorm(c.n_embd, eps=c.layer_norm_eps, bias=c.bias)
            self.dec_norm = nn.LayerNorm(c.n_embd, eps=c.layer_norm_eps, bias=c.bias)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        if c.tie_weights:
            self.lm_head.weight = self.tok_emb.weight
        if c.logits_bias:
            self.register_buffer("final_logits_bias", torch.zeros(c.vocab_size))
        self.apply(self._init_weights)
        # with scaled embeddings, N(0, 1/n_embd) gives the summed input unit variance (fairseq's choice)
        nn.init.normal_(self.tok_emb.weight, std=c.n_embd ** -0.5 if c.scale_embedding else 0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def max_positions(self) -> int:
        return self.config.block_size

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _embed(self, ids: torch.Tensor, start: int, side: str) -> torch.Tensor:
        T = ids.shape[1]
        if start + T > self.config.block_size:
            raise ValueError(f"{side} of {start + T} tokens exceeds block_size {self.config.block_size}")
        if self.config.pos_encoding == "learned":
            table = self.enc_pos if side == "source" else self.dec_pos
            pos = table(torch.arange(start, start + T, device=ids.device))
        else:
            pos = self.pos_table[start:start + T]
        return self.drop(self.tok_emb(ids) * self.embed_scale + pos)

    # -- encoder ---------------------------------------------------------------------------
    def encode(self, src_ids: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The memory ``(B, S, n_embd)`` of source ids ``(B, S)`` (``src_mask`` 1 for real tokens, 0 for padding)."""
        B, S = src_ids.shape
        x = self._embed(src_ids, 0, "source")
        mask = key_mask(src_mask, B, S, src_ids.device, always=True)
        for layer in self.encoder:
            x = layer(x, mask)
        return self.enc_norm(x) if self.config.norm_position == "pre" else x

    def memory_kv(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each decoder layer's cross-attention keys and values of ``memory``."""
        return [layer.cross.memory_kv(memory) for layer in self.decoder]

    # -- decoder ---------------------------------------------------------------------------
    def decode(self, tgt_ids: torch.Tensor, memory_kv: list[tuple[torch.Tensor, torch.Tensor]],
               src_mask: torch.Tensor | None = None, kv_cache: KVCache | None = None) -> torch.Tensor:
        """Logits ``(B, T, vocab)`` for decoder inputs ``tgt_ids`` ``(B, T)`` (after ``kv_cache.length``
        cached positions, which advance by ``T``)."""
        B, T = tgt_ids.shape
        past = kv_cache.length if kv_cache is not None else 0
        x = self._embed(tgt_ids, past, "target")
        sources, S = memory_kv[0][0].shape[0], memory_kv[0][0].shape[2]  # sources <= B: see Seq2SeqCache
        memory_mask = key_mask(src_mask, sources, S, tgt_ids.device)
        for i, layer in enumerate(self.decoder):
            x = layer(x, memory_kv[i], memory_mask, i, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(T)
        if self.config.norm_position == "pre":
            x = self.dec_norm(x)
        logits = self.lm_head(x)
        return logits + self.final_logits_bias if self.config.logits_bias else logits

    def forward(self, src_ids: torch.Tensor, tgt_ids: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits ``(B, T, vocab)``: ``tgt_ids`` are the decoder inputs (start token
        first); right padding in the target needs no mask (causality hides it from real positions)."""
        return self.decode(tgt_ids, self.memory_kv(self.encode(src_ids, src_mask)), src_mask)

    def new_kv_cache(self, batch: int, max_len: int | None = None, *,
                     memory_kv: list[tuple[torch.Tensor, torch.Tensor]], src_mask: torch.Tensor | None) -> Seq2SeqCache:
        c, p = self.config, self.tok_emb.weight
        mask = None if src_mask is None else src_mask.bool()
        return Seq2SeqCache(c.n_decoder_layer, batch, c.n_head, c.n_embd // c.n_head, max_len or c.block_size,
                            memory_kv, mask, dtype=p.dtype, device=p.device)

    @torch.no_grad()
    def fuse(self) -> None:
        """One q/k/v matmul in each self-attention (decoding speed; the numbers do not change)."""
        for layer in [*self.encoder, *self.decoder]:
            layer.attn.fuse()


def key_mask(src_mask: torch.Tensor | None, batch: int, length: int, device: torch.device,
             always: bool = False) -> torch.Tensor | None:
    """Boolean ``(B, 1, 1, S)`` mask of real source keys; ``None`` when nothing is padded (unless ``always``)."""
    if src_mask is None:
        return torch.ones(batch, 1, 1, length, dtype=torch.bool, device=device) if always else None
    return src_mask.bool()[:, None, None, :]
