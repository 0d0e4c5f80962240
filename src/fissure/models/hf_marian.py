"""Load an HF ``MarianMTModel`` directory (``config.json`` + ``*.safetensors``) into our :class:`Seq2Seq`.

Only the weights and config are read, with the ``safetensors`` library; transformers is not
needed. Marian is the post-LN Transformer with sinusoids laid out as all sines then all cosines,
scaled embeddings shared by encoder, decoder and head, and a fixed bias on the logits.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file

from ..errors import CheckpointError
from .seq2seq import Seq2Seq, Seq2SeqConfig

_ACTIVATIONS = {"swish": "silu", "silu": "silu", "gelu": "gelu", "relu": "relu", "gelu_new": "gelu_tanh"}
_SHARED = ("model.shared.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight",
           "lm_head.weight")
_LAYER_NAMES = {
    "self_attn.q_proj": "attn.q_proj", "self_attn.k_proj": "attn.k_proj", "self_attn.v_proj": "attn.v_proj",
    "self_attn.out_proj": "attn.out", "self_attn_layer_norm": "norm1",
    "encoder_attn.q_proj": "cross.q_proj", "encoder_attn.k_proj": "cross.k_proj",
    "encoder_attn.v_proj": "cross.v_proj", "encoder_attn.out_proj": "cross.out", "fc1": "mlp.fc", "fc2": "mlp.proj",
}
_LAYER_RE = re.compile(r"model\.(encoder|decoder)\.layers\.(\d+)\.(.+)\.(weight|bias)")


class UnsupportedMarianError(CheckpointError):
    pass


def hf_to_native_name(name: str) -> str | None:
    """Our parameter name for an HF Marian parameter name (``None``: not a parameter of ours)."""
    m = _LAYER_RE.fullmatch(name)
    if not m:
        return None
    side, i, module, kind = m.groups()
    if module == "final_layer_norm":  # the last norm of a layer: norm2 in the encoder, norm3 in the decoder
        ours = "norm2" if side == "encoder" else "norm3"
    elif module == "encoder_attn_layer_norm":
        ours = "norm2"
    else:
        ours = _LAYER_NAMES.get(module)
    return None if ours is None else f"{side}.{i}.{ours}.{kind}"


def config_from_hf(hf: Mapping[str, Any] | Any) -> Seq2SeqConfig:
    """A :class:`Seq2SeqConfig` from an HF ``MarianConfig`` or its ``config.json`` dict."""
    get = hf.get if isinstance(hf, Mapping) else lambda k, d=None: getattr(hf, k, d)
    checks = [
        (get("encoder_attention_heads") == get("decoder_attention_heads"), "different encoder/decoder heads"),
        (get("encoder_ffn_dim") == get("decoder_ffn_dim"), "different encoder/decoder feed-forward widths"),
        (get("share_encoder_decoder_embeddings", True), "separate source and target vocabularies"),
        (get("decoder_vocab_size") in (None, get("vocab_size")), "a decoder vocabulary of another size"),
        (get("activation_function", "gelu") in _ACTIVATIONS, f"activation {get('activation_function')!r}"),
        (not get("normalize_before", False) and not get("add_final_layer_norm", False), "pre-LN layout (mBART style)"),
    ]
    for ok, what in checks:
        if not ok:
            raise UnsupportedMarianError(f"this Marian model has {what}, which fissure's seq2seq model does not support")
    return Seq2SeqConfig(
        vocab_size=get("vocab_size"), block_size=get("max_position_embeddings"), n_layer=get("encoder_layers"),
        n_decoder_layer=get("decoder_layers"), n_head=get("encoder_attention_heads"), n_embd=get("d_model"),
        intermediate_size=get("encoder_ffn_dim"), dropout=0.0, bias=True, norm_position="post",
        pos_encoding="sinusoidal_halves", scale_embedding=bool(get("scale_embedding", False)),
        tie_weights=bool(get("tie_word_embeddings", True)), logits_bias=True,
        activation=_ACTIVATIONS[get("activation_function", "gelu")], layer_norm_eps=1e-5,
        decoder_start_token_id=get("decoder_start_token_id"), eos_token_id=get("eos_token_id"),
        pad_token_id=get("pad_token_id"))


def seq2seq_from_hf_state_dict(hf_config: Mapping[str, Any] | Any, state: Mapping[str, torch.Tensor]) -> Seq2Seq:
    """Our model with the weights of an HF Marian state dict (every one of our weights must be there)."""
    config = config_from_hf(hf_config)
    model = Seq2Seq(config)
    ours: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        native = hf_to_native_name(name)
        if native is not None:
            ours[native] = tensor
    shared = next((state[k] for k in _SHARED if k in state), None)
    if shared is None:
        raise CheckpointError("the Marian weights hold no token embedding (model.shared.weight)")
    ours["tok_emb.weight"] = shared
    if not config.tie_weights:
        if "lm_head.weight" not in state:
            raise CheckpointError("the Marian config unties the head, but lm_head.weight is missing")
        ours["lm_head.weight"] = state["lm_head.weight"]
    bias = state.get("final_logits_bias")
    ours["final_logits_bias"] = bias.reshape(-1) if bias is not None else torch.zeros(config.vocab_size)
    expected = set(model.state_dict()) - ({"lm_head.weight"} if config.tie_weights else set())
    missing = sorted(expected - set(ours))
    if missing:
        raise CheckpointError(f"the Marian weights lack {len(missing)} of ours, e.g. {missing[:3]}")
    model.load_state_dict({k: v.float() for k, v in ours.items()}, strict=False)
    return model.eval()


def load_hf_marian_dir(path: str | Path) -> Seq2Seq:
    """Our :class:`Seq2Seq` from a ``MarianMTModel.save_pretrained`` directory."""
    path = Path(path)
    config_file = path / "config.json"
    files = sorted(path.glob("*.safetensors"))
    if not config_file.is_file() or not files:
        raise CheckpointError(f"{path} is not an HF Marian directory (needs config.json and *.safetensors)")
    hf_config = json.loads(config_file.read_text())
    if hf_config.get("model_type") != "marian":
        raise UnsupportedMarianError(f"{path} holds a {hf_config.get('model_type')!r} model, not a Marian one")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    return seq2seq_from_hf_state_dict(hf_config, state)
