"""Load HF Llama-architecture weights (``LlamaForCausalLM`` layout) into our :class:`Llama`.

Only ``config.json`` and ``*.safetensors`` are read, with the ``safetensors`` library:
transformers is not needed. Our module names differ from HF's, so the weights are
renamed (see :func:`hf_to_native_name`); the matrices themselves are identical.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file

from ..errors import CheckpointError
from .attention import RotaryEmbedding
from .llama import Llama, LlamaConfig, UnsupportedModelError

_LAYER_NAMES = {
    "input_layernorm": "norm1",
    "self_attn.q_proj": "attn.q_proj",
    "self_attn.k_proj": "attn.k_proj",
    "self_attn.v_proj": "attn.v_proj",
    "self_attn.o_proj": "attn.out",
    "post_attention_layernorm": "norm2",
    "mlp.gate_proj": "mlp.gate",
    "mlp.up_proj": "mlp.up",
    "mlp.down_proj": "mlp.down",
}
_TOP_NAMES = {"model.embed_tokens.weight": "tok_emb.weight", "model.norm.weight": "norm_f.weight",
              "lm_head.weight": "lm_head.weight"}
_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)\.weight")


def hf_to_native_name(name: str) -> str | None:
    """Our parameter name for an HF Llama parameter name (``None`` if it is not one)."""
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    m = _LAYER_RE.fullmatch(name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"blocks.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.weight"
    return None


def native_to_hf_name(name: str) -> str:
    """HF's name for one of our Llama's parameter names (the reverse of :func:`hf_to_native_name`)."""
    top = {v: k for k, v in _TOP_NAMES.items()}
    if name in top:
        return top[name]
    layer, rest = name.removeprefix("blocks.").split(".", 1)
    hf = {v: k for k, v in _LAYER_NAMES.items()}[rest.removesuffix(".weight")]
    return f"model.layers.{layer}.{hf}.weight"


def config_from_hf(hf_config: Mapping[str, Any] | Any) -> LlamaConfig:
    """A :class:`LlamaConfig` from an HF ``LlamaConfig`` or its ``config.json`` dict.

    HF's names become ours (see :mod:`fissure.models`): ``max_position_embeddings`` ->
    ``block_size``, ``tie_word_embeddings`` -> ``tie_weights``, ``num_hidden_layers`` -> ``n_layer``,
    ``num_attention_heads`` -> ``n_head``, ``num_key_value_heads`` -> ``n_kv_head``, ``hidden_size`` -> ``n_embd``.

    Understands both the transformers 4 (``rope_theta``, ``rope_scaling``) and the
    transformers 5 (``rope_parameters``) spelling of the rotary settings. Variants we do
    not implement (rope scaling, biases, another activation) raise instead of running wrong.
    """
    c = dict(hf_config) if isinstance(hf_config, Mapping) else hf_config.to_dict()
    if c.get("model_type", "llama") != "llama":
        raise UnsupportedModelError(f"model_type '{c['model_type']}' is not supported; supported: llama")
    rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise UnsupportedModelError(f"rope scaling '{rope_type}' is not supported; supported: default (none)")
    if c.get("attention_bias") or c.get("mlp_bias"):
        raise UnsupportedModelError("Llama with attention_bias or mlp_bias is not supported")
    if c.get("hidden_act", "silu") != "silu":
        raise UnsupportedModelError(f"hidden_act '{c['hidden_act']}' is not supported; supported: silu")
    missing = [k for k in ("vocab_size", "max_position_embeddings", "num_hidden_layers", "num_attention_heads",
                           "hidden_size", "intermediate_size", "rms_norm_eps") if k not in c]
    if missing:
        raise CheckpointError(f"Llama config lacks '{missing[0]}'")
    return LlamaConfig(
        vocab_size=c["vocab_size"],
        block_size=c["max_position_embeddings"],
        n_layer=c["num_hidden_layers"],
        n_head=c["num_attention_heads"],
        n_kv_head=c.get("num_key_value_heads") or c["num_attention_heads"],
        n_embd=c["hidden_size"],
        intermediate_size=c["intermediate_size"],
        rms_norm_eps=c["rms_norm_eps"],
        rope_theta=rope.get("rope_theta", c.get("rope_theta", 10000.0)),
        tie_weights=bool(c.get("tie_word_embeddings", False)),
        head_dim=c.get("head_dim"),
        bos_token_id=c.get("bos_token_id"),
        eos_token_id=c.get("eos_token_id"),
    )


def config_to_hf(config: LlamaConfig) -> dict[str, Any]:
    """The ``config.json`` dict of an HF ``LlamaForCausalLM`` with this configuration, in HF's
    names (the reverse of :func:`config_from_hf`)."""
    c = config
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": c.vocab_size, "max_position_embeddings": c.block_size,
        "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head, "num_key_value_heads": c.n_kv_head,
        "hidden_size": c.n_embd, "intermediate_size": c.intermediate_size, "head_dim": c.head_dim,
        "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_theta, "rope_scaling": None,
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
        "tie_word_embeddings": c.tie_weights,
        "bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id,
    }


def _uninitialised_llama(config: LlamaConfig, dtype: torch.dtype) -> Llama:
    """A :class:`Llama` with uninitialised weights, built without the random init that loading
    overwrites anyway (that init takes seconds for a 135M model)."""
    with torch.device("meta"):
        model = Llama(config)
    model = model.to_empty(device="cpu").to(dtype)
    model.rotary = RotaryEmbedding(config.head_dim, base=config.rope_theta)  # its buffer was on "meta"
    if config.tie_weights:  # moving off "meta" made two separate parameters
        model.lm_head.weight = model.tok_emb.weight
    return model


@torch.no_grad()
def llama_from_hf_state_dict(hf_config: Mapping[str, Any] | Any, state_dict: Mapping[str, torch.Tensor],
                             dtype: torch.dtype = torch.float32) -> Llama:
    """A :class:`Llama` in eval mode with the weights of an HF Llama ``state_dict``."""
    config = config_from_hf(hf_config)
    native: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        ours = hf_to_native_name(name)
        if ours is None:
            if name.endswith("rotary_emb.inv_freq"):  # a buffer older checkpoints saved; we recompute it
                continue
            raise CheckpointError(f"unexpected weight '{name}' in a Llama checkpoint")
        native[ours] = tensor
    if config.tie_weights:
        native.pop("lm_head.weight", None)  # the head is the embedding
    model = _uninitialised_llama(config, dtype)
    expected = {k for k in model.state_dict() if not (config.tie_weights and k == "lm_head.weight")}
    missing = sorted(expected - native.keys())
    if missing:
        raise CheckpointError(f"Llama checkpoint lacks {len(missing)} weights, e.g. '{missing[0]}'")
    params = dict(model.named_parameters())
    for name, tensor in native.items():
        if params[name].shape != tensor.shape:
            raise CheckpointError(f"weight '{name}' has shape {tuple(tensor.shape)}, "
                                  f"config expects {tuple(params[name].shape)}")
        params[name].copy_(tensor)
    return model.eval()


def load_hf_llama_dir(path: str | Path, dtype: torch.dtype = torch.float32) -> Llama:
    """A :class:`Llama` from an HF model directory (``config.json`` + one or more ``*.safetensors``;
    ``generation_config.json``'s end tokens, when there, replace ``config.json``'s as in HF's ``generate``)."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path} is not an HF model directory: no config.json")
    weight_files = sorted(path.glob("model*.safetensors"))  # not a training run's optimizer/rng files
    if not weight_files:
        raise CheckpointError(f"{path} has no model*.safetensors weights (pickled .bin files are not loaded)")
    try:
        hf_config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_file} is not valid JSON: {e}") from None
    generation_file = path / "generation_config.json"  # HF's generate reads its end tokens from here first
    if generation_file.is_file():
        try:
            eos = json.loads(generation_file.read_text()).get("eos_token_id")
        except (json.JSONDecodeError, AttributeError):
            raise CheckpointError(f"{generation_file} is not a JSON object") from None
        if eos is not None:
            hf_config = {**hf_config, "eos_token_id": eos}
    state_dict: dict[str, torch.Tensor] = {}
    for f in weight_files:
        state_dict.update(load_file(f))
    return llama_from_hf_state_dict(hf_config, state_dict, dtype=dtype)


def save_hf_llama_dir(model: Llama, path: str | Path) -> None:
    """Write ``config.json`` and ``model.safetensors`` in HF's ``LlamaForCausalLM`` layout, so
    ``transformers`` loads the directory with ``from_pretrained`` (and so does fissure)."""
    from safetensors.torch import save_file

    if any(getattr(block.attn, "fused_qkv", False) or hasattr(block.mlp, "gate_up") for block in model.blocks):
        raise CheckpointError("save the model before fusing its projections (fused layers have no HF names)")
    path = Path(path)
    state = {native_to_hf_name(name): tensor.detach().contiguous()
             for name, tensor in model.state_dict().items()}
    if model.config.tie_weights:
        state.pop("lm_head.weight", None)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config_to_hf(model.config), indent=2) + "\n")
