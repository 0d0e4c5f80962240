"""Decoding for every causal model: HF-compatible logits processors, greedy, sampling, beam search."""

from .config import Decoding
from .search import GenerationOutput, generate, truncate_at_stop

__all__ = ["Decoding", "GenerationOutput", "generate", "truncate_at_stop"]
