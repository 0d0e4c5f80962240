"""Copy weights between HF BERT (``BertForPreTraining`` / ``BertForMaskedLM`` layout) and our
:class:`~.bert.Bert`, and read an HF BERT directory (``config.json`` + ``model.safetensors``).

HF keeps query, key and value as three Linears; ours are one fused ``qkv`` Linear, so they are
concatenated. HF's ``max_position_embeddings`` is our ``block_size`` (see :mod:`fissure.models`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .bert import Bert, BertConfig


def config_from_hf_bert(hf: dict) -> BertConfig:
    """Our config from an HF BERT ``config.json`` dict (only what our model implements)."""
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"hidden_act {hf['hidden_act']!r} is not supported (BERT uses exact 'gelu')")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"position_embedding_type {hf['position_embedding_type']!r} is not supported")
    return BertConfig(
        vocab_size=hf["vocab_size"], block_size=hf["max_position_embeddings"], n_layer=hf["num_hidden_layers"],
        n_head=hf["num_attention_heads"], n_embd=hf["hidden_size"], dropout=hf.get("hidden_dropout_prob", 0.1),
        intermediate_size=hf["intermediate_size"], type_vocab_size=hf.get("type_vocab_size", 2),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12), pad_token_id=hf.get("pad_token_id") or 0,
    )


def hf_bert_name_map(n_layer: int) -> dict[str, str | tuple[str, ...]]:
    """Our parameter name -> HF's (a tuple: HF tensors concatenated along dim 0)."""
    names: dict[str, str | tuple[str, ...]] = {
        "tok_emb.weight": "bert.embeddings.word_embeddings.weight",
        "pos_emb.weight": "bert.embeddings.position_embeddings.weight",
        "type_emb.weight": "bert.embeddings.token_type_embeddings.weight",
        "emb_norm.weight": "bert.embeddings.LayerNorm.weight",
        "emb_norm.bias": "bert.embeddings.LayerNorm.bias",
        "mlm_dense.weight": "cls.predictions.transform.dense.weight",
        "mlm_dense.bias": "cls.predictions.transform.dense.bias",
        "mlm_norm.weight": "cls.predictions.transform.LayerNorm.weight",
        "mlm_norm.bias": "cls.predictions.transform.LayerNorm.bias",
        "mlm_bias": "cls.predictions.bias",
        "pooler.weight": "bert.pooler.dense.weight",
        "pooler.bias": "bert.pooler.dense.bias",
        "nsp_head.weight": "cls.seq_relationship.weight",
        "nsp_head.bias": "cls.seq_relationship.bias",
    }
    for i in range(n_layer):
        ours, hf = f"blocks.{i}.", f"bert.encoder.layer.{i}."
        for kind in ("weight", "bias"):
            names[ours + f"attn.qkv.{kind}"] = tuple(hf + f"attention.self.{p}.{kind}" for p in ("query", "key", "value"))
            names[ours + f"attn.out.{kind}"] = hf + f"attention.output.dense.{kind}"
            names[ours + f"norm1.{kind}"] = hf + f"attention.output.LayerNorm.{kind}"
            names[ours + f"mlp.fc.{kind}"] = hf + f"intermediate.dense.{kind}"
            names[ours + f"mlp.proj.{kind}"] = hf + f"output.dense.{kind}"
            names[ours + f"norm2.{kind}"] = hf + f"output.LayerNorm.{kind}"
    return names


@torch.no_grad()
def bert_from_hf_state_dict(config: BertConfig, sd: dict[str, torch.Tensor]) -> Bert:
    """A :class:`Bert` with HF weights. The heads HF's model lacks (a ``BertForMaskedLM`` has no
    pooler or NSP head, a bare ``BertModel`` neither head) keep their fresh initialisation."""
    sd = {k.removeprefix("model."): v for k, v in sd.items()}
    if not any(k.startswith("bert.") for k in sd):  # a bare BertModel: no "bert." prefix
        sd = {f"bert.{k}" if not k.startswith("cls.") else k: v for k, v in sd.items()}
    model = Bert(config)
    params = dict(model.named_parameters())
    for ours, theirs in hf_bert_name_map(config.n_layer).items():
        names = theirs if isinstance(theirs, tuple) else (theirs,)
        if not all(n in sd for n in names):
            if ours.startswith(("pooler.", "nsp_head.", "mlm_")):
                continue
            raise KeyError(f"HF BERT weights lack {names[0]}")
        params[ours].copy_(torch.cat([sd[n] for n in names]))
    return model.eval()


def load_hf_bert_dir(path: str | Path) -> Bert:
    """Our :class:`Bert` from an HF BERT directory (``config.json`` + ``model.safetensors``;
    ``pytorch_model.bin`` is a pickle and is not read)."""
    from safetensors.torch import load_file

    path = Path(path)
    hf_config = json.loads((path / "config.json").read_text())
    if hf_config.get("model_type") != "bert":
        raise ValueError(f"{path} holds a {hf_config.get('model_type')!r} model, not 'bert'")
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found (only safetensors weights are read)")
    return bert_from_hf_state_dict(config_from_hf_bert(hf_config), load_file(str(weights)))
