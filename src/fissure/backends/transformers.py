"""Any local HF causal LM (a directory, or a GGUF file) through ``transformers``, offline.

The HF model is wrapped in fissure's causal-model protocol (:class:`HFCausalModel`), so it runs
through the same log-likelihood and decoding code as our own models: batching, left padding and
decoding semantics are identical across backends, and only the network differs.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from types import SimpleNamespace

import torch

from ..models.attention import positions_from_mask
from .base import BackendError
from .registry import ModelSpec, register_backend, register_model
from .tokenizer import HFTokenizer
from .torch_lm import TorchLM


class _HFCache:
    """Adapts an HF ``Cache`` to the interface our decoding uses (``length``, ``reorder``)."""

    def __init__(self):
        self.cache = None
        self.length = 0

    def reorder(self, index: torch.Tensor) -> None:
        if self.cache is not None:
            self.cache.reorder_cache(index)

    def __copy__(self) -> "_HFCache":
        """A copy that another ``reorder`` leaves alone (HF reorders its layers in place)."""
        out = _HFCache()
        out.cache, out.length = copy.deepcopy(self.cache), self.length
        return out


class HFCausalModel(torch.nn.Module):
    """An HF ``*ForCausalLM`` seen through fissure's model protocol."""

    family = "transformers"

    def __init__(self, hf_model):
        super().__init__()
        self.hf = hf_model.eval()
        cfg = hf_model.config
        self.config = SimpleNamespace(vocab_size=hf_model.get_output_embeddings().weight.shape[0],
                                      n_embd=getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None))
        self.max_positions = int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 2048))

    def hidden_states(self, input_ids, attention_mask=None, position_ids=None, kv_cache=None):
        """The last layer's hidden states (after the final norm), ``(B, T, hidden)``."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, input_ids.shape[1])
        out = self.hf(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      output_hidden_states=True, use_cache=False)
        return out.hidden_states[-1]

    def new_kv_cache(self, batch: int, max_len: int | None = None) -> _HFCache:
        return _HFCache()

    def forward(self, input_ids, attention_mask=None, position_ids=None, kv_cache=None, logits_to_keep=0):
        B, T = input_ids.shape
        past = kv_cache.length if kv_cache is not None else 0
        if attention_mask is None:
            attention_mask = torch.ones(B, past + T, dtype=torch.long)
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, T)
        out = self.hf(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      past_key_values=kv_cache.cache if kv_cache is not None else None,
                      use_cache=kv_cache is not None, logits_to_keep=logits_to_keep)
        if kv_cache is not None:
            kv_cache.cache = out.past_key_values
            kv_cache.length += T
        return out.logits


def load_transformers(path: str | Path, *, name: str | None = None, dtype: torch.dtype = torch.float32,
                      batch_size: int = 8) -> TorchLM:
    """An HF directory or ``.gguf`` file as a :class:`TorchLM`; never touches the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise BackendError("the transformers backend needs transformers: pip install 'fissure[hf]'") from None
    path = Path(path)
    kwargs = {"local_files_only": True}
    if path.suffix == ".gguf":
        kwargs["gguf_file"] = path.name
        where = path.parent
    else:
        where = path
    try:
        tok = AutoTokenizer.from_pretrained(where, **kwargs)
        hf = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kwargs)
    except (OSError, ValueError, KeyError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise BackendError(f"transformers cannot load {path}: {first}") from None
    tokenizer = HFTokenizer(tok)
    return TorchLM(HFCausalModel(hf), tokenizer, name=name or str(path), backend="transformers",
                   batch_size=batch_size, chat_template=tokenizer.chat_template_fn())


@register_backend("transformers", description="any HF causal LM through transformers' AutoModelForCausalLM",
                  accepts="an HF directory (config.json with model_type) or a .gguf file",
                  matches=lambda spec: spec.is_gguf or (spec.config is not None and "model_type" in spec.config),
                  priority=10, engine="transformers")
def load_spec(spec: ModelSpec, *, batch_size: int = 8, **_) -> TorchLM:
    return load_transformers(spec.path, batch_size=batch_size)


@register_model("gemma3-270m", description="Gemma 3 270M (Q4_K_M GGUF from PyPI, dequantised) through transformers; "
                                           "a base model, no chat template")
def load_gemma3_270m(spec: ModelSpec, *, batch_size: int = 8, **_) -> TorchLM:
    from ..models.registry_files import gemma3_270m_gguf_path

    return load_transformers(gemma3_270m_gguf_path(), name="gemma3-270m", batch_size=batch_size)
