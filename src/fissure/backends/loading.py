"""``fissure.load``: a model spec to a :class:`~.base.LanguageModel`, through the backend registry."""

from __future__ import annotations

from pathlib import Path

from ..models.llama import UnsupportedModelError
from ..models.quantize import DTYPES, set_dtype
from ..utils import resolve_dtype
from .base import BackendError, LanguageModel
from .registry import ModelSpec, resolve
from .torch_lm import TorchLM

MAX_BATCH = 4096  # prompts or windows per forward pass


def load(spec: str | Path, *, backend: str = "auto", model: str | None = None, batch_size: int = 8,
         dtype: str = "fp32", compile: bool = False, **kwargs) -> LanguageModel:
    """A language model from a spec:

    - a registered name (``"smollm2"``),
    - an ``http(s)://`` URL of an OpenAI-compatible server (``model`` names the served model),
    - a fissure checkpoint directory,
    - an HF model directory (Llama architectures run on the native Llama unless
      ``backend="transformers"``; others run through transformers, and ``backend="native"``
      is an error for them),
    - a ``.gguf`` file (likewise: a Llama file on the native Llama, any other architecture through
      transformers).

    ``dtype="bf16"`` runs a local model's weights in bfloat16, ``dtype="int8"`` quantises its linear
    layers to int8 (weight-only, per channel), ``dtype="int4"`` to int4 (per group of 32 weights;
    int8 for a layer whose shape the int4 kernel does not take): decoding is memory-bound, so fewer
    bytes per weight decode faster; results differ from fp32, int4's more than int8's. ``dtype="auto"``
    is bf16 where this CPU's bf16 matmuls beat fp32's (:func:`fissure.utils.bf16_verdict`), else fp32.

    ``compile=True`` compiles a native Llama's decoding step (:meth:`~fissure.models.llama.Llama.
    compile_decode_step`): about a minute before the first token, then faster steps.
    """
    if dtype not in DTYPES and dtype != "auto":
        raise BackendError(f"unknown dtype '{dtype}' (auto, {', '.join(DTYPES)})")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or not 1 <= batch_size <= MAX_BATCH:
        raise BackendError(f"batch size must be between 1 and {MAX_BATCH}, not {batch_size!r}")
    parsed = ModelSpec.parse(spec)
    entry = resolve(parsed, backend)
    try:
        lm = entry.load(parsed, model=model, batch_size=batch_size, **kwargs)
    except UnsupportedModelError:
        if backend != "auto" or entry.engine != "native":
            raise
        # a .gguf file of an architecture the native Llama does not run (gemma3, ...): the
        # architecture is in the file, read only by trying, so auto falls back here
        lm = resolve(parsed, "transformers").load(parsed, model=model, batch_size=batch_size, **kwargs)
    if isinstance(lm, TorchLM):
        set_dtype(lm.model, resolve_dtype(dtype))
    if compile:
        if not hasattr(getattr(lm, "model", None), "compile_decode_step"):
            raise BackendError(f"compile is for models on the native Llama; {spec} runs on "
                               f"'{lm.capabilities.backend}'")
        lm.model.compile_decode_step()
    return lm


def load_chat_template(spec: str | Path):
    """The chat template of a local model, as ``(render(messages) -> text, source)``: what a local
    backend would render (the assistant turn opened). A ``.gguf`` file or an HF directory gives
    its tokenizer's template without loading weights; any other spec is loaded whole."""
    from .tokenizer import HFTokenizer

    parsed = ModelSpec.parse(spec)
    tokenizer = None
    if parsed.is_gguf or parsed.text == "smollm2":  # the named model is a GGUF shipped in a package
        from ..models.gguf import load_gguf_tokenizer
        from ..models.registry_files import smollm2_gguf_path

        tokenizer = HFTokenizer(load_gguf_tokenizer(parsed.path if parsed.is_gguf else smollm2_gguf_path()))
    elif parsed.exists and parsed.path.is_dir() and (parsed.path / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = HFTokenizer(AutoTokenizer.from_pretrained(parsed.path, local_files_only=True))
    if tokenizer is not None:
        render = tokenizer.chat_template_fn()
    else:
        lm = load(spec)
        render = getattr(lm, "chat_template", None)
    if render is None:
        raise BackendError(f"{spec} has no chat template to render chats with")
    return render, str(spec)
