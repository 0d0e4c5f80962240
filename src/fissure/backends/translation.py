"""Translation with an encoder-decoder model: a fissure seq2seq checkpoint or an HF Marian directory.

:func:`load_translator` picks the kind from the directory; :meth:`Translator.translate` turns
sentences into translations under a :class:`~fissure.decode.config.Decoding` (greedy, beam search,
sampling). This is the library entry point for ``fissure translate`` and for a future
``fissure.pipeline("translation", ...)``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..decode.config import Decoding
from ..decode.seq2seq import generate_seq2seq
from ..errors import CheckpointError

MAX_BATCH = 32  # sentences per generate call (sorted by length, so a batch pads little)


class NativeTextCodec:
    """A fissure tokenizer as source encoder / target decoder: sources end with EOS."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def encode_sources(self, texts: Sequence[str]) -> list[list[int]]:
        return [ids + [self.tokenizer.eos_id] for ids in self.tokenizer.encode_batch(list(texts))]

    def decode_target(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def token(self, token_id: int) -> str:
        """One token as text (for labels), special tokens included."""
        return self.tokenizer.decode([token_id])


class HFTextCodec:
    """An HF (Marian) tokenizer: it appends ``</s>`` to sources itself."""

    def __init__(self, hf_tokenizer):
        self.hf = hf_tokenizer

    def encode_sources(self, texts: Sequence[str]) -> list[list[int]]:
        return self.hf(list(texts))["input_ids"]

    def decode_target(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=True)

    def token(self, token_id: int) -> str:
        """One token as the tokenizer names it (sentencepiece's ``▁`` marks a word start)."""
        return self.hf.convert_ids_to_tokens(token_id)


@dataclass
class Translator:
    model: torch.nn.Module
    codec: NativeTextCodec | HFTextCodec
    source: str  # what was loaded (for records)
    forced_eos_token_id: int | None = None
    suppress_ids: list[int] = field(default_factory=list)

    def translate(self, texts: Sequence[str], decoding: Decoding | None = None) -> list[str]:
        """One translation per text, in order (batched by length; greedy rows do not depend on their batch)."""
        decoding = decoding or Decoding()
        limit = self.model.config.block_size
        if decoding.max_new_tokens > limit - 1:  # the decoder's positions bound the translation's length
            decoding = replace(decoding, max_new_tokens=limit - 1)  # longer sources keep their first tokens and their EOS, as in training
        sources = [ids if len(ids) <= limit else ids[:limit - 1] + ids[-1:] for ids in self.codec.encode_sources(texts)]
        order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
        out: list[str] = [""] * len(sources)
        for start in range(0, len(order), MAX_BATCH):
            chunk = order[start:start + MAX_BATCH]
            result = generate_seq2seq(self.model, [sources[i] for i in chunk], decoding,
                                      forced_eos_token_id=self.forced_eos_token_id, suppress_ids=self.suppress_ids)
            for i, ids in zip(chunk, result.sequences):
                out[i] = self.codec.decode_target(ids)
        return out


def load_translator(path: str | Path, dtype: str = "fp32") -> Translator:
    """A fissure seq2seq checkpoint directory, or an HF ``MarianMTModel`` directory (its tokenizer
    through transformers; sentencepiece needed for Marian's). ``dtype`` as ``fissure.load``'s: bf16,
    or weight-only int8 / int4 linear layers, decode faster with slightly different numbers."""
    from ..models.quantize import DTYPES, set_dtype

    if dtype not in DTYPES:
        raise CheckpointError(f"unknown dtype '{dtype}' ({', '.join(DTYPES)})")
    translator = _load_translator(Path(path))
    set_dtype(translator.model, dtype)
    return translator


def _load_translator(path: Path) -> Translator:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path} is not a model directory (no config.json)")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{config_file} is corrupted") from None
    if isinstance(config, dict) and config.get("model_type") == "marian":
        return _load_marian(path)
    from ..train.checkpoint import load_checkpoint, read_model_config

    family = read_model_config(path)["family"]
    if family != "seq2seq":
        raise CheckpointError(f"{path} holds a {family} model, not a translation (seq2seq) model")
    model, tokenizer = load_checkpoint(path)
    return Translator(model.eval(), NativeTextCodec(tokenizer), str(path))


def _load_marian(path: Path) -> Translator:
    from ..models.hf_marian import load_hf_marian_dir

    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise CheckpointError("an HF Marian directory needs transformers for its tokenizer: pip install "
                              "'fissure[hf]' sentencepiece") from None
    model = load_hf_marian_dir(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, ImportError) as exc:
        raise CheckpointError(f"{path}: the Marian tokenizer does not load ({exc})") from None
    generation = {}
    if (path / "generation_config.json").is_file():
        generation = json.loads((path / "generation_config.json").read_text())
    forced = generation.get("forced_eos_token_id", model.config.eos_token_id)
    bad = generation.get("bad_words_ids") or []
    suppress = [ids[0] for ids in bad if isinstance(ids, list) and len(ids) == 1]
    return Translator(model, HFTextCodec(tokenizer), str(path), forced_eos_token_id=forced, suppress_ids=suppress)
