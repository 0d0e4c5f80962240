"""Decoding for every causal model: HF-compatible logits processors, greedy, sampling, beam search."""

from .config import Decoding
from .search import GenerationOutput, end_tokens, generate, truncate_at_stop

__all__ = ["Decoding", "GenerationOutput", "end_tokens", "generate", "truncate_at_stop"]
