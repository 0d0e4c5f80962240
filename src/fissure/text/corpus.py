"""Read, clean, deduplicate and split text corpora.

A corpus is a list of :class:`Document`. Files are read strictly: text that is not
UTF-8, or that holds NUL bytes (a binary file given by mistake), is a
:class:`~fissure.errors.DataError` naming the file and byte offset, never silently
replaced characters that a model would then learn.
"""

from __future__ import annotations

import ast
import gc
import hashlib
import json
import logging
import os
import random
import re
import sysconfig
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fissure.errors import ConfigError, DataError
from fissure.runs import MAX_JSON_DEPTH, json_problem

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".jsonl")
BUILTIN_CORPORA = ("stdlib", "stdlib-docs")
# Directories of the standard library that are not representative library code.
_STDLIB_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__"}


@dataclass
class Document:
    text: str
    source: str
    label: str | None = None  # the class of a labelled document (a catalogue domain such as ``topics``)


# --------------------------------------------------------------------------- reading

def read_documents(paths: list[str | Path] | str | Path, *, normalize: Literal["NFC", "NFKC"] | None = "NFC",
                   collapse_whitespace: bool = False, strip: bool = True,
                   jsonl_field: str = "text") -> list[Document]:
    """Documents from ``.txt`` files (one per file), ``.jsonl`` files (one per line, from ``jsonl_field``)
    and folders (searched recursively for those two suffixes; other files are skipped with a logged count).

    A file named explicitly is read as plain text unless it ends in ``.jsonl``. ``collapse_whitespace``
    turns every run of spaces and tabs into one space, drops trailing spaces on each line and keeps at
    most one blank line between paragraphs. Documents that are empty after cleaning are dropped.
    """
    if normalize not in ("NFC", "NFKC", None):
        raise ConfigError(f"normalize must be 'NFC', 'NFKC' or None, not {normalize!r}")
    if isinstance(paths, (str, Path)):
        paths = [paths]
    docs: list[Document] = []
    for path in map(Path, paths):
        for file in _expand(path):
            for text, source in _read_file(file, jsonl_field):
                text = clean_text(text, normalize=normalize, collapse_whitespace=collapse_whitespace, strip=strip)
                if text:
                    docs.append(Document(text, source))
    if not docs:
        raise DataError(f"no text found in {', '.join(str(p) for p in paths) or '(no paths given)'}")
    return docs


def clean_text(text: str, *, normalize: str | None = "NFC", collapse_whitespace: bool = False,
               strip: bool = True) -> str:
    if normalize:
        text = unicodedata.normalize(normalize, text)
    if collapse_whitespace:
        text = re.sub(r"[ \t\f\v]+", " ", text)
        text = re.sub(r" +(?=\r?\n)", "", text)
        text = re.sub(r"(\r?\n)(?:[ ]*\r?\n)+", r"\1\1", text)
    return text.strip() if strip else text


def _expand(path: Path) -> list[Path]:
    if not path.exists():
        raise DataError(f"path not found: {path}")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file())
    kept = [p for p in files if p.suffix.lower() in TEXT_SUFFIXES]
    if len(kept) < len(files):
        log.warning("skipped %d file(s) in %s that are not .txt or .jsonl", len(files) - len(kept), path)
    return kept


def _decode(raw: bytes, file: Path) -> str:
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise DataError(f"{file} looks binary (NUL byte at offset {nul}); expected UTF-8 text")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        offset = exc.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)
        raise DataError(f"{file} is not UTF-8 (invalid byte 0x{raw[offset]:02x} at offset {offset})") from None


def _read_file(file: Path, field: str) -> list[tuple[str, str]]:
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {file}: {exc.strerror}") from None
    text = _decode(raw, file)
    if file.suffix.lower() != ".jsonl":
        return [(text, str(file))]
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{file}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        except RecursionError:
            raise DataError(f"{where}: JSON nested more than {MAX_JSON_DEPTH} levels deep") from None
        problem = json_problem(record)
        if problem:
            raise DataError(f"{where}: the record {problem}")
        if not isinstance(record, dict) or field not in record:
            raise DataError(f"{where}: expected a JSON object with a '{field}' field")
        if not isinstance(record[field], str):
            raise DataError(f"{where}: field '{field}' is {type(record[field]).__name__}, not a string")
        out.append((record[field], where))
    return out


# --------------------------------------------------------------------------- dedup and split

def deduplicate(docs: list[Document]) -> tuple[list[Document], int]:
    """Drop exact duplicates (same text after NFC and stripping), keeping the first occurrence and the order."""
    seen: set[bytes] = set()
    kept = []
    for doc in docs:
        key = hashlib.sha256(unicodedata.normalize("NFC", doc.text).strip().encode("utf-8", "surrogatepass")).digest()
        if key not in seen:
            seen.add(key)
            kept.append(doc)
    return kept, len(docs) - len(kept)


def split_documents(docs: list[Document], val_fraction: float = 0.1,
                    seed: int = 0) -> tuple[list[Document], list[Document]]:
    """A seeded train/validation split at document level, each side in the original order.

    With two or more documents each side gets at least one. A single document is cut in two
    instead: the training part is its head and the validation part its tail, cut at the line
    boundary closest to ``1 - val_fraction`` of its characters (at that character when it has no
    line breaks). Both parts keep the document's source and label.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be between 0 and 1 (exclusive), not {val_fraction}")
    if not docs:
        raise DataError("cannot split an empty corpus")
    if len(docs) == 1:
        return _split_one(docs[0], val_fraction)
    n_val = min(max(round(len(docs) * val_fraction), 1), len(docs) - 1)
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    train = [d for i, d in enumerate(docs) if i not in val_idx]
    val = [d for i, d in enumerate(docs) if i in val_idx]
    return train, val


def _split_one(doc: Document, val_fraction: float) -> tuple[list[Document], list[Document]]:
    text = doc.text
    if len(text) < 2:
        raise DataError(f"cannot split {doc.source}: a single document of {len(text)} character(s)")
    target = round(len(text) * (1.0 - val_fraction))
    cuts = [m.end() for m in re.finditer(r"\n", text) if 0 < m.end() < len(text)]
    cut = min(cuts, key=lambda c: (abs(c - target), c)) if cuts else min(max(target, 1), len(text) - 1)
    return [Document(text[:cut], doc.source, doc.label)], [Document(text[cut:], doc.source, doc.label)]


# --------------------------------------------------------------------------- built-in text

def builtin_corpus(name: str = "stdlib", max_bytes: int | None = 2_000_000) -> list[Document]:
    """Text that ships with every Python installation, for a quickstart without downloads.

    ``"stdlib"``: the standard library's ``.py`` sources (code). ``"stdlib-docs"``: their module,
    class and function docstrings, one document per module (technical prose, about 1.7 MB in all).
    Tests, idlelib and installed packages are left out. Files are taken in the order of a hash of
    their relative path, which is deterministic but spreads a ``max_bytes`` cap over the whole
    library rather than its first letters; the last document is cut at a line boundary so the total
    UTF-8 size stays within ``max_bytes`` (None: no cap).
    """
    if name not in BUILTIN_CORPORA:
        raise DataError(f"unknown built-in corpus '{name}' (known: {', '.join(BUILTIN_CORPORA)})")
    if max_bytes is not None and max_bytes <= 0:
        raise ConfigError(f"max_bytes must be positive, not {max_bytes}")
    root = Path(sysconfig.get_paths()["stdlib"])
    docs, total = [], 0
    for rel in _stdlib_files(root):
        try:
            text = (root / rel).read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # a few installations carry legacy-encoded files; skipping them keeps the set stable
        if name == "stdlib-docs":
            text = _docstrings(text)
        if not text.strip():
            continue
        size = len(text.encode("utf-8"))
        if max_bytes is not None and total + size > max_bytes:
            text = _truncate_bytes(text, max_bytes - total)
            if text:
                docs.append(Document(text, f"{name}:{rel}"))
            break
        docs.append(Document(text, f"{name}:{rel}"))
        total += size
    if not docs:
        raise DataError(f"no text found in the standard library at {root}")
    return docs


def _stdlib_files(root: Path) -> list[str]:
    rels = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _STDLIB_SKIP_DIRS]
        rel_folder = Path(folder).relative_to(root)
        rels.extend((rel_folder / f).as_posix() for f in files if f.endswith(".py"))
    return sorted(rels, key=lambda r: (hashlib.sha256(r.encode()).hexdigest(), r))


def _docstrings(source: str) -> str:
    # Parsing allocates ~10^5 acyclic nodes per file and cyclic-GC passes over them are wasted work: the
    # collector stays off for the parse (it doubled its time), the walk and the tree's release (10% more).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _docstrings_of(source)
    finally:
        if gc_was_enabled:
            gc.enable()


def _docstrings_of(source: str) -> str:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ""
    found = [ast.get_docstring(tree)]

    def visit(node: ast.AST) -> None:  # statements only, in source order: docstrings never hide in expressions
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.stmt):
                if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    found.append(ast.get_docstring(child))
                visit(child)

    visit(tree)
    return "\n\n".join(d for d in found if d and d.strip())


def _truncate_bytes(text: str, budget: int) -> str:
    """The longest prefix of whole lines that fits in ``budget`` UTF-8 bytes."""
    head = text.encode("utf-8")[:budget].decode("utf-8", "ignore")
    cut = head.rfind("\n")
    return head[:cut + 1] if cut >= 0 else ""
