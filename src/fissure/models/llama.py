"""A Llama, written to be read top to bottom.

Token embedding -> ``n_layer`` pre-norm blocks of grouped-query self-attention with rotary
positions and a SwiGLU feed-forward (RMSNorm before each) -> final RMSNorm -> a linear head,
optionally tied to the embedding. No biases anywhere. This is the architecture of Llama 2/3,
SmolLM2, TinyLlama and friends; weights load from HF (:mod:`.hf_llama`) or GGUF (:mod:`.gguf`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ..errors import UserError
from .attention import CausalSelfAttention, KVCache, RotaryEmbedding, attention_mask_4d, resolve_positions
from .blocks import PreLNBlock, RMSNorm, SwiGLU
from .decode_linear import use_decode_linears
from .limits import LIMITS, check_range, check_size


class UnsupportedModelError(UserError):
    """Weights of an architecture (or an architecture variant) that fissure cannot run natively."""


@dataclass
class LlamaConfig:
    vocab_size: int = 32000
    block_size: int = 2048  # longest context the model sees
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int = 4  # < n_head: grouped-query attention
    n_embd: int = 768
    intermediate_size: int = 2048
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_weights: bool = False  # share the token embedding with the output head
    head_dim: int | None = None  # None: n_embd // n_head
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None  # HF allows several end tokens

    def __post_init__(self) -> None:
        for name, most in {**LIMITS, "n_kv_head": LIMITS["n_head"], "intermediate_size": 2**20}.items():
            check_range(name, getattr(self, name), 1, most, integer=True)
        check_range("rms_norm_eps", self.rms_norm_eps, 0, 1)
        check_range("rope_theta", self.rope_theta, 0, lo_open=True)
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        if self.head_dim is None:
            if self.n_embd % self.n_head:
                raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
            self.head_dim = self.n_embd // self.n_head
        check_range("head_dim", self.head_dim, 1, LIMITS["n_embd"], integer=True)
        if self.bos_token_id is not None:
            check_range("bos_token_id", self.bos_token_id, 0, 2**63 - 1, integer=True)
        for eos in self.eos_token_id if isinstance(self.eos_token_id, list) else [self.eos_token_id]:
            if eos is not None:
                check_range("eos_token_id", eos, 0, 2**63 - 1, integer=True)
        check_size(self.approx_params(), "Llama")

    def approx_params(self) -> int:
        """Parameters, roughly: what building the model allocates (in floats)."""
        d, q, kv = self.n_embd, self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        per_layer = d * (2 * q + 2 * kv) + 3 * d * self.intermediate_size
        return self.vocab_size * d * (1 if self.tie_weights else 2) + self.n_layer * per_layer


class Llama(nn.Module):
    family = "llama"
    packs_continuations = True  # takes a 4-D attention mask with position ids (scoring.score_after)
    gradient_checkpointing = False  # set True to trade compute for activation memory in training

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.decode_step = None  # set by compile_decode_step
        self.config = c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.n_embd)
        self.rotary = RotaryEmbedding(c.head_dim, base=c.rope_theta)
        self.blocks = nn.ModuleList([
            PreLNBlock(
                attn=CausalSelfAttention(c.n_embd, c.n_head, n_kv_head=c.n_kv_head, bias=False,
                                         fused_qkv=False, head_dim=c.head_dim),
                mlp=SwiGLU(c.n_embd, c.intermediate_size, bias=False),
                norm1=RMSNorm(c.n_embd, eps=c.rms_norm_eps),
                norm2=RMSNorm(c.n_embd, eps=c.rms_norm_eps),
            )
            for _ in range(c.n_layer)
        ])
        self.norm_f = RMSNorm(c.n_embd, eps=c.rms_norm_eps)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        if c.tie_weights:
            self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # Llama's init: N(0, 0.02) for every matrix; RMSNorm weights start at 1 (their own init).
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def max_positions(self) -> int:
        return self.config.block_size

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_kv_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        c = self.config
        p = self.tok_emb.weight
        return KVCache(c.n_layer, batch, c.n_kv_head, c.head_dim, max_len or c.block_size,
                       dtype=p.dtype, device=p.device)

    @torch.no_grad()
    def fuse_projections(self) -> "Llama":
        """q/k/v and gate/up as one matmul each, and every projection (the head included) a
        :class:`~.decode_linear.DecodeLinear`, fast for the few rows of a decoding step: same
        function, fewer and faster matmuls when decoding. Weights keep their values (no copies: a
        tied head stays tied); the module layout no longer matches HF's names (fuse after
        training)."""
        for block in self.blocks:
            block.attn.fuse()
            block.mlp.fuse()
        use_decode_linears(self)
        return self

    def compile_decode_step(self) -> "Llama":
        """Compile this model's forward pass for decoding steps (``torch.compile``, inductor, with
        the batch and cache length dynamic): generation (:func:`fissure.decode.generate`) then runs
        its one-token steps through :attr:`decode_step`, the prompt's prefill stays eager. Each
        new kind of step (with or without a padding mask, up to 4 rows or more) compiles on first
        use: up to about two minutes on 2 cores, seconds once inductor's on-disk cache holds it. Worth it for
        long generations: per token, a few fused kernels replace about a thousand small ops.
        A copy of the model (``copy.deepcopy``) is not compiled.

        Two inductor settings, each measured faster for a one-token step (benchmarks/README.md):
        a C++ wrapper calls the kernels (not generated Python), and no pattern rewriting, which
        would turn the written-out one-query attention into SDPA's flash kernel."""
        self.decode_step = torch.compile(self.forward, dynamic=True,
                                         options={"cpp_wrapper": True, "pattern_matcher": False})
        return self

    def __getstate__(self) -> dict:  # a copy's compiled step would run this model, not the copy
        return {**self.__dict__, "decode_step": None}

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
        mask = attention_mask_4d(attention_mask, T, past, B, input_ids.device)
        x = self.tok_emb(input_ids)
        rotary = tuple(t.to(x.dtype) for t in self.rotary(position_ids))  # once, shared by every layer
        for i, block in enumerate(self.blocks):
            if self.gradient_checkpointing and self.training:  # recompute in backward: less memory
                x = checkpoint(block, x, mask=mask, layer=i, rotary=rotary, use_reentrant=False)
            else:
                x = block(x, mask=mask, layer=i, kv_cache=kv_cache, rotary=rotary)
        if kv_cache is not None:
            kv_cache.advance(T)
        return self.norm_f(x)
