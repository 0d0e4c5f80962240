import json
import random

import pytest

from fissure.errors import CheckpointError, ConfigError, DataError
from fissure.text.corpus import builtin_corpus
from fissure.text.tokenizers import (EOS_TOKEN, BPETokenizer, CharTokenizer, Tokenizer, load_tokenizer,
                                     train_bpe)

# A broad character set: controls, ASCII, Latin-1, combining marks, RTL scripts, CJK,
# astral emoji and their modifiers, separators and the BOM.
ALPHABET = ([chr(c) for c in range(0x00, 0x80)] + [chr(c) for c in range(0xA0, 0x180)]
            + ["\u0301", "\u0308", "\u05d0", "\u05e9", "\u0627", "\u0644", "\u0928", "\u093f"]
            + [chr(c) for c in range(0x4E00, 0x4E40)] + ["\u3042", "\u30ab", "\uac00", "\u2028", "\u00a0", "\ufeff"]
            + ["\U0001F600", "\U0001F44D", "\U0001F3FD", "\u200d", "\U0001F469", "\U0001F4BB", "\U00010348", "\U0001D11E"])
PIECES = ["\r\n", "  ", "\t", " the", "<|endoftext|>", "<|", "|>", "    def ", "\n\n"]


def random_texts(n: int, seed: int, max_len: int = 60) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        parts = [rng.choice(PIECES) if rng.random() < 0.15 else rng.choice(ALPHABET) for _ in range(rng.randint(0, max_len))]
        texts.append("".join(parts))
    return texts + ["", " ", "  leading", "trailing  ", "\x00", "\r\n\r\n", "\U0001F469\u200d\U0001F4BB"]


ENGLISH = ("The quick brown fox jumps over the lazy dog. " * 3 + "A tokenizer splits text into pieces that a model "
           "can count and predict; byte-level merges learned from English prose make common words single tokens. ") * 40


@pytest.fixture(scope="module")
def stdlib_text():
    return [d.text for d in builtin_corpus("stdlib", max_bytes=300_000)]


@pytest.fixture(scope="module")
def bpe(stdlib_text):
    return train_bpe(stdlib_text + [ENGLISH], vocab_size=1000)


@pytest.fixture(scope="module")
def char_tok(stdlib_text):
    return CharTokenizer.from_texts(stdlib_text)


# ----------------------------------------------------------------- byte-level BPE

def test_bpe_round_trips_random_unicode(bpe):
    for text in random_texts(400, seed=0):
        ids = bpe.encode(text)
        assert bpe.decode(ids) == text, repr(text)
        assert all(0 <= i < bpe.vocab_size for i in ids)


def test_bpe_basics(bpe):
    assert isinstance(bpe, BPETokenizer) and isinstance(bpe, Tokenizer) and bpe.name == "bpe"
    assert bpe.vocab_size == 1000 and bpe.eos_id == 0
    assert bpe.decode([bpe.eos_id]) == EOS_TOKEN
    assert bpe.decode([bpe.eos_id] + bpe.encode("hi"), skip_special_tokens=True) == "hi"
    texts = random_texts(20, seed=1)
    assert bpe.encode_batch(texts) == [bpe.encode(t) for t in texts]


def test_bpe_literal_eos_text_is_not_the_eos_token(bpe):
    ids = bpe.encode("a<|endoftext|>b")
    assert bpe.eos_id not in ids
    assert bpe.decode(ids) == "a<|endoftext|>b"


def test_bpe_compresses_english(bpe):
    n_tokens = len(bpe.encode(ENGLISH))
    assert n_tokens < len(ENGLISH.encode()) / 3


def test_bpe_untrained_text_falls_back_to_bytes(bpe):
    text = "\u0928\u093f\U0001F3FD"  # never seen in training: every byte is its own token
    assert len(bpe.encode(text)) == len(text.encode())


@pytest.mark.parametrize("size", [0, 100, 256])
def test_bpe_vocab_too_small(size):
    with pytest.raises(ConfigError, match=f"vocab_size {size} is too small: byte-level BPE needs at least 257"):
        train_bpe(["hello"], vocab_size=size)


def test_bpe_minimum_vocab_is_bytes_plus_eos():
    tok = train_bpe(["hello hello"], vocab_size=257)
    assert tok.vocab_size == 257
    assert tok.decode(tok.encode("日本 \x01")) == "日本 \x01"


def test_bpe_needs_text():
    with pytest.raises(DataError, match="no text"):
        train_bpe(iter([]), vocab_size=300)


def test_bpe_training_is_deterministic(stdlib_text):
    a = train_bpe(stdlib_text[:5], vocab_size=600)
    b = train_bpe(iter(stdlib_text[:5]), vocab_size=600)
    assert a.hf.to_str() == b.hf.to_str()


def test_bpe_file_loads_in_transformers(bpe, tmp_path):
    """Our tokenizer.json is a standard HF file: transformers reads it and tokenizes identically."""
    transformers = pytest.importorskip("transformers")
    path = bpe.save(tmp_path)
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token=EOS_TOKEN)
    text = "def f(x):\n    return x ** 2  # héllo 😀"
    assert hf.encode(text, add_special_tokens=False) == bpe.encode(text)
    assert hf.eos_token_id == bpe.eos_id


# ----------------------------------------------------------------- characters

def test_char_round_trips_random_unicode_including_unseen(char_tok):
    for text in random_texts(400, seed=2):
        assert char_tok.decode(char_tok.encode(text)) == text, repr(text)


def test_char_unseen_characters_become_their_utf8_bytes():
    tok = CharTokenizer.from_texts(["abca"])
    assert tok.vocab_size == 257 + 3 and tok.name == "char" and tok.eos_id == 0
    assert tok.encode("a") == [257]  # the most frequent character first
    emoji = "\U0001F600"
    ids = tok.encode("b" + emoji)
    assert ids[0] >= 257 and [i - 1 for i in ids[1:]] == list(emoji.encode("utf-8"))
    assert tok.decode(ids) == "b" + emoji
    assert tok.decode([0, 257]) == EOS_TOKEN + "a" and tok.decode([0, 257], skip_special_tokens=True) == "a"
    assert tok.encode("<|endoftext|>").count(tok.eos_id) == 0


def test_char_max_vocab_keeps_most_frequent():
    tok = CharTokenizer.from_texts(["aaaabbbc"], max_vocab=259)
    assert tok.chars == ["a", "b"]
    assert tok.decode(tok.encode("abcd")) == "abcd"
    with pytest.raises(ConfigError, match="max_vocab 100 is too small"):
        CharTokenizer.from_texts(["x"], max_vocab=100)


def test_char_decode_rejects_unknown_ids():
    tok = CharTokenizer.from_texts(["ab"])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


def test_char_invalid_byte_sequences_decode_with_replacement():
    tok = CharTokenizer.from_texts(["ab"])
    assert tok.decode([0xE6 + 1, ord("a") + 1]) == "\ufffda"  # a truncated multi-byte character


# ----------------------------------------------------------------- save / load

@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_saved_tokenizer_loads_and_encodes_identically(kind, bpe, char_tok, tmp_path):
    tok = bpe if kind == "bpe" else char_tok
    path = tok.save(tmp_path / "ckpt")
    assert path == tmp_path / "ckpt" / "tokenizer.json"
    for where in (tmp_path / "ckpt", path, str(path)):
        loaded = load_tokenizer(where)
        assert type(loaded) is type(tok) and loaded.name == kind
        assert (loaded.vocab_size, loaded.eos_id) == (tok.vocab_size, tok.eos_id)
        for text in random_texts(50, seed=3):
            assert loaded.encode(text) == tok.encode(text)
        assert loaded.encode("<|endoftext|>") == tok.encode("<|endoftext|>")


def test_char_file_is_distinguishable_json(char_tok, tmp_path):
    data = json.loads(char_tok.save(tmp_path).read_text())
    assert data["type"] == "fissure-char" and data["chars"] == char_tok.chars


def test_load_errors(tmp_path, char_tok, bpe):
    with pytest.raises(CheckpointError, match="tokenizer not found"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="tokenizer not found"):
        load_tokenizer(tmp_path)  # a directory without tokenizer.json
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "fissure-char", "chars": [')
    with pytest.raises(CheckpointError, match="corrupted"):
        load_tokenizer(bad)
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(CheckpointError, match="corrupted"):
        load_tokenizer(bad)
    bad.write_text(json.dumps({"type": "fissure-char", "n_byte_tokens": 256, "chars": ["a", "a"]}))
    with pytest.raises(CheckpointError, match="corrupted character tokenizer"):
        load_tokenizer(bad)
    bad.write_text(json.dumps({"type": "fissure-char", "n_byte_tokens": 256, "chars": None}))
    with pytest.raises(CheckpointError, match="corrupted character tokenizer"):
        load_tokenizer(bad)
    bad.write_text('{"hello": 1}')
    with pytest.raises(CheckpointError, match="not a fissure tokenizer"):
        load_tokenizer(bad)
    data = json.loads(bpe.hf.to_str())
    data["model"]["merges"] = 7
    bad.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="corrupted BPE tokenizer"):
        load_tokenizer(bad)
    data = json.loads(bpe.hf.to_str())
    data["added_tokens"] = []
    del data["model"]["vocab"][EOS_TOKEN]
    bad.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="no <\\|endoftext\\|> token"):
        load_tokenizer(bad)
