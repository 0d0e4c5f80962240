"""A linear layer that is fast when decoding on a CPU: few rows in fp32, any rows in bf16."""

from __future__ import annotations

import itertools
import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F

ONEDNN = torch.backends.mkldnn.is_available()
_LAYERS: "weakref.WeakValueDictionary[int, DecodeLinear]" = weakref.WeakValueDictionary()  # key -> layer
_KEYS = itertools.count()


@torch.library.custom_op("fissure::onednn_linear", mutates_args=())
def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, layer: int) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` in bf16 through oneDNN with the weight reordered once: the
    :class:`DecodeLinear` numbered ``layer`` keeps the reordered copy. A custom op, so that a
    compiled step calls it as one opaque kernel (the oneDNN tensor cannot be traced)."""
    return torch.ops.mkldnn._linear_pointwise(x, _LAYERS[layer]._reordered(), bias, "none", [], "")


@onednn_linear.register_fake
def _(x, weight, bias, layer):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


class DecodeLinear(nn.Linear):
    """An ``nn.Linear`` with two faster inference paths on a CPU, chosen by dtype and row count
    (measured on SmolLM2's projections, 2 threads, weights streamed from memory):

    - **fp32, at most** ``max_rows`` **rows** (a decoding step, a speculative block): one batched
      matmul over ``splits`` slices of the weight's rows, no copy. MKL's one-row path reads the
      weight at 8-10 GB/s; the batched form at 25-40 GB/s (gate/up x 30 layers 24 ms -> 7 ms, the
      49,152-row head 12 ms -> 4 ms; 2x also on one thread).
    - **bf16, any rows**: oneDNN with the weight reordered once into its blocked layout (plain
      ``F.linear`` reorders it on every call): 1.3-1.5x at 32 rows, about 2x at one, identical
      results. The reordered copy costs the weight's size again in memory; it is made on first
      use and remade whenever the weight changed (an optimizer step, a LoRA merge). Inside
      ``torch.compile`` the same call is the custom op :func:`onednn_linear` (a compiled bf16
      sampling step at batch 32: 1.22x the tokens/s of letting inductor run ``F.linear``).

    Everything else (more fp32 rows, other dtypes, gradients, other devices) is ``F.linear``.
    Made by :meth:`from_linear`, which shares the parameters (a head tied to the embedding stays
    tied); state-dict names are ``nn.Linear``'s."""

    max_rows = 4  # at most this many fp32 input rows take the batched path
    splits = 4
    min_weights = 2**16  # smaller weights sit in cache: the extra ops cost more than they save
    # (measured: a 2 x 64 GPT decoded 1,350 tokens/s batched against 1,807 plain)
    _packed = None  # (key of the weight it was made from, oneDNN tensor), made on first bf16 use

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._register()

    def _register(self) -> None:  # a number the compiled op finds this layer by
        self._key = next(_KEYS)
        _LAYERS[self._key] = self

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "DecodeLinear":
        new = cls(linear.in_features, linear.out_features, bias=False, device="meta")
        new.weight, new.bias = linear.weight, linear.bias
        return new

    def __getstate__(self) -> dict:  # copies and pickles drop the oneDNN copy (it cannot be copied)
        return {**self.__dict__, "_packed": None}

    def __setstate__(self, state: dict) -> None:  # a copy is a layer of its own
        super().__setstate__(state)
        self._register()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if w.device.type != "cpu" or (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad)):
            return F.linear(x, w, self.bias)
        if w.dtype == torch.bfloat16 and ONEDNN:
            if torch.compiler.is_compiling():
                return onednn_linear(x, w, self.bias, self._key)
            return torch.ops.mkldnn._linear_pointwise(x, self._reordered(), self.bias, "none", [], "")
        rows = x.numel() // self.in_features
        if (w.dtype != torch.float32 or rows > self.max_rows or self.out_features % self.splits
                or w.numel() < self.min_weights):
            return F.linear(x, w, self.bias)
        s, n, k = self.splits, self.out_features, self.in_features
        flat = x.reshape(rows, k)
        y = torch.bmm(w.view(s, n // s, k), flat.t().unsqueeze(0).expand(s, k, rows))  # (s, n/s, rows)
        y = y.view(n, rows).t() if rows == 1 else y.permute(2, 0, 1).reshape(rows, n)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], n)

    def _reordered(self) -> torch.Tensor:
        w = self.weight
        try:
            version = w._version
        except RuntimeError:  # an inference-mode tensor has no version counter (and is never trained)
            version = -1
        key = (w.data_ptr(), version)
        if self._packed is None or self._packed[0] != key:
            self._packed = (key, torch.ops.mkldnn._reorder_linear_weight(w.detach(), 32))
        return self._packed[1]


def replace_linears(model: nn.Module, make) -> nn.Module:
    """Replace every ``nn.Linear`` (subclasses included) in ``model`` with ``make(linear)``. In
    place; returns the model."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, make(child))
    return model


def use_decode_linears(model: nn.Module) -> nn.Module:
    """Swap every plain ``nn.Linear`` in ``model`` for a :class:`DecodeLinear` sharing its
    parameters (one already a ``DecodeLinear`` stays). In place; returns the model."""
    return replace_linears(model, lambda linear: linear if isinstance(linear, DecodeLinear)
                           else DecodeLinear.from_linear(linear))
