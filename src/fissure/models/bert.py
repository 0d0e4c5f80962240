"""BERT (Devlin et al. 2018), written to be read top to bottom like :mod:`.gpt`.

Token + learned position + segment (token type) embeddings -> LayerNorm -> ``n_layer`` post-LN
blocks of *bidirectional* self-attention and an exact-GELU MLP -> two heads:

- the masked-LM head: dense + GELU + LayerNorm, then a decoder tied to the word embeddings
  (plus a bias of its own), giving logits over the vocabulary at every position, or only at the
  positions asked for (``mlm_positions``: what pretraining scores, as Google's BERT gathers
  ``masked_lm_positions``; skipping the other ~85% of the vocabulary projections is most of a step);
- the next-sentence head: a pooler (dense + tanh on the ``[CLS]`` state), then a 2-way linear
  (label 0: B follows A; label 1: B is a random sentence, as HF's ``next_sentence_label``).

Attention reuses :class:`.attention.CausalSelfAttention`: given an explicit boolean mask it is
not causal, so a mask of the real (non-padding) keys gives BERT's bidirectional attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import CausalSelfAttention
from .blocks import MLP, PostLNBlock
from .limits import LIMITS, check_range, check_size


@dataclass
class BertConfig:
    vocab_size: int = 30522
    block_size: int = 512  # HF's max_position_embeddings
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.1  # HF's hidden_dropout_prob and attention_probs_dropout_prob, one value
    intermediate_size: int = 3072
    type_vocab_size: int = 2  # segments A and B
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        for name, most in LIMITS.items():
            check_range(name, getattr(self, name), 1, most, integer=True)
        check_range("intermediate_size", self.intermediate_size, 1, 2**20, integer=True)
        check_range("type_vocab_size", self.type_vocab_size, 1, 2**10, integer=True)
        check_range("dropout", self.dropout, 0, 1)
        check_range("layer_norm_eps", self.layer_norm_eps, 0, 1)
        check_range("pad_token_id", self.pad_token_id, 0, self.vocab_size - 1, integer=True)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        check_size(self.approx_params(), "BERT")

    def approx_params(self) -> int:
        d = self.n_embd
        per_layer = 4 * d * d + 2 * d * self.intermediate_size
        return (self.vocab_size + self.block_size + self.type_vocab_size) * d + self.n_layer * per_layer + 2 * d * d


class Bert(nn.Module):
    family = "bert"

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.n_embd, padding_idx=c.pad_token_id)
        self.pos_emb = nn.Embedding(c.block_size, c.n_embd)
        self.type_emb = nn.Embedding(c.type_vocab_size, c.n_embd)
        self.emb_norm = nn.LayerNorm(c.n_embd, eps=c.layer_norm_eps)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList([
            PostLNBlock(
                attn=CausalSelfAttention(c.n_embd, c.n_head, dropout=c.dropout),
                mlp=MLP(c.n_embd, c.intermediate_size, dropout=c.dropout, activation="gelu"),
                norm1=nn.LayerNorm(c.n_embd, eps=c.layer_norm_eps),
                norm2=nn.LayerNorm(c.n_embd, eps=c.layer_norm_eps),
            )
            for _ in range(c.n_layer)
        ])
        # masked-LM head: transform, then the word embeddings (transposed) as decoder, plus a bias
        self.mlm_dense = nn.Linear(c.n_embd, c.n_embd)
        self.mlm_norm = nn.LayerNorm(c.n_embd, eps=c.layer_norm_eps)
        self.mlm_bias = nn.Parameter(torch.zeros(c.vocab_size))
        # next-sentence head: pooler on [CLS], then two classes
        self.pooler = nn.Linear(c.n_embd, c.n_embd)
        self.nsp_head = nn.Linear(c.n_embd, 2)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """BERT's initialisation: normal(0, 0.02) weights, zero biases, the padding row zero."""
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()

    @property
    def max_positions(self) -> int:
        return self.config.block_size

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.pos_emb.weight.numel() + self.type_emb.weight.numel()
        return n

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                mlm_positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mlm_logits, nsp_logits)`` for ``input_ids`` ``(B, T)``.

        ``attention_mask`` ``(B, T)``: 1 for real tokens, 0 for padding (no query attends to padding).
        ``token_type_ids`` ``(B, T)``: 0 for segment A, 1 for segment B (default all 0).
        ``mlm_logits`` is ``(B, T, vocab)``, or ``(N, vocab)`` for the ``N`` True entries of the
        boolean ``mlm_positions`` ``(B, T)`` in row-major order. ``nsp_logits`` is ``(B, 2)``.
        """
        h = self.hidden_states(input_ids, attention_mask, token_type_ids)
        if mlm_positions is not None:
            h_mlm = h[mlm_positions]
        else:
            h_mlm = h
        return self.mlm_logits(h_mlm), self.nsp_logits(h)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The last block's output ``(B, T, n_embd)``: what both heads read."""
        B, T = input_ids.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens exceeds block_size {self.config.block_size}")
        positions = torch.arange(T, device=input_ids.device)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.tok_emb(input_ids) + self.pos_emb(positions)[None] + self.type_emb(token_type_ids)
        x = self.drop(self.emb_norm(x))
        # (B, 1, 1, T): every query sees every real key (bidirectional); an all-True mask is still
        # passed when nothing is padded, since no mask would make the attention causal
        if attention_mask is None:
            mask = torch.ones(B, 1, 1, T, dtype=torch.bool, device=input_ids.device)
        else:
            mask = attention_mask[:, None, None, :].bool()
        for block in self.blocks:
            x = block(x, mask=mask)
        return x

    def mlm_logits(self, h: torch.Tensor) -> torch.Tensor:
        h = self.mlm_norm(F.gelu(self.mlm_dense(h)))
        return F.linear(h, self.tok_emb.weight, self.mlm_bias)

    def nsp_logits(self, h: torch.Tensor) -> torch.Tensor:
        pooled = torch.tanh(self.pooler(h[:, 0]))  # the [CLS] position
        return self.nsp_head(pooled)
