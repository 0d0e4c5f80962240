"""Read a Llama-architecture GGUF file (llama.cpp's format) into our :class:`Llama`.

The tensors are read and dequantised with the ``gguf`` package (numpy, about a second for a
135M model), then renamed to the HF layout so :func:`.hf_llama.llama_from_hf_state_dict`
does the rest. One subtlety: llama.cpp's converter permutes the rows of the Q and K
projections so that its rotary kernel can rotate adjacent pairs (x0, x1), (x2, x3), ...;
HF and we rotate halves (x0, x_{d/2}), ... :func:`unpermute_rotary` undoes that.

The tokenizer needs transformers (it rebuilds a fast tokenizer and the chat template
from the GGUF metadata); the weights do not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from .hf_llama import config_to_hf, llama_from_hf_state_dict
from .llama import Llama, LlamaConfig, UnsupportedModelError

SUPPORTED_ARCHITECTURES = ("llama",)

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}


def _reader(path: str | Path):
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"GGUF file not found: {path}")
    try:
        return GGUFReader(path)
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable GGUF file: {e}") from None


def _field(reader, key: str, default: Any = None) -> Any:
    field = reader.get_field(key)
    return default if field is None else field.contents()


def gguf_architecture(reader) -> str:
    """``general.architecture`` of the file, checked against what we can run."""
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(f"GGUF architecture '{arch}' is not supported; "
                                    f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    return arch


def config_from_gguf(reader) -> LlamaConfig:
    """A :class:`LlamaConfig` from the ``llama.*`` metadata of a GGUF file."""
    a = gguf_architecture(reader)
    scaling = _field(reader, f"{a}.rope.scaling.type", "none")
    if scaling != "none":
        raise UnsupportedModelError(f"GGUF rope scaling '{scaling}' is not supported; supported: none")
    n_embd, n_head = _field(reader, f"{a}.embedding_length"), _field(reader, f"{a}.attention.head_count")
    head_dim = _field(reader, f"{a}.attention.key_length", n_embd // n_head)
    if _field(reader, f"{a}.rope.dimension_count", head_dim) != head_dim:
        raise UnsupportedModelError("GGUF with rotary on part of each head is not supported")
    tensor_names = {t.name for t in reader.tensors}
    vocab = _field(reader, f"{a}.vocab_size") or len(reader.get_field("tokenizer.ggml.tokens").data)
    return LlamaConfig(
        vocab_size=vocab,
        block_size=_field(reader, f"{a}.context_length"),
        n_layer=_field(reader, f"{a}.block_count"),
        n_head=n_head,
        n_kv_head=_field(reader, f"{a}.attention.head_count_kv", n_head),
        n_embd=n_embd,
        intermediate_size=_field(reader, f"{a}.feed_forward_length"),
        rms_norm_eps=float(_field(reader, f"{a}.attention.layer_norm_rms_epsilon")),
        rope_theta=float(_field(reader, f"{a}.rope.freq_base", 10000.0)),
        tie_weights="output.weight" not in tensor_names,
        head_dim=head_dim,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"),
    )


def unpermute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation: within each head, rows were reordered from
    (first half, second half) to interleaved pairs; put them back."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_to_hf_name(name: str) -> str:
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    parts = name.split(".")  # blk.N.attn_q.weight
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_NAMES and parts[3] == "weight":
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.weight"
    raise UnsupportedModelError(f"GGUF tensor '{name}' is not part of a plain Llama")


def read_gguf_llama(path: str | Path) -> tuple[LlamaConfig, dict[str, torch.Tensor]]:
    """Configuration and dequantised float32 weights (HF names) of a Llama GGUF file."""
    from gguf.quants import dequantize

    reader = _reader(path)
    config = config_from_gguf(reader)
    state_dict = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        if t.name.endswith("attn_q.weight"):
            w = unpermute_rotary(w, config.n_head)
        elif t.name.endswith("attn_k.weight"):
            w = unpermute_rotary(w, config.n_kv_head)
        # np.array copies out of the read-only memory map
        state_dict[gguf_to_hf_name(t.name)] = torch.from_numpy(np.array(w, dtype=np.float32))
    return config, state_dict


def load_gguf_llama(path: str | Path, dtype: torch.dtype = torch.float32) -> Llama:
    """A :class:`Llama` with the (dequantised) weights of a Llama GGUF file."""
    config, state_dict = read_gguf_llama(path)
    return llama_from_hf_state_dict(config_to_hf(config), state_dict, dtype=dtype)


def load_gguf_tokenizer(path: str | Path):
    """The HF fast tokenizer (with chat template) stored in a GGUF file; needs transformers."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise UnsupportedModelError("reading a GGUF tokenizer needs transformers: "
                                    "pip install 'fissure[hf]'") from None
    path = Path(path)
    gguf_architecture(_reader(path))
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
