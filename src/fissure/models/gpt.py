"""A GPT, written to be read top to bottom (after nanoGPT's ``model.py``).

Token embedding + positional encoding (learned or the fixed sinusoids of the original
Transformer) -> ``n_layer`` pre-LN blocks of causal self-attention and a GELU MLP ->
final LayerNorm -> a linear head (tied to the token embedding by default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .attention import CausalSelfAttention, KVCache, attention_mask_4d, resolve_positions, sinusoidal_positions
from .blocks import MLP, PreLNBlock
from .decode_linear import use_decode_linears
from .limits import LIMITS, check_range, check_size


@dataclass
class GPTConfig:
    vocab_size: int = 8192
    block_size: int = 256  # longest context the model sees
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2
    pos_encoding: str = "learned"  # "learned" | "sinusoidal"
    tie_weights: bool = True  # share the token embedding with the output head
    activation: str = "gelu_tanh"  # "gelu_tanh" (GPT-2) | "gelu"
    layer_norm_eps: float = 1e-5
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        for name, most in LIMITS.items():
            check_range(name, getattr(self, name), 1, most, integer=True)
        check_range("mlp_ratio", self.mlp_ratio, 1, 64, integer=True)
        check_range("dropout", self.dropout, 0, 1)
        check_range("layer_norm_eps", self.layer_norm_eps, 0, 1)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.pos_encoding not in ("learned", "sinusoidal"):
            raise ValueError(f"pos_encoding must be 'learned' or 'sinusoidal', not {self.pos_encoding!r}")
        if self.activation not in ("gelu_tanh", "gelu"):
            raise ValueError(f"activation must be 'gelu_tanh' or 'gelu', not {self.activation!r}")
        check_size(self.approx_params(), "GPT")

    def approx_params(self) -> int:
        """Parameters and position tables, roughly: what building the model allocates (in floats)."""
        d = self.n_embd
        per_layer = 4 * d * d + 2 * self.mlp_ratio * d * d
        return self.vocab_size * d * (1 if self.tie_weights else 2) + self.block_size * d + self.n_layer * per_layer


class GPT(nn.Module):
    family = "gpt"
    packs_continuations = True  # takes a 4-D attention mask with position ids (scoring.score_after)
    gradient_checkpointing = False  # set True to trade compute for activation memory in training

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.n_embd)
        if c.pos_encoding == "learned":
            self.pos_emb = nn.Embedding(c.block_size, c.n_embd)
        else:
            self.register_buffer("pos_table", sinusoidal_positions(c.block_size, c.n_embd), persistent=False)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList([
            PreLNBlock(
                attn=CausalSelfAttention(c.n_embd, c.n_head, bias=c.bias, dropout=c.dropout),
                mlp=MLP(c.n_embd, c.mlp_ratio * c.n_embd, bias=c.bias, dropout=c.dropout, activation=c.activation),
                norm1=nn.LayerNorm(c.n_embd, eps=c.layer_norm_eps, bias=c.bias),
                norm2=nn.LayerNorm(c.n_embd, eps=c.layer_norm_eps, bias=c.bias),
            )
            for _ in range(c.n_layer)
        ])
        self.norm_f = nn.LayerNorm(c.n_embd, eps=c.layer_norm_eps, bias=c.bias)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        if c.tie_weights:
            self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer) so the residual stream's
        # variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("attn.out.weight") or name.endswith("mlp.proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))

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

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.config.pos_encoding == "learned":
            n -= self.pos_emb.weight.numel()
        return n

    def new_kv_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        c = self.config
        p = self.tok_emb.weight
        return KVCache(c.n_layer, batch, c.n_head, c.n_embd // c.n_head, max_len or c.block_size,
                       dtype=p.dtype, device=p.device)

    def fuse_projections(self) -> "GPT":
        """Every projection (the head included) a :class:`~.decode_linear.DecodeLinear`, fast for
        the few rows of a decoding step; q/k/v are one matmul already. Same weights (no copies, a
        tied head stays tied), same state-dict names; for inference."""
        use_decode_linears(self)
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                logits_to_keep: int = 0) -> torch.Tensor:
        """Logits ``(B, T, vocab)`` for ``input_ids`` ``(B, T)``.

        ``attention_mask`` ``(B, past + T)`` marks real tokens (1) and padding (0);
        ``kv_cache`` holds past positions and is advanced by ``T``; ``logits_to_keep = k`` > 0
        projects only the last ``k`` positions (HF's argument: a prompt's prefill needs one).
        """
        h = self.hidden_states(input_ids, attention_mask, position_ids, kv_cache)
        return self.lm_head(h[:, -logits_to_keep:] if logits_to_keep else h)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None, kv_cache: KVCache | None = None) -> torch.Tensor:
        """The final (normed) hidden states ``(B, T, n_embd)``: what the head reads."""
        B, T = input_ids.shape
        past, position_ids = resolve_positions(input_ids, attention_mask, position_ids, kv_cache,
                                               self.config.block_size, "block_size")
        if self.config.pos_encoding == "learned":
            pos = self.pos_emb(position_ids)
        else:
            pos = self.pos_table[position_ids]
        x = self.drop(self.tok_emb(input_ids) + pos)
        mask = attention_mask_4d(attention_mask, T, past, B, input_ids.device)
        for i, block in enumerate(self.blocks):
            if self.gradient_checkpointing and self.training:  # recompute in backward: less memory
                x = checkpoint(block, x, mask=mask, layer=i, use_reentrant=False)
            else:
                x = block(x, mask=mask, layer=i, kv_cache=kv_cache)
        if kv_cache is not None:
            kv_cache.advance(T)
        return self.norm_f(x)
