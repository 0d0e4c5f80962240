"""Backends: one :class:`LanguageModel` protocol over native checkpoints, HF/GGUF models and
OpenAI-compatible servers. :func:`load` picks the backend for a spec through the registry in
:mod:`.registry`; importing this package registers every built-in entry."""

from __future__ import annotations

from . import http, native, ngram, transformers  # noqa: F401  (register their backends)
from .base import BackendError, Capabilities, LanguageModel, LoglikelihoodResult, RollingLoglikelihood
from .loading import load, load_chat_template
from .registry import BACKENDS, BackendEntry, ModelSpec, backends, register_backend, register_model, registered, resolve
from .speculative import SpeculativeLM, speculative
from .torch_lm import TorchLM

__all__ = ["BACKENDS", "BackendEntry", "BackendError", "Capabilities", "LanguageModel", "LoglikelihoodResult",
           "ModelSpec", "RollingLoglikelihood", "SpeculativeLM", "TorchLM", "backends", "load", "load_chat_template", "register_backend", "register_model",
           "registered", "resolve", "speculative"]
