import json

import numpy as np
import pytest
import torch

from fissure.errors import ConfigError, DataError
from fissure.text.corpus import Document
from fissure.text.dataset import TokenFile, sidecar_path, write_tokens
from fissure.text.tokenizers import CharTokenizer, Tokenizer

DOCS = [Document("hello world", "a"), Document("naïve café ☕", "b"), Document("x" * 50, "c"), Document("", "d")]


class WideTokenizer(Tokenizer):
    """A stub with a vocabulary too large for uint16: one id per code point, offset past 65535."""

    name = "wide"
    vocab_size = 70_000 + 0x110000
    eos_id = 69_999

    def encode(self, text):
        return [70_000 + ord(c) for c in text]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i - 70_000) for i in ids if i != self.eos_id)

    def save(self, directory):
        raise NotImplementedError


@pytest.fixture
def tok():
    return CharTokenizer.from_texts(d.text for d in DOCS[:2])


def expected_tokens(tokenizer, texts):
    out = [tokenizer.eos_id]
    for t in texts:
        out += tokenizer.encode(t) + [tokenizer.eos_id]
    return out


def test_write_and_read_back(tok, tmp_path):
    tf = write_tokens(DOCS, tok, tmp_path / "data" / "train.bin", batch_docs=3)
    assert isinstance(tf.tokens, np.memmap) and tf.tokens.dtype == np.uint16
    assert tf.tokens.tolist() == expected_tokens(tok, [d.text for d in DOCS])
    assert len(tf) == len(tf.tokens) and tf.n_docs == 4
    assert tf.n_bytes == sum(len(d.text.encode("utf-8")) for d in DOCS)
    meta = json.loads(sidecar_path(tmp_path / "data" / "train.bin").read_text())
    assert meta["dtype"] == "uint16" and meta["tokenizer"] == "char" and meta["n_tokens"] == len(tf)
    assert (tmp_path / "data" / "train.bin").stat().st_size == 2 * len(tf)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["train.bin", "train.bin.json"]
    assert tok.decode(tf.tokens[1:-1]).split("<|endoftext|>") == [d.text for d in DOCS]


def test_plain_strings_and_generators_stream(tok, tmp_path):
    texts = (d.text for d in DOCS)  # no len(): streamed
    tf = write_tokens(texts, tok, tmp_path / "t.bin", batch_docs=1, progress=True)
    assert tf.tokens.tolist() == expected_tokens(tok, [d.text for d in DOCS])


def test_progress_goes_to_stderr(tok, tmp_path, capsys):
    write_tokens(DOCS, tok, tmp_path / "t.bin", progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "4/4" in err
    write_tokens(DOCS, tok, tmp_path / "t.bin")
    assert capsys.readouterr().err == ""


def test_large_vocab_uses_uint32(tmp_path):
    wide = WideTokenizer()
    tf = write_tokens(["a\U0001F600"], wide, tmp_path / "w.bin")
    assert tf.tokens.dtype == np.uint32 and json.loads(sidecar_path(tf.path).read_text())["dtype"] == "uint32"
    assert tf.tokens.tolist() == [69_999, 70_000 + ord("a"), 70_000 + 0x1F600, 69_999]


def test_failed_write_leaves_previous_file_untouched(tok, tmp_path):
    path = tmp_path / "t.bin"
    write_tokens(DOCS, tok, path)
    before = path.read_bytes(), sidecar_path(path).read_bytes()

    def broken():
        yield "fine"
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_tokens(broken(), tok, path, batch_docs=1)
    assert (path.read_bytes(), sidecar_path(path).read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.bin", "t.bin.json"]


def test_no_documents(tok, tmp_path):
    with pytest.raises(DataError, match="no documents"):
        write_tokens([], tok, tmp_path / "t.bin")
    assert list(tmp_path.iterdir()) == []


def test_sample_batch_is_deterministic_shifted_and_uses_only_the_generator(tok, tmp_path):
    tf = write_tokens([d.text for d in DOCS] * 5, tok, tmp_path / "t.bin")
    global_state = torch.get_rng_state()
    x1, y1 = tf.sample_batch(8, 16, torch.Generator().manual_seed(123))
    x2, y2 = tf.sample_batch(8, 16, torch.Generator().manual_seed(123))
    assert torch.equal(torch.get_rng_state(), global_state)
    assert x1.dtype == y1.dtype == torch.long and x1.shape == y1.shape == (8, 16)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.equal(x1[:, 1:], y1[:, :-1])
    x3, _ = tf.sample_batch(8, 16, torch.Generator().manual_seed(124))
    assert not torch.equal(x1, x3)
    data = np.asarray(tf.tokens, dtype=np.int64)
    for row_x, row_y in zip(x1.numpy(), y1.numpy()):
        starts = [s for s in range(len(data) - 16) if (data[s:s + 16] == row_x).all() and (data[s + 1:s + 17] == row_y).all()]
        assert starts, "every (x, y) pair is a window of the token file"


def test_sample_batch_windows_span_the_whole_file(tok, tmp_path):
    tf = write_tokens(["abcdefgh"], tok, tmp_path / "t.bin")  # eos a..h eos: 10 tokens, 5 windows of 5
    g = torch.Generator().manual_seed(0)
    xs, ys = tf.sample_batch(200, 5, g)
    data = np.asarray(tf.tokens, dtype=np.int64).tolist()
    assert set(xs[:, 0].tolist()) == set(data[0:5])  # every start from the first to the last that fits
    assert set(ys[:, -1].tolist()) == set(data[5:10])  # including the window ending at the final eos


def test_iter_batches_covers_disjoint_windows(tok, tmp_path):
    tf = write_tokens([d.text for d in DOCS] * 3, tok, tmp_path / "t.bin")
    n, block = len(tf), 7
    batches = list(tf.iter_batches(4, block))
    xs, ys = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    n_windows = (n - 1) // block
    assert xs.shape == (n_windows, block) and all(b[0].shape[0] <= 4 for b in batches)
    data = torch.from_numpy(np.asarray(tf.tokens, dtype=np.int64))
    assert torch.equal(xs.reshape(-1), data[:n_windows * block])
    assert torch.equal(ys.reshape(-1), data[1:n_windows * block + 1])


def test_too_few_tokens_for_the_block(tok, tmp_path):
    tf = write_tokens(["ab"], tok, tmp_path / "val.bin")  # eos a b eos
    tf_val = TokenFile(tmp_path / "val.bin", label="validation set")
    with pytest.raises(DataError, match="^validation set has 4 tokens; need more than block_size=4$"):
        tf_val.sample_batch(2, 4, torch.Generator())
    with pytest.raises(DataError, match="token file val.bin has 4 tokens; need more than block_size=64"):
        next(tf.iter_batches(2, 64))
    assert tf.sample_batch(2, 3, torch.Generator())[0].shape == (2, 3)
    with pytest.raises(ConfigError):
        tf.sample_batch(0, 3, torch.Generator())


def test_open_errors(tok, tmp_path):
    with pytest.raises(DataError, match="token file not found"):
        TokenFile(tmp_path / "missing.bin")
    path = tmp_path / "t.bin"
    write_tokens(DOCS, tok, path)
    meta = sidecar_path(path)
    good = meta.read_text()
    meta.write_text("{")
    with pytest.raises(DataError, match="t.bin.json is corrupted"):
        TokenFile(path)
    meta.write_text(json.dumps({**json.loads(good), "n_tokens": 3}))
    with pytest.raises(DataError, match="does not match t.bin.json"):
        TokenFile(path)
    meta.unlink()
    with pytest.raises(DataError, match="no t.bin.json sidecar"):
        TokenFile(path)
