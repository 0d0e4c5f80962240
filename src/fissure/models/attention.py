"""Attention shared by every model family: masks, a KV cache, rotary embeddings and
multi-head / grouped-query self-attention through ``F.scaled_dot_product_attention``,
and :func:`concat_linears`, which fuses projections (:mod:`.blocks` imports it from here:
imports between the two go one way only).

Shapes follow one convention throughout: activations are ``(batch, time, channels)``,
attention heads are ``(batch, heads, time, head_dim)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class KVCache:
    """Keys and values of past positions, one pair per layer, preallocated to ``max_len``.

    Writing into a preallocated buffer instead of concatenating keeps generation linear
    in the number of new tokens. ``reorder`` follows beams in beam search.
    """

    def __init__(self, n_layer: int, batch: int, n_kv_head: int, head_dim: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        shape = (batch, n_kv_head, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.max_len = max_len
        self.length = 0  # positions already stored (same for every layer once a step is done)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's keys/values for ``layer``; return all keys/values so far."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions > max_len {self.max_len}")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        """Mark ``n`` more positions as stored (called once per forward, after all layers)."""
        self.length += n

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (beam search keeps the best beams)."""
        self.k = [t.index_select(0, index) for t in self.k]
        self.v = [t.index_select(0, index) for t in self.v]

    @property
    def batch_size(self) -> int:
        return self.k[0].shape[0]

    def crop(self, length: int) -> None:
        """Forget every position from ``length`` on (speculative decoding drops rejected draft
        tokens); the next :meth:`update` overwrites them."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot crop a KV cache of {self.length} positions to {length}")
        self.length = length


def positions_from_mask(attention_mask: torch.Tensor, q_len: int) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (left padding aware)."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp(min=0)[:, -q_len:]


def resolve_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      position_ids: torch.Tensor | None, kv_cache: "KVCache | None", limit: int,
                      limit_name: str) -> tuple[int, torch.Tensor]:
    """Past length and position ids for a forward pass (from the padding mask when there is one),
    refusing sequences longer than the model's ``limit``."""
    B, T = input_ids.shape
    past = kv_cache.length if kv_cache is not None else 0
    if past + T > limit:
        raise ValueError(f"sequence of {past + T} tokens exceeds {limit_name} {limit}")
    if position_ids is None:
        if attention_mask is not None and attention_mask.dim() == 4:
            raise ValueError("a 4-D attention mask needs explicit position_ids")
        if attention_mask is not None:
            position_ids = positions_from_mask(attention_mask, T)
        else:
            position_ids = torch.arange(past, past + T, device=input_ids.device)[None].expand(B, T)
    return past, position_ids


def attention_mask_4d(attention_mask: torch.Tensor | None, q_len: int, past_len: int,
                      batch: int, device: torch.device) -> torch.Tensor | None:
    """Boolean ``(B, 1, q_len, past_len + q_len)`` mask: True where a query may attend.

    Combines causality with key padding (``attention_mask`` is ``(B, past_len + q_len)``,
    1 for real tokens, 0 for padding). A padded query row attends to itself only, so
    no row is empty: an empty row would give NaN, and NaN leaks through 0-weights.
    Returns ``None`` when no mask is needed: no padding and either no past (SDPA's fast
    ``is_causal`` path) or a single new query (it attends to every key). A 4-D mask
    ``(B, 1, q_len, past_len + q_len)`` is the caller's own (several continuations packed in
    one row, each seeing the past and itself: :func:`fissure.backends.scoring.score_after`).
    """
    if attention_mask is not None and attention_mask.dim() == 4:
        return attention_mask.bool()
    k_len = past_len + q_len
    if attention_mask is None and (past_len == 0 or q_len == 1):
        return None
    q_pos = torch.arange(past_len, k_len, device=device)[:, None]
    k_pos = torch.arange(k_len, device=device)[None, :]
    mask = (k_pos <= q_pos)[None, None]  # (1, 1, q, k)
    if attention_mask is not None:
        mask = mask & attention_mask[:, None, None, :k_len].bool()
        mask = mask | (k_pos == q_pos)[None, None]
    return mask.expand(batch, 1, q_len, k_len)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE), in the "rotate half" layout that Llama uses.

    The frequencies are recomputed in float32 on each call (head_dim / 2 numbers) rather than
    kept as a buffer, so casting the model to bf16 never degrades the positions.
    """

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        self.head_dim, self.base = head_dim, base

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape ``(B, 1, T, head_dim)`` for integer ``position_ids`` ``(B, T)``."""
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=position_ids.device) / self.head_dim
        inv_freq = 1.0 / (self.base ** exponent)
        freqs = position_ids[..., None].float() * inv_freq  # (B, T, D/2)
        emb = torch.cat([freqs, freqs], dim=-1)[:, None]
        return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


def concat_linears(*linears: nn.Linear) -> nn.Linear:
    """One Linear whose outputs are those of ``linears``, stacked: fuses q/k/v here and SwiGLU's
    gate/up in :mod:`.blocks` into one matmul each."""
    first = linears[0]
    fused = nn.Linear(first.in_features, sum(l.out_features for l in linears), bias=first.bias is not None,
                      dtype=first.weight.dtype, device=first.weight.device)
    fused.weight.copy_(torch.cat([l.weight for l in linears]))
    if first.bias is not None:
        fused.bias.copy_(torch.cat([l.bias for l in linears]))
    return fused


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with optional grouped-query heads and rotary positions.

    ``n_kv_head < n_head`` gives grouped-query attention (each key/value head serves
    ``n_head // n_kv_head`` query heads). With ``fused_qkv`` the three projections are one
    matmul (GPT-2 layout); otherwise they are separate (Llama layout).
    """

    def __init__(self, n_embd: int, n_head: int, n_kv_head: int | None = None, bias: bool = True,
                 dropout: float = 0.0, fused_qkv: bool = True, head_dim: int | None = None):
        super().__init__()
        self.n_head = n_head
        self.n_kv_head = n_kv_head or n_head
        if n_head % self.n_kv_head:
            raise ValueError(f"n_head ({n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        self.head_dim = head_dim or n_embd // n_head
        q_dim, kv_dim = n_head * self.head_dim, self.n_kv_head * self.head_dim
        self.fused_qkv = fused_qkv
        if fused_qkv:
            self.qkv = nn.Linear(n_embd, q_dim + 2 * kv_dim, bias=bias)
        else:
            self.q_proj = nn.Linear(n_embd, q_dim, bias=bias)
            self.k_proj = nn.Linear(n_embd, kv_dim, bias=bias)
            self.v_proj = nn.Linear(n_embd, kv_dim, bias=bias)
        self.out = nn.Linear(q_dim, n_embd, bias=bias)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, layer: int = 0,
                kv_cache: KVCache | None = None,
                rotary: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.project(x, rotary)
        if kv_cache is not None:
            k, v = kv_cache.update(layer, k, v)
        if T == 1 and not self.training:
            y = self._single_query(q, k, v, mask)
            y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
            return self.resid_dropout(self.out(y))
        dropout = self.dropout if self.training else 0.0
        causal = mask is None and k.shape[2] == T  # no mask: causal prefill, or one query seeing all
        if causal and dropout == 0.0 and _explicit_is_faster(q):
            y = causal_attention_explicit(q, k, v)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal,
                                               enable_gqa=self.n_kv_head != self.n_head)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return self.resid_dropout(self.out(y))

    def project(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries ``(B, n_head, T, head_dim)``, keys and values ``(B, n_kv_head, T, head_dim)`` of
        ``x``, rotary positions applied: what :meth:`forward` attends with (and what
        :func:`fissure.models.attention_maps.attention_maps` recomputes the weights from)."""
        B, T, _ = x.shape
        if self.fused_qkv:
            q_dim, kv_dim = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
            if rotary is not None:  # queries and keys sit side by side: rotate them in one pass
                qk, v = self.qkv(x).split([q_dim + kv_dim, kv_dim], dim=-1)
                qk = apply_rotary(qk.view(B, T, self.n_head + self.n_kv_head, self.head_dim).transpose(1, 2), *rotary)
                q, k = qk.split([self.n_head, self.n_kv_head], dim=1)
                return q, k, v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
            q, k, v = self.qkv(x).split([q_dim, kv_dim, kv_dim], dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        return q, k, v

    @torch.no_grad()
    def fuse(self) -> None:
        """Merge separate q/k/v projections into one matmul (for decoding speed)."""
        if not self.fused_qkv:
            self.qkv = concat_linears(self.q_proj, self.k_proj, self.v_proj)
            del self.q_proj, self.k_proj, self.v_proj
            self.fused_qkv = True

    def _single_query(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      mask: torch.Tensor | None) -> torch.Tensor:
        """Attention of one new token over the cache, written out: at decode time this small
        case is several times faster than SDPA's kernel. Grouped query heads share their key
        head by reshaping, with no copy of the keys."""
        B, _, _, D = q.shape
        group = self.n_head // self.n_kv_head
        q = q.view(B, self.n_kv_head, group, D)
        scores = (q @ k.transpose(-1, -2)) * (D ** -0.5)  # (B, kv_heads, group, keys)
        if mask is not None:
            scores = scores.masked_fill(~mask.view(B, 1, 1, -1), float("-inf"))
        y = scores.softmax(dim=-1, dtype=torch.float32).to(v.dtype) @ v  # (B, kv_heads, group, D)
        return y.view(B, self.n_head, 1, D)


# Longest sequence for which the written-out causal attention below beats SDPA's flash kernel in bf16
# training on a CPU (2 threads, forward + backward, 6 heads of 64: 8.2 vs 24.2 ms at 128 positions,
# 14.5 vs 24.7 at 256, 28.1 vs 40.4 at 512, but 92.8 vs 48.0 at 1,024; benchmarks/README.md).
EXPLICIT_ATTENTION_MAX_LEN = 512


def _explicit_is_faster(q: torch.Tensor) -> bool:
    """Whether :func:`causal_attention_explicit` is the faster path for these (causal, unmasked)
    queries: bf16 on a CPU with gradients on (training), up to :data:`EXPLICIT_ATTENTION_MAX_LEN`
    positions. Everything else (fp32, inference, long sequences) goes through SDPA, as do masks
    and dropout (:meth:`CausalSelfAttention.forward` checks those)."""
    return (q.dtype == torch.bfloat16 and q.device.type == "cpu" and torch.is_grad_enabled()
            and q.shape[2] <= EXPLICIT_ATTENTION_MAX_LEN)


def causal_attention_explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention written out (scores, mask, softmax, weighted values): what SDPA computes
    with ``is_causal=True``, through three large kernels instead of the flash kernel's many small
    blocks, whose backward pass is slow on a CPU in bf16. Keeps the ``(T, T)`` weights for the
    backward pass, so it is for short sequences only. Grouped query heads share their key head
    by stacking a group's queries, with no copy of the keys."""
    B, H, T, D = q.shape
    group = H // k.shape[1]
    q = q.reshape(B, k.shape[1], group * T, D)  # query heads h * group .. share key head h
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1).repeat(group, 1)
    scores = (q @ k.transpose(-1, -2) * D ** -0.5).masked_fill(future, float("-inf"))
    return (scores.softmax(dim=-1) @ v).view(B, H, T, D)


def sinusoidal_positions(n_positions: int, dim: int) -> torch.Tensor:
    """The fixed sin/cos table of "Attention Is All You Need": PE[p, 2i] = sin(p / 10000^(2i/d)),
    PE[p, 2i+1] = cos(p / 10000^(2i/d))."""
    position = torch.arange(n_positions, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(n_positions, dim)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div[: dim // 2])
    return pe


class CrossAttention(nn.Module):
    """Multi-head attention of one sequence (the decoder's) over another (the encoder's output,
    the "memory"), as in the original Transformer's decoder.

    :meth:`memory_kv` projects the memory to keys and values once per source; generation keeps
    them for every step (each step's queries are new, the memory is not). ``mask`` is a boolean
    ``(B, 1, 1, S)`` key mask (True for real source tokens).

    The memory may have fewer rows than ``x``: with ``M`` memory rows, ``x``'s ``B = g * M`` rows are
    ``M`` groups of ``g`` neighbours (the beams of one source), and a group's ``g * T`` queries attend
    to its one memory row together. Beam search then never copies the memory.
    """

    def __init__(self, n_embd: int, n_head: int, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.n_head, self.head_dim = n_head, n_embd // n_head
        self.q_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.k_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.v_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.out = nn.Linear(n_embd, n_embd, bias=bias)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``(B, heads, S, head_dim)`` of the encoder output ``memory`` ``(B, S, C)``."""
        B, S, _ = memory.shape
        k = self.k_proj(memory).view(B, S, self.n_head, self.head_dim).transpose(1, 2)
        v = self.v_proj(memory).view(B, S, self.n_head, self.head_dim).transpose(1, 2)
        return k, v

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        M = k.shape[0]
        if B % M:
            raise ValueError(f"{B} query rows cannot share {M} memory rows evenly")
        q = self.q_proj(x).view(M, B // M * T, self.n_head, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.out(y.transpose(1, 2).reshape(B, T, C)))
