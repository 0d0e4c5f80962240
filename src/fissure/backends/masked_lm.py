"""Masked language models for fill-mask: a fissure BERT checkpoint (``fissure train`` with
``task = "mlm"``) or an HF BERT directory (``config.json`` with ``model_type = "bert"``,
``model.safetensors`` and a WordPiece ``tokenizer.json``)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import CheckpointError, UserError
from ..models.bert import Bert
from ..text.tokenizers import Tokenizer, WordPieceTokenizer


def load_masked_lm(path: str | Path) -> tuple[Bert, WordPieceTokenizer]:
    """``(model, tokenizer)`` in eval mode; anything that is not a BERT is a one-line :class:`UserError`."""
    path = Path(path)
    config = path / "config.json"
    if not path.is_dir() or not config.is_file():
        raise CheckpointError(f"{path} is not a checkpoint directory (a fissure BERT checkpoint or an HF BERT "
                              "directory)")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{config} is corrupted") from None
    if isinstance(data, dict) and data.get("model_type") == "bert":
        model, tokenizer = _load_hf_dir(path)
    else:
        from ..train.checkpoint import load_checkpoint, read_model_config

        family = read_model_config(path)["family"]
        if family != "bert":
            raise UserError(f"{path} holds a {family} model; fill-mask needs a BERT (train one with task = \"mlm\", "
                            "see examples/tiny-bert.toml)")
        model, tokenizer = load_checkpoint(path)
    if not isinstance(tokenizer, WordPieceTokenizer):
        raise CheckpointError(f"{path}: the tokenizer is not a WordPiece tokenizer with a [MASK] token")
    return model.eval(), tokenizer


def _load_hf_dir(path: Path) -> tuple[Bert, Tokenizer]:
    from ..models.hf_bert import load_hf_bert_dir
    from ..text.tokenizers import load_tokenizer

    try:
        model = load_hf_bert_dir(path)
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot load the HF BERT weights ({' '.join(str(exc).split())[:200]})") from None
    tokenizer = load_tokenizer(path)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise CheckpointError(f"{path}: the tokenizer has {tokenizer.vocab_size} tokens, the model "
                              f"{model.config.vocab_size}")
    return model, tokenizer
