"""Fine-tuning data: read a file or folder, say what kind of data it is, and check every row.

The kind decides the default objective:

| the data | kind | objective |
|---|---|---|
| text files or a folder (``.txt``, ``.md``, ...), or JSONL/CSV with only a text column | ``text`` | ``causal_lm`` |
| JSONL rows with ``messages`` (``role`` / ``content``) | ``chat`` | ``sft`` |
| JSONL rows with ``prompt`` and ``completion`` | ``pairs`` | ``sft`` |
| JSONL rows with ``prompt``, ``chosen`` and ``rejected`` | ``preferences`` | ``dpo`` |
| the same in TRL's conversational form: ``prompt`` a list of messages, ``chosen`` / ``rejected`` lists of assistant messages | ``preferences`` | ``dpo`` |
| JSONL or CSV rows with a text and a label column | ``labelled`` | ``classify`` |

Text is held out by whole document; with fewer than ten documents (one long file, say), by
passages of about 2,000 characters cut at blank lines.

Everything is checked here, before a model is loaded or a run directory made: a missing column
(named, with the columns found), an empty or non-UTF-8 file, a chat without an assistant turn,
identical chosen and rejected completions, labels outside the given label set. Each is one line.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from ..runs import MAX_JSON_DEPTH, json_problem
from ..text.catalogue import DOMAINS, get_domain, load_domain
from ..text.corpus import Document, read_documents

KIND_OBJECTIVE = {"text": "causal_lm", "chat": "sft", "pairs": "sft", "preferences": "dpo", "labelled": "classify"}
ROLES = ("system", "user", "assistant")
MIN_DOCUMENTS = 10  # fewer text documents than this are cut into passages before the split
PASSAGE_CHARS = 2000
CATALOGUE_DOCUMENTS = 2000  # at most this many documents of a catalogue domain (a deterministic sample)


@dataclass
class TuningData:
    kind: str  # one of KIND_OBJECTIVE
    source: str
    documents: list[Document] = field(default_factory=list)  # kind "text"
    rows: list[dict] = field(default_factory=list)  # every other kind, checked
    labels: list[str] = field(default_factory=list)  # kind "labelled": the label set, in class order

    def __len__(self) -> int:
        return len(self.documents) if self.kind == "text" else len(self.rows)


def _read_rows(path: Path) -> tuple[list[dict], list[str]]:
    """Rows of a JSONL or CSV file, and the columns found (one-line errors for unreadable files)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (bad byte at offset {exc.start})") from None
    if not text.strip():
        raise DataError(f"{path} is empty")
    if path.suffix.lower() in (".csv", ".tsv"):
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        rows = [dict(r) for r in reader]
        if not rows:
            raise DataError(f"{path} has a header but no rows")
        return rows, list(reader.fieldnames or [])
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"{path}: line {n} is not JSON") from None
        except RecursionError:
            raise DataError(f"{path}: line {n} is nested more than {MAX_JSON_DEPTH} levels deep") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {n} is not a JSON object")
        problem = json_problem(row)
        if problem:
            raise DataError(f"{path}: line {n} {problem}")
        rows.append(row)
    return rows, list(dict.fromkeys(k for r in rows for k in r))


def _kind(columns: list[str], text_column: str, label_column: str) -> str:
    if "messages" in columns:
        return "chat"
    if {"prompt", "chosen", "rejected"} <= set(columns):
        return "preferences"
    if {"prompt", "completion"} <= set(columns):
        return "pairs"
    if text_column in columns and label_column in columns:
        return "labelled"
    if text_column in columns:
        return "text"
    raise DataError(f"cannot tell what the rows are: found columns {', '.join(columns) or 'none'}; expected "
                    f"messages, prompt+completion, prompt+chosen+rejected, or {text_column} (+ {label_column})")


_REQUIRED = {"chat": ("messages",), "pairs": ("prompt", "completion"), "preferences": ("prompt", "chosen", "rejected")}


def _check_rows(path: Path, kind: str, rows: list[dict], text_column: str, label_column: str) -> None:
    required = _REQUIRED.get(kind, (text_column, label_column) if kind == "labelled" else (text_column,))
    for n, row in enumerate(rows, 1):
        missing = [c for c in required if c not in row or row[c] is None or row[c] == ""]
        if missing:
            raise DataError(f"{path}: row {n} has no '{missing[0]}' (found: {', '.join(row) or 'nothing'})")
        if kind == "preferences" and isinstance(row["prompt"], list):
            _check_conversational(path, n, row)
            continue
        for column in required:
            if column != "messages" and column != label_column and not isinstance(row[column], str):
                raise DataError(f"{path}: row {n}: '{column}' must be text, not {type(row[column]).__name__}")
        if kind == "chat":
            _check_chat(path, n, row["messages"])
        if kind == "preferences" and row["chosen"].strip() == row["rejected"].strip():
            raise DataError(f"{path}: row {n}: chosen and rejected are identical (nothing to prefer)")


def _check_messages(path: Path, n: int, column: str, messages) -> None:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{path}: row {n}: '{column}' must be a non-empty list of {{role, content}}")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"{path}: row {n}: every message in '{column}' needs a role ({', '.join(ROLES)}) "
                            f"and text content")
        if "prefix" in m:  # a forced start of the reply: in the context, not learnt
            prefix = m["prefix"]
            if m["role"] != "assistant" or not isinstance(prefix, str) or not prefix.strip() or \
                    not m["content"].startswith(prefix) or not m["content"][len(prefix):].strip():
                raise DataError(f"{path}: row {n}: a message's 'prefix' must be the start of an assistant "
                                f"message's content, with more content after it to learn")


def _check_conversational(path: Path, n: int, row: dict) -> None:
    """TRL's conversational preference row: a prompt of messages that ends with a user turn, and
    chosen / rejected lists of assistant messages."""
    _check_messages(path, n, "prompt", row["prompt"])
    if row["prompt"][-1]["role"] != "user":
        raise DataError(f"{path}: row {n}: a conversational 'prompt' must end with a user message")
    for column in ("chosen", "rejected"):
        _check_messages(path, n, column, row[column])
        if any(m["role"] != "assistant" for m in row[column]):
            raise DataError(f"{path}: row {n}: '{column}' of a conversational row holds assistant messages only")
    if row["chosen"] == row["rejected"]:
        raise DataError(f"{path}: row {n}: chosen and rejected are identical (nothing to prefer)")


def _check_chat(path: Path, n: int, messages) -> None:
    _check_messages(path, n, "messages", messages)
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{path}: row {n}: the chat has no assistant turn (nothing to learn)")


def _labels(path: Path, rows: list[dict], label_column: str, given: list[str]) -> list[str]:
    found = sorted({str(r[label_column]) for r in rows})
    if not given:
        if len(found) < 2:
            raise DataError(f"{path}: only one label ({', '.join(found)}) in '{label_column}': a classifier needs two")
        return found
    outside = [label for label in found if label not in given]
    if outside:
        raise DataError(f"{path}: label '{outside[0]}' is not in the label set ({', '.join(given)})")
    return list(given)


def read_tuning_data(source: str, text_column: str = "text", label_column: str = "label",
                     labels: list[str] | None = None) -> TuningData:
    """The data at ``source`` (a text file or folder, a JSONL or a CSV file, or the name of a domain
    in the offline catalogue, e.g. ``legal`` or ``topics``), checked."""
    path = Path(source).expanduser()
    if not path.exists() and source in DOMAINS:
        return from_catalogue(source, text_column, label_column, labels)
    if not path.exists():
        raise DataError(f"no data at {source}: give a text file or folder, a JSONL or a CSV file, or a domain "
                        f"of `fissure data list` ({', '.join(DOMAINS)})")
    if path.is_dir() or path.suffix.lower() not in (".jsonl", ".csv", ".tsv"):
        documents = read_documents([path])
        if len(documents) < MIN_DOCUMENTS:  # a few long files: hold out whole passages instead
            documents = [piece for d in documents for piece in passages(d)]
        if len(documents) < 2:
            raise DataError(f"{source} is too short to hold any text out for validation (one passage)")
        return TuningData("text", str(path), documents=documents)
    rows, columns = _read_rows(path)
    kind = _kind(columns, text_column, label_column)
    _check_rows(path, kind, rows, text_column, label_column)
    if kind == "text":
        return TuningData("text", str(path), documents=[Document(r[text_column], f"{path}:{i}")
                                                         for i, r in enumerate(rows, 1)])
    data = TuningData(kind, str(path), rows=rows)
    if kind == "labelled":
        data.labels = _labels(path, rows, label_column, labels or [])
    return data


def from_catalogue(name: str, text_column: str, label_column: str, labels: list[str] | None,
                   max_documents: int = CATALOGUE_DOCUMENTS) -> TuningData:
    """A named offline domain: its documents (text), or its texts and labels (labelled)."""
    documents = load_domain(name, max_documents=max_documents)
    if get_domain(name).kind == "text":
        return TuningData("text", f"data:{name}", documents=documents)
    rows = [{text_column: d.text, label_column: d.label} for d in documents]
    return TuningData("labelled", f"data:{name}", rows=rows,
                      labels=_labels(Path(name), rows, label_column, labels or []))


def passages(document: Document, size: int = PASSAGE_CHARS) -> list[Document]:
    """A document cut at blank lines into passages of about ``size`` characters."""
    out, current = [], ""
    for paragraph in document.text.split("\n\n"):
        if current and len(current) + len(paragraph) > size:
            out.append(current)
            current = ""
        current = f"{current}\n\n{paragraph}" if current else paragraph
    if current.strip():
        out.append(current)
    return [Document(text, f"{document.source}#{i}") for i, text in enumerate(out)]


def split(items: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """A seeded train/validation split of whole documents or rows (at least one of each)."""
    if len(items) < 2:
        raise DataError(f"need at least 2 documents or rows to hold one out for validation, found {len(items)}")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = min(len(items) - 1, max(1, round(len(items) * val_fraction)))
    val = sorted(order[:n_val])
    keep = set(val)
    return [items[i] for i in range(len(items)) if i not in keep], [items[i] for i in val]
