"""Training objectives. An objective samples a batch from its data and returns a scalar loss.

Only the causal-LM objective exists now; masked LM, seq2seq, classification and weighted
multi-task mixes register here under their own names.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F


class Objective(Protocol):
    name: str

    def sample_batch(self, data, batch_size: int, block_size: int, generator: torch.Generator) -> tuple: ...

    def eval_batches(self, data, batch_size: int, block_size: int, max_batches: int): ...

    def loss(self, model: torch.nn.Module, batch: tuple) -> torch.Tensor: ...

    def tokens_in(self, batch: tuple) -> int: ...


class CausalLM:
    """Next-token prediction: cross-entropy of ``y[t]`` given ``x[:t+1]``."""

    name = "causal_lm"

    def sample_batch(self, data, batch_size, block_size, generator):
        return data.sample_batch(batch_size, block_size, generator)

    def eval_batches(self, data, batch_size, block_size, max_batches):
        for i, batch in enumerate(data.iter_batches(batch_size, block_size)):
            if i >= max_batches:
                break
            yield batch

    def loss(self, model, batch):
        x, y = batch
        logits = model(x)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))

    def tokens_in(self, batch):
        return batch[0].numel()


OBJECTIVES: dict[str, type] = {"causal_lm": CausalLM}
