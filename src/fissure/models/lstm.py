"""An LSTM language model, written to be read top to bottom like :mod:`.gpt`.

Token embedding -> dropout -> ``n_layer`` stacked LSTM layers (``nn.LSTM``, dropout between
layers) -> dropout -> a linear head (tied to the embedding by default, as Press & Wolf 2017 and
the AWD-LSTM do; tying needs the hidden size to equal the embedding size, which here it does:
both are ``n_embd``).

It speaks fissure's causal-model protocol, ``model(input_ids, attention_mask, position_ids,
kv_cache) -> logits``, so :class:`~fissure.backends.torch_lm.TorchLM`, the scorer and
``fissure.decode.generate`` drive it as they drive a GPT:

- the *recurrent state* ``(h, c)`` is its KV cache: :meth:`LSTM.new_kv_cache` returns an
  :class:`LSTMState` that a forward pass reads and replaces, with the KV cache's ``length``,
  ``advance`` and ``reorder`` (rows dropped or beams reordered);
- ``attention_mask`` marks padding. Right padding (what scoring uses) cannot change the real
  tokens' outputs of a left-to-right recurrence and is ignored. Left padding (what generation uses
  for a batch of prompts) would run the recurrence over pad tokens, so those rows are shifted to
  the left, packed (``pack_padded_sequence``: the recurrence stops at each row's last real token,
  so the state is the state after the real tokens) and shifted back;
- ``position_ids`` are accepted and unused: an LSTM knows order from its recurrence.

``block_size`` is the longest context it is trained on and, through ``max_positions``, the default
scoring window; the recurrence itself has no limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .limits import LIMITS, check_range, check_size


@dataclass
class LSTMConfig:
    vocab_size: int = 8192
    block_size: int = 256  # training sequence length and default scoring window
    n_layer: int = 2
    n_embd: int = 256  # embedding and hidden size
    dropout: float = 0.0
    tie_weights: bool = True  # share the token embedding with the output head
    bias: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_embd"):
            check_range(name, getattr(self, name), 1, LIMITS[name], integer=True)
        check_range("dropout", self.dropout, 0, 1)
        check_size(self.approx_params(), "LSTM")

    def approx_params(self) -> int:
        d = self.n_embd
        return self.vocab_size * d * (1 if self.tie_weights else 2) + self.n_layer * 8 * d * (d + 1)


class LSTMState:
    """The recurrent state of every layer, ``h`` and ``c`` of shape ``(n_layer, B, n_embd)``: what a
    KV cache is to a transformer (``length`` tokens read so far)."""

    def __init__(self, h: torch.Tensor, c: torch.Tensor):
        self.h, self.c = h, c
        self.length = 0

    def advance(self, n: int) -> None:
        self.length += n

    def reorder(self, index: torch.Tensor) -> None:
        """Keep (or repeat) batch rows ``index``: rows that finished leave, beams follow their parents."""
        self.h = self.h.index_select(1, index)
        self.c = self.c.index_select(1, index)

    @property
    def batch_size(self) -> int:
        return self.h.shape[1]


class LSTM(nn.Module):
    family = "lstm"
    gradient_checkpointing = False  # not used by a recurrence; here so trainers can set it on any family

    def __init__(self, config: LSTMConfig):
        super().__init__()
        self.config = config
        c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.n_embd)
        self.drop = nn.Dropout(c.dropout)
        self.rnn = nn.LSTM(c.n_embd, c.n_embd, num_layers=c.n_layer, bias=c.bias, batch_first=True,
                           dropout=c.dropout if c.n_layer > 1 else 0.0)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        if c.tie_weights:
            self.lm_head.weight = self.tok_emb.weight
        # AWD-LSTM's init: embedding (and an untied head) uniform in [-0.1, 0.1]; nn.LSTM keeps its
        # own, uniform(-1/sqrt(H), 1/sqrt(H)) for every weight and bias
        nn.init.uniform_(self.tok_emb.weight, -0.1, 0.1)
        if not c.tie_weights:
            nn.init.uniform_(self.lm_head.weight, -0.1, 0.1)

    @property
    def max_positions(self) -> int:
        return self.config.block_size

    def num_params(self, non_embedding: bool = True) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_kv_cache(self, batch: int, max_len: int | None = None) -> LSTMState:
        c, p = self.config, self.tok_emb.weight
        zeros = torch.zeros(c.n_layer, batch, c.n_embd, dtype=p.dtype, device=p.device)
        return LSTMState(zeros, zeros.clone())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, kv_cache: LSTMState | None = None,
                logits_to_keep: int = 0) -> torch.Tensor:
        """Logits ``(B, T, vocab)`` for ``input_ids`` ``(B, T)``; ``kv_cache`` (an :class:`LSTMState`)
        is the state before them and is replaced by the state after them; ``logits_to_keep = k`` > 0
        projects only the last ``k`` positions."""
        h = self.hidden_states(input_ids, attention_mask, position_ids, kv_cache)
        return self.lm_head(h[:, -logits_to_keep:] if logits_to_keep else h)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None, kv_cache: LSTMState | None = None) -> torch.Tensor:
        """The top layer's outputs ``(B, T, n_embd)``: what the head reads."""
        B, T = input_ids.shape
        state = (kv_cache.h, kv_cache.c) if kv_cache is not None else None
        x = self.drop(self.tok_emb(input_ids))
        mask = None if attention_mask is None else attention_mask[:, -T:].bool()
        if mask is None or _only_right_padding(mask):
            out, (h, c) = self.rnn(x, state)
        else:
            out, (h, c) = self._run_left_padded(x, mask, state)
        if kv_cache is not None:
            kv_cache.h, kv_cache.c = h, c
            kv_cache.advance(T)
        return self.drop(out)

    def _run_left_padded(self, x: torch.Tensor, mask: torch.Tensor, state):
        """Rows with padding before real tokens: shifted left, packed so the recurrence reads real tokens
        only, shifted back (outputs at pad positions are zeros). A row with no real token keeps its state."""
        B, T, _ = x.shape
        lengths = mask.sum(dim=1)
        first = mask.float().argmax(dim=1)  # index of each row's first real token
        index = (first[:, None] + torch.arange(T, device=x.device)[None]) % T
        shifted = x.gather(1, index[:, :, None].expand_as(x))
        rows = lengths > 0
        out = x.new_zeros(x.shape)
        h = x.new_zeros(self.config.n_layer, B, self.config.n_embd) if state is None else state[0].clone()
        c = torch.zeros_like(h) if state is None else state[1].clone()
        if bool(rows.any()):
            sub_state = None if state is None else (state[0][:, rows].contiguous(), state[1][:, rows].contiguous())
            packed = pack_padded_sequence(shifted[rows], lengths[rows].cpu(), batch_first=True, enforce_sorted=False)
            packed_out, (h_rows, c_rows) = self.rnn(packed, sub_state)
            ran, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=T)
            back = (torch.arange(T, device=x.device)[None] - first[rows, None]) % T  # undo the shift
            out[rows] = ran.gather(1, back[:, :, None].expand_as(ran)) * mask[rows, :, None]
            h[:, rows], c[:, rows] = h_rows, c_rows
        return out, (h, c)


def _only_right_padding(mask: torch.Tensor) -> bool:
    """True when no row has a pad before a real token (a mask that never rises along a row)."""
    return bool((mask[:, 1:] <= mask[:, :-1]).all())
