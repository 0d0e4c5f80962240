"""Tokenizers: byte-level BPE (HF ``tokenizers``), characters with a byte fallback, and BERT's
WordPiece (:class:`WordPieceTokenizer`, for masked language models: see its docstring).

BPE and characters round-trip any UTF-8 text exactly, both reserve ``<|endoftext|>`` (id 0) as the
document separator and BOS, and both save to one ``tokenizer.json``. A literal
``<|endoftext|>`` inside a text is encoded as ordinary characters, never as the special
id: a document (or a prompt under attack) cannot forge a document boundary; only code
that appends :attr:`Tokenizer.eos_id` can.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from fissure.errors import CheckpointError, ConfigError, DataError

EOS_TOKEN = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"
CHAR_FORMAT = "fissure-char"
N_BYTES = 256
MIN_VOCAB = N_BYTES + 1  # every byte plus <|endoftext|>


class Tokenizer(ABC):
    """What every tokenizer offers. Ids are plain ints; ``eos_id`` is always present."""

    name: str

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @property
    @abstractmethod
    def eos_id(self) -> int: ...

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    @abstractmethod
    def save(self, directory: str | Path) -> Path:
        """Write ``directory/tokenizer.json`` (creating the directory) and return its path."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


def _ids(ids: Iterable[int]) -> list[int]:
    return ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]


# --------------------------------------------------------------------------- byte-level BPE

class HFFileTokenizer(Tokenizer):
    """A tokenizer held in an HF ``tokenizers.Tokenizer`` (``self.hf``), saved as its ``tokenizer.json``;
    special tokens in a text encode as ordinary characters."""

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch_fast(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.hf.decode(_ids(ids), skip_special_tokens=skip_special_tokens)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / TOKENIZER_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        self.hf.save(str(path))
        return path


class BPETokenizer(HFFileTokenizer):
    """A byte-level BPE tokenizer (GPT-2 style) around an HF ``tokenizers.Tokenizer``."""

    name = "bpe"

    def __init__(self, hf: HFTokenizer):
        eos = hf.token_to_id(EOS_TOKEN)
        if eos is None:
            raise CheckpointError(f"BPE tokenizer has no {EOS_TOKEN} token")
        hf.encode_special_tokens = True  # not serialised by HF: set on every construction
        self.hf, self._eos = hf, eos

    @property
    def eos_id(self) -> int:
        return self._eos


def _train_from_texts(hf: HFTokenizer, texts: Iterable[str], trainer) -> None:
    """Train ``hf`` on ``texts`` (read once, as a stream); no text at all is a :class:`DataError`."""
    seen = 0

    def counted():
        nonlocal seen
        for text in texts:
            seen += len(text)
            yield text

    hf.train_from_iterator(counted(), trainer)
    if seen == 0:
        raise DataError("no text to train the tokenizer on")


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> BPETokenizer:
    """Train a byte-level BPE tokenizer. All 256 bytes are in the initial alphabet, so nothing is ever unknown.

    The vocabulary can come out smaller than ``vocab_size`` when the text has too few
    pairs occurring ``min_frequency`` times; :attr:`BPETokenizer.vocab_size` is the real size.
    """
    if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB:
        raise ConfigError(f"vocab_size {vocab_size} is too small: byte-level BPE needs at least {MIN_VOCAB}")
    if min_frequency < 1:
        raise ConfigError(f"min_frequency must be at least 1, not {min_frequency}")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    _train_from_texts(hf, texts, trainer)
    return BPETokenizer(hf)


# --------------------------------------------------------------------------- characters

class CharTokenizer(Tokenizer):
    """One id per character seen in training, plus one per byte for everything else.

    Ids: 0 is ``<|endoftext|>``, 1..256 are the bytes 0..255, 257.. the known characters.
    A character outside the table is encoded as its UTF-8 bytes, so every text round-trips.
    """

    name = "char"

    def __init__(self, chars: Sequence[str]):
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError("chars must be distinct single characters")
        self.chars = list(chars)
        self._char_to_id = {c: i + MIN_VOCAB for i, c in enumerate(self.chars)}
        self._id_to_bytes = ([EOS_TOKEN.encode()] + [bytes([b]) for b in range(N_BYTES)]
                             + [c.encode("utf-8") for c in self.chars])

    @classmethod
    def from_texts(cls, texts: Iterable[str], max_vocab: int | None = None) -> CharTokenizer:
        """Characters of ``texts``, most frequent first; ``max_vocab`` caps the whole vocabulary (bytes and eos included)."""
        if max_vocab is not None and max_vocab < MIN_VOCAB:
            raise ConfigError(f"max_vocab {max_vocab} is too small: the character tokenizer needs at least {MIN_VOCAB}")
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(text)
        ranked = sorted(counts, key=lambda c: (-counts[c], c))
        if max_vocab is not None:
            ranked = ranked[:max_vocab - MIN_VOCAB]
        return cls(ranked)

    @property
    def vocab_size(self) -> int:
        return MIN_VOCAB + len(self.chars)

    @property
    def eos_id(self) -> int:
        return 0

    def encode(self, text: str) -> list[int]:
        lookup, out = self._char_to_id, []
        for ch in text:
            i = lookup.get(ch)
            if i is None:
                out.extend(b + 1 for b in ch.encode("utf-8"))
            else:
                out.append(i)
        return out

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        table, ids = self._id_to_bytes, _ids(ids)
        if skip_special_tokens:
            ids = [i for i in ids if i != self.eos_id]
        bad = [i for i in ids if not 0 <= i < len(table)]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary (size {len(table)})")
        return b"".join(table[i] for i in ids).decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        return {"type": CHAR_FORMAT, "version": 1, "eos_token": EOS_TOKEN, "n_byte_tokens": N_BYTES,
                "chars": self.chars}

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / TOKENIZER_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=True) + "\n", encoding="utf-8")
        return path


# --------------------------------------------------------------------------- WordPiece (BERT)

BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4 in a tokenizer we train
WORDPIECE_PREFIX = "##"  # marks a piece that continues the word before it


class WordPieceTokenizer(HFFileTokenizer):
    """BERT's tokenizer around an HF ``tokenizers.Tokenizer``: BERT's normaliser (lower case by
    default) and pre-tokenizer (words and punctuation), WordPiece with ``##`` continuation pieces,
    and the special tokens ``[PAD] [UNK] [CLS] [SEP] [MASK]``.

    It does not round-trip (case, accents and spacing are normalised away; rare characters become
    ``[UNK]``); what it gives a masked LM is whole words, and word boundaries for free: a piece is
    the start of a word unless it begins with ``##`` (:attr:`continues_word`), which is what
    whole-word masking needs. As with BPE, a literal ``[MASK]`` or ``[SEP]`` inside a text encodes
    as ordinary characters; only code that places the special ids (``[CLS] a [SEP] b [SEP]``, the
    mask of fill-mask) can use them. ``eos_id`` is ``[SEP]``.
    """

    name = "wordpiece"

    def __init__(self, hf: HFTokenizer):
        ids = {t: hf.token_to_id(t) for t in BERT_SPECIAL_TOKENS}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise CheckpointError(f"WordPiece tokenizer lacks BERT's special tokens {', '.join(missing)}")
        hf.encode_special_tokens = True  # not serialised by HF: set on every construction
        self.hf = hf
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (ids[t] for t in BERT_SPECIAL_TOKENS)
        self.mask_token = "[MASK]"
        self.special_ids = frozenset(ids.values())
        vocab = hf.get_vocab(with_added_tokens=True)
        self.continues_word = [False] * self.vocab_size
        for token, i in vocab.items():
            self.continues_word[i] = token.startswith(WORDPIECE_PREFIX) and len(token) > len(WORDPIECE_PREFIX)

    @property
    def eos_id(self) -> int:
        return self.sep_id

    def id_to_token(self, i: int) -> str:
        return self.hf.id_to_token(i)


def train_wordpiece(texts: Iterable[str], vocab_size: int, min_frequency: int = 2,
                    lowercase: bool = True) -> WordPieceTokenizer:
    """Train BERT's WordPiece tokenizer (the specials get ids 0..4, in :data:`BERT_SPECIAL_TOKENS` order).

    Like BERT's uncased models it lower-cases and strips accents unless ``lowercase`` is False.
    ``[CLS] A [SEP] B [SEP]`` is its post-processor (what HF's BERT tokenizers do with pairs).
    """
    if not isinstance(vocab_size, int) or vocab_size < len(BERT_SPECIAL_TOKENS) + 1:
        raise ConfigError(f"vocab_size {vocab_size} is too small for a WordPiece tokenizer")
    if min_frequency < 1:
        raise ConfigError(f"min_frequency must be at least 1, not {min_frequency}")
    hf = HFTokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix=WORDPIECE_PREFIX))
    hf.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=None if lowercase else False)
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf.decoder = decoders.WordPiece(prefix=WORDPIECE_PREFIX)
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=list(BERT_SPECIAL_TOKENS), show_progress=False,
                                        continuing_subword_prefix=WORDPIECE_PREFIX)
    _train_from_texts(hf, texts, trainer)
    cls, sep = hf.token_to_id("[CLS]"), hf.token_to_id("[SEP]")
    hf.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return WordPieceTokenizer(hf)


# --------------------------------------------------------------------------- loading

def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer in ``path`` (a ``tokenizer.json`` or a directory holding one), of whichever kind it is."""
    path = Path(path)
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        raise CheckpointError(f"tokenizer not found: {file}")
    try:
        raw = file.read_text(encoding="utf-8")
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{file} is corrupted ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} is not a tokenizer file")
    if data.get("type") == CHAR_FORMAT:
        chars = data.get("chars")
        try:
            if data.get("n_byte_tokens") != N_BYTES or not all(isinstance(c, str) for c in chars):
                raise ValueError
            return CharTokenizer(chars)
        except (TypeError, ValueError):
            raise CheckpointError(f"{file} is a corrupted character tokenizer") from None
    model_type = data.get("model", {}).get("type") if isinstance(data.get("model"), dict) else None
    if model_type not in ("BPE", "WordPiece"):
        raise CheckpointError(f"{file} is not a fissure tokenizer (expected a byte-level BPE, WordPiece or character "
                              "tokenizer)")
    try:
        hf = HFTokenizer.from_str(raw)
    except Exception as exc:  # the Rust side raises a plain Exception on any malformed field
        raise CheckpointError(f"{file} is a corrupted {model_type} tokenizer: {exc}") from None
    return BPETokenizer(hf) if model_type == "BPE" else WordPieceTokenizer(hf)
