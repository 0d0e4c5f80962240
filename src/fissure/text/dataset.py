"""Token files: a tokenized corpus as one flat memory-mapped array, so corpora larger than RAM train.

Layout of ``train.bin``: ``eos doc1 eos doc2 eos ... docN eos`` as little-endian uint16
(uint32 when the vocabulary does not fit), next to a sidecar ``train.bin.json`` with the
dtype and counts. The leading eos makes every document, the first included, start after
``<|endoftext|>``, which therefore also serves as BOS.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fissure.errors import ConfigError, DataError
from fissure.text.corpus import Document
from fissure.text.tokenizers import Tokenizer

FORMAT_VERSION = 1


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def write_tokens(docs: Iterable[Document | str], tokenizer: Tokenizer, path: str | Path, *,
                 batch_docs: int = 256, progress: bool = False) -> TokenFile:
    """Tokenize ``docs`` into ``path`` (and its ``.json`` sidecar), streaming ``batch_docs`` documents at a time.

    Both files are written under temporary names and then moved into place, so an interrupted
    run never leaves a half-written token file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype("<u2") if tokenizer.vocab_size <= 65535 else np.dtype("<u4")
    eos = tokenizer.eos_id
    n_tokens = n_docs = n_bytes = 0
    tmp, tmp_meta = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".json.tmp")
    total = len(docs) if hasattr(docs, "__len__") else None
    texts = (d.text if isinstance(d, Document) else d for d in docs)
    try:
        with open(tmp, "wb") as f, tqdm(total=total, unit="doc", desc=f"tokenizing {path.name}", file=sys.stderr,
                                        disable=not progress) as bar:
            np.array([eos], dtype=dtype).tofile(f)
            n_tokens = 1
            while batch := list(islice(texts, batch_docs)):
                flat: list[int] = []
                for ids in tokenizer.encode_batch(batch):
                    flat.extend(ids)
                    flat.append(eos)
                np.asarray(flat, dtype=dtype).tofile(f)
                n_tokens += len(flat)
                n_docs += len(batch)
                n_bytes += sum(len(t.encode("utf-8")) for t in batch)
                bar.update(len(batch))
        if n_docs == 0:
            raise DataError(f"no documents to tokenize into {path}")
        meta = {"format": FORMAT_VERSION, "dtype": dtype.name, "n_tokens": n_tokens, "n_docs": n_docs,
                "n_bytes": n_bytes, "tokenizer": tokenizer.name, "vocab_size": tokenizer.vocab_size, "eos_id": eos}
        tmp_meta.write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, path)
        os.replace(tmp_meta, sidecar_path(path))
    finally:
        tmp.unlink(missing_ok=True)
        tmp_meta.unlink(missing_ok=True)
    return TokenFile(path)


class TokenFile:
    """A read-only, memory-mapped token file written by :func:`write_tokens`.

    ``label`` names the file in errors ("validation set has 40 tokens; ...").
    """

    def __init__(self, path: str | Path, label: str | None = None):
        self.path = Path(path)
        self.label = label or f"token file {self.path.name}"
        meta_file = sidecar_path(self.path)
        if not self.path.is_file():
            raise DataError(f"token file not found: {self.path}")
        if not meta_file.is_file():
            raise DataError(f"{self.path} has no {meta_file.name} sidecar: write token files with write_tokens")
        try:
            meta = json.loads(meta_file.read_text())
            self.dtype = np.dtype(meta["dtype"]).newbyteorder("<")
            self.n_tokens, self.n_docs, self.n_bytes = int(meta["n_tokens"]), int(meta["n_docs"]), int(meta["n_bytes"])
            self.tokenizer_name = meta["tokenizer"]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{meta_file} is corrupted ({exc.__class__.__name__})") from None
        if self.path.stat().st_size != self.n_tokens * self.dtype.itemsize:
            raise DataError(f"{self.path} does not match {meta_file.name}: expected {self.n_tokens} "
                            f"{self.dtype.name} tokens, found {self.path.stat().st_size} bytes")
        self.meta = meta
        self.tokens = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.n_tokens,))

    def __len__(self) -> int:
        return self.n_tokens

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r}, n_tokens={self.n_tokens}, n_docs={self.n_docs})"

    def _check(self, batch_size: int, block_size: int) -> None:
        if batch_size < 1 or block_size < 1:
            raise ConfigError(f"batch_size and block_size must be positive, not {batch_size} and {block_size}")
        if self.n_tokens <= block_size:
            raise DataError(f"{self.label} has {self.n_tokens} tokens; need more than block_size={block_size}")

    def _windows(self, starts: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.tokens[starts[:, None] + np.arange(block_size + 1)].astype(np.int64)
        rows = torch.from_numpy(rows)
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()

    def sample_batch(self, batch_size: int, block_size: int,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` random windows (x, y = x shifted by one), drawn only from ``generator``."""
        self._check(batch_size, block_size)
        starts = torch.randint(self.n_tokens - block_size, (batch_size,), generator=generator).numpy()
        return self._windows(starts, block_size)

    def iter_batches(self, batch_size: int, block_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Consecutive non-overlapping windows from the start, for evaluation; a tail shorter than a window is left out."""
        self._check(batch_size, block_size)
        starts = np.arange(0, self.n_tokens - block_size, block_size)
        for i in range(0, len(starts), batch_size):
            yield self._windows(starts[i:i + batch_size], block_size)
