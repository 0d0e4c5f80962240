"""Transformer building blocks shared by the model families."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import CausalSelfAttention, KVCache, concat_linears


class RMSNorm(nn.Module):
    """Root-mean-square layer norm (no centring, no bias), as in Llama."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalise in float32 (as HF's LlamaRMSNorm), then scale in the input's dtype; one fused kernel
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)
        return self.weight * normed


class OutputHead(nn.Module):
    """A bias-free vocabulary projection that also keeps its weight transposed, ``(n_embd, vocab)``,
    for inputs of a few rows (decoding one token per sequence): ``x @ weight_t`` reads the weight in
    the order a single row wants. Measured on SmolLM2's 576 x 49,152 head (2 threads, weights streamed
    from memory): 7.9 ms against 15.1 ms for ``F.linear`` at one row; at 32 rows the two layouts
    swapped places from run to run, so more rows keep ``F.linear``. The same numbers up to rounding.

    ``weight`` stays the original parameter (still tied to the embedding when it was) and is what
    training and gradients see: with gradients on, every input takes ``F.linear``. The transposed
    copy is remade whenever the weight changed since it was taken (an optimizer step, a LoRA
    merge), so it never serves stale weights."""

    rows_for_transposed = 4  # at most this many input rows use the transposed copy

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if linear.bias is not None:
            raise ValueError("OutputHead copies a bias-free projection")
        self.weight = linear.weight
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_t", torch.empty(0), persistent=False)
        self._copied = None  # (storage, version, dtype) of the weight when weight_t was taken
        self._transposed()

    def _transposed(self) -> torch.Tensor:
        w = self.weight
        try:
            version = w._version
        except RuntimeError:  # an inference-mode tensor has no version counter (and is never trained)
            version = -1
        key = (w.data_ptr(), version, w.dtype)  # a copied model (deepcopy) has new storage
        if self._copied != key:
            self.weight_t = w.detach().t().contiguous()
            self._copied = key
        return self.weight_t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() <= self.rows_for_transposed * self.in_features and not (
                torch.is_grad_enabled() and self.weight.requires_grad):
            return x @ self._transposed()
        return F.linear(x, self.weight)

    def as_linear(self) -> nn.Linear:
        """The ``nn.Linear`` it was made from (for int8 quantisation, which reads rows)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=False, device="meta")
        linear.weight = self.weight
        return linear


class MLP(nn.Module):
    """Position-wise feed-forward: Linear -> GELU -> Linear (GPT-2 uses the tanh GELU)."""

    def __init__(self, n_embd: int, hidden: int, bias: bool = True, dropout: float = 0.0,
                 activation: str = "gelu_tanh"):
        super().__init__()
        self.fc = nn.Linear(n_embd, hidden, bias=bias)
        self.proj = nn.Linear(hidden, n_embd, bias=bias)
        self.approximate = {"gelu_tanh": "tanh", "gelu": "none"}[activation]
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate=self.approximate)))


class SwiGLU(nn.Module):
    """Gated feed-forward of Llama: down(silu(gate(x)) * up(x)).

    :meth:`fuse` merges ``gate`` and ``up`` into one projection (``gate_up``): one matmul instead
    of two, which matters when decoding a token at a time.
    """

    def __init__(self, n_embd: int, hidden: int, bias: bool = False):
        super().__init__()
        self.gate = nn.Linear(n_embd, hidden, bias=bias)
        self.up = nn.Linear(n_embd, hidden, bias=bias)
        self.down = nn.Linear(hidden, n_embd, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "gate_up"):
            gate, up = self.gate_up(x).chunk(2, dim=-1)
            return self.down(F.silu(gate) * up)
        return self.down(F.silu(self.gate(x)) * self.up(x))

    @torch.no_grad()
    def fuse(self) -> None:
        self.gate_up = concat_linears(self.gate, self.up)
        del self.gate, self.up


class PostLNBlock(nn.Module):
    """norm(x + attn(x)), then norm(x + mlp(x)): the post-LN residual block of the original
    Transformer and BERT (the norm after the residual sum, not before the sublayer)."""

    def __init__(self, attn: CausalSelfAttention, mlp: nn.Module, norm1: nn.Module, norm2: nn.Module):
        super().__init__()
        self.attn, self.norm1, self.mlp, self.norm2 = attn, norm1, mlp, norm2

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm1(x + self.attn(x, mask=mask))
        return self.norm2(x + self.mlp(x))


class PreLNBlock(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x)): the pre-LN residual block of GPT-2 and Llama."""

    def __init__(self, attn: CausalSelfAttention, mlp: nn.Module, norm1: nn.Module, norm2: nn.Module):
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = norm1, attn, norm2, mlp

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, layer: int = 0,
                kv_cache: KVCache | None = None,
                rotary: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask=mask, layer=layer, kv_cache=kv_cache, rotary=rotary)
        return x + self.mlp(self.norm2(x))
