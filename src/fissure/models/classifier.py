"""A sequence classifier on top of any language model that exposes its hidden states.

The base model (our GPT or Llama, or an HF model seen through the same protocol) reads the text;
a linear head maps one pooled hidden state to class logits:

- ``last``: the state of each row's last real token, which under causal attention has read the
  whole text (what HF's ``*ForSequenceClassification`` does for decoder models);
- ``mean``: the average over the row's real tokens.

Rows are right-padded; ``attention_mask`` marks real tokens.
"""

from __future__ import annotations

import torch
import torch.nn as nn

POOLINGS = ("last", "mean")


class SequenceClassifier(nn.Module):
    family = "classifier"

    def __init__(self, base: nn.Module, n_classes: int, hidden_size: int, pooling: str = "last"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
        if n_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, not {n_classes}")
        self.base, self.pooling = base, pooling
        self.head = nn.Linear(hidden_size, n_classes)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    @property
    def max_positions(self) -> int:
        return self.base.max_positions

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits ``(B, n_classes)``."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        states = self.base.hidden_states(input_ids, attention_mask=attention_mask)
        mask = attention_mask.to(states.dtype)[..., None]
        if self.pooling == "mean":
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1)
        else:
            last = attention_mask.sum(1).clamp(min=1) - 1
            pooled = states[torch.arange(states.shape[0]), last]
        return self.head(pooled)
