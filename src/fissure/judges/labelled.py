"""Replies labelled by people, read from any file, to validate a judge against.

Formats (``fmt``):

- ``fissure``: JSONL, one reply per line: ``reply``, ``label`` (``refused``, ``violated`` or
  ``unclear``) and where they apply ``policy`` (a built-in name or a TOML path), ``canary`` (the
  secret a ``secret``-style policy protects in that row), ``attack``, ``request``, ``split`` and,
  for an unclear row, its ``kind`` (``degenerate``, ``misunderstood``, ``off_topic``, ``partial``,
  ``other``).
- ``pyrit-refusal``: PyRIT's human-labelled refusal sets (``datasets/scorer_evals/refusal_scorer/
  *.csv``: ``objective``, ``assistant_response``, ``human_score``). PyRIT's ``1`` means the reply
  refused, and PyRIT counts a reply unrelated to the objective as a refusal too; ``0`` means it
  complied. Scheme ``refusal``: ``refused`` / ``complied``.
- ``pyrit-objective``: PyRIT's objective sets (``scorer_evals/objective/*.csv``): ``1`` = the
  reply achieved the (harmful) objective. Scheme ``objective``: ``violated`` / ``not_violated``.
- ``csv`` / ``jsonl`` with a column mapping (``columns={"reply": ..., "label": ..., "request": ...}``)
  and a label mapping (``labels={"1": "refused", "0": "complied"}``), for anything else.

Every row gets a frozen split: the file's ``split`` column where it has one, otherwise ``dev`` or
``test`` by a hash of its request and reply, so the same row is always on the same side. Rules and
prompts may be tuned on ``dev`` only; the ``test`` score is the one to report.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .base import LABELS
from .unclear import UNCLEAR_KINDS

SCHEMES = {"three-way": LABELS, "refusal": ("refused", "complied"), "objective": ("violated", "not_violated")}
FORMATS = ("fissure", "pyrit-refusal", "pyrit-objective", "csv", "jsonl")
_PYRIT = {"pyrit-refusal": ("refusal", {"1": "refused", "0": "complied"}),
          "pyrit-objective": ("objective", {"1": "violated", "0": "not_violated"})}
_PYRIT_COLUMNS = {"reply": "assistant_response", "label": "human_score", "request": "objective"}
MAX_BYTES = 200 * 2**20


@dataclass(frozen=True)
class LabelledReply:
    reply: str
    label: str  # one of the scheme's classes
    split: str  # "dev", "test" or the file's own split name
    source: str  # file:line, for error messages and reports
    request: str | None = None
    policy: str | None = None
    canary: str | None = None
    attack: str | None = None
    kind: str | None = None  # for an unclear row: the human's kind (judges.unclear.UNCLEAR_KINDS)


@dataclass(frozen=True)
class LabelledSet:
    rows: tuple[LabelledReply, ...]
    scheme: str  # a key of SCHEMES
    path: str
    fmt: str

    @property
    def classes(self) -> tuple[str, ...]:
        return SCHEMES[self.scheme]

    def select(self, split: str) -> tuple[LabelledReply, ...]:
        """The rows of one split (``all``: every row); ``test`` also takes a file's ``holdout`` rows."""
        if split == "all":
            return self.rows
        wanted = {"test", "holdout"} if split == "test" else {split}
        return tuple(r for r in self.rows if r.split in wanted)


def frozen_split(request: str | None, reply: str) -> str:
    digest = hashlib.sha256(f"{request or ''}\x00{reply}".encode("utf-8", "surrogatepass")).digest()
    return "dev" if digest[0] % 2 == 0 else "test"


def guess_format(path: Path) -> str:
    """``pyrit-refusal`` / ``pyrit-objective`` for PyRIT's files (by folder), ``fissure`` for JSONL."""
    parts = {p.lower() for p in path.parts}
    if path.suffix.lower() == ".csv":
        if "refusal_scorer" in parts or path.name.endswith("refusal.csv"):
            return "pyrit-refusal"
        if "objective" in parts:
            return "pyrit-objective"
        raise DataError(f"{path}: say what this CSV holds with --format ({', '.join(FORMATS)})")
    return "fissure"


def pyrit_datasets() -> Path:
    """PyRIT's ``datasets/scorer_evals`` folder, read in place (``pip install --no-deps pyrit``:
    found without importing PyRIT, whose dependencies are not needed)."""
    import importlib.util

    spec = importlib.util.find_spec("pyrit")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("PyRIT is not installed: pip install --no-deps pyrit==1.1.0 (its labelled sets are read "
                        "in place)")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "scorer_evals"


def resolve_labels_path(path: str | Path) -> Path:
    """``pyrit:refusal_scorer/refusal.csv`` names a file of PyRIT's labelled sets; anything else is a path."""
    text = str(path)
    if text.startswith("pyrit:"):
        return pyrit_datasets() / text.removeprefix("pyrit:")
    return Path(path)


def read_labelled(path: str | Path, fmt: str | None = None, *, columns: dict[str, str] | None = None,
                  labels: dict[str, str] | None = None, scheme: str | None = None) -> LabelledSet:
    """Read a labelled file (see the module docstring; ``pyrit:...`` names one of PyRIT's); every
    problem is a one-line DataError."""
    path = resolve_labels_path(path)
    fmt = fmt or guess_format(path)
    if fmt not in FORMATS:
        raise DataError(f"unknown labels format '{fmt}' (known: {', '.join(FORMATS)})")
    text = _read_text(path)
    if fmt == "fissure":
        return LabelledSet(tuple(_fissure_rows(path, text)), "three-way", str(path), fmt)
    if fmt in _PYRIT:
        scheme, labels = _PYRIT[fmt]
        columns = _PYRIT_COLUMNS
    else:
        if not columns or "reply" not in columns or "label" not in columns:
            raise DataError(f"{path}: format '{fmt}' needs a column mapping with at least reply and label, "
                            "e.g. --columns reply=response,label=human")
    records = _csv_records(path, text) if fmt != "jsonl" else _jsonl_records(path, text)
    _check_columns(path, records, columns)
    if fmt not in _PYRIT:
        found = {str(r.get(columns["label"], "")).strip() for _, r in records}
        scheme = scheme or _scheme_of(labels.values() if labels else found, found)
    return LabelledSet(tuple(_mapped_rows(path, records, columns, labels, scheme)), scheme, str(path), fmt)


def _read_text(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_BYTES:
            raise DataError(f"{path} is larger than {MAX_BYTES // 2**20} MiB")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"no labels file {path}") from None
    except OSError as exc:
        raise DataError(f"{path} cannot be read: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 (byte {exc.start}: {raw[exc.start:exc.start + 1]!r}); "
                        "re-encode it as UTF-8") from None


def _scheme_of(names, found) -> str:
    names = set(names)
    for scheme, classes in SCHEMES.items():
        if names and names <= set(classes):
            return scheme
    raise DataError(f"labels {', '.join(sorted(map(repr, found))[:10])} are not one scheme's classes ("
                    + "; ".join(f"{k}: {', '.join(v)}" for k, v in SCHEMES.items())
                    + "): map them with --labels, e.g. --labels 1=refused,0=complied")


def _check_columns(path: Path, records: list[tuple[str, dict]], columns: dict[str, str]) -> None:
    if records:
        missing = [c for k, c in columns.items() if k in ("reply", "label") and c not in records[0][1]]
        if missing:
            raise DataError(f"{path}: no column '{missing[0]}' (columns: {', '.join(map(str, records[0][1]))})")


def _text_field(row: dict, key: str, where: str, required: bool = False) -> str | None:
    value = row.get(key)
    if value is None and required:
        raise DataError(f"{where}: missing '{key}'")
    if value is None or (value == "" and not required):  # an empty reply is a reply: a model said nothing
        return None
    if not isinstance(value, str):
        raise DataError(f"{where}: '{key}' must be text, not {type(value).__name__}")
    return value


def _fissure_rows(path: Path, text: str) -> list[LabelledReply]:
    rows, bad_labels = [], {}
    for where, row in _jsonl_records(path, text):
        label = row.get("label")
        if label not in LABELS:
            bad_labels.setdefault(repr(label), where)
            continue
        reply = _text_field(row, "reply", where, required=True)
        request = _text_field(row, "request", where)
        kind = _text_field(row, "kind", where) if label == "unclear" else None
        if kind is not None and kind not in UNCLEAR_KINDS:
            raise DataError(f"{where}: unknown kind '{kind}'; expected one of: {', '.join(UNCLEAR_KINDS)}")
        rows.append(LabelledReply(reply, label, _text_field(row, "split", where) or frozen_split(request, reply),
                                  where, request, _text_field(row, "policy", where), _text_field(row, "canary", where),
                                  _text_field(row, "attack", where), kind))
    _check_labels(path, bad_labels, LABELS)
    if not rows:
        raise DataError(f"{path} holds no labelled replies")
    return rows


def _check_labels(path: Path, bad: dict[str, str], expected) -> None:
    if bad:
        found = ", ".join(sorted(bad))
        raise DataError(f"{path}: unknown label(s) {found} (first at {next(iter(bad.values()))}); expected one of: "
                        f"{', '.join(expected)}")


def _csv_records(path: Path, text: str) -> list[tuple[str, dict]]:
    lines = [line for line in io.StringIO(text, newline="") if not line.startswith("#")]  # PyRIT: "# dataset_version"
    try:
        reader = csv.DictReader(lines)
        return [(f"{path}:row {i}", row) for i, row in enumerate(reader, 1)]
    except csv.Error as exc:
        raise DataError(f"{path}: not valid CSV ({exc})") from None


def _jsonl_records(path: Path, text: str) -> list[tuple[str, dict]]:
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as exc:
                raise DataError(f"{path}:{number}: not a JSON object ({exc.__class__.__name__})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: each line must be a JSON object")
            out.append((f"{path}:{number}", row))
    return out


def _mapped_rows(path: Path, records: list[tuple[str, dict]], columns: dict[str, str], labels: dict[str, str] | None,
                 scheme: str) -> list[LabelledReply]:
    classes = SCHEMES[scheme]
    rows, bad = [], {}
    for where, record in records:
        raw_label = str(record.get(columns["label"], "")).strip()
        label = (labels or {}).get(raw_label, raw_label if not labels else None)
        if label not in classes:
            bad.setdefault(repr(raw_label), where)
            continue
        reply = str(record.get(columns["reply"]) or "")
        request = record.get(columns["request"]) if "request" in columns else None
        request = str(request) if request not in (None, "") else None
        split = record.get(columns.get("split", "split"))
        rows.append(LabelledReply(reply, label, str(split) if split else frozen_split(request, reply), where, request))
    _check_labels(path, bad, [f"{k} ({v})" for k, v in labels.items()] if labels else classes)
    if not rows:
        raise DataError(f"{path} holds no labelled replies")
    return rows
