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
