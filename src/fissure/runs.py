"""Where fissure writes: run directories (``runs/<verb>-<timestamp>/`` with the resolved config,
provenance and results) and the cache of converted weights and trained lab organisms.

Nothing is printed that is not also saved in a run directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from .config import dump_toml
from .errors import UserError

_PACKAGES = ("fissure", "torch", "numpy", "tokenizers", "safetensors", "sacrebleu", "transformers", "gguf")


def cache_dir() -> Path:
    """``$FISSURE_CACHE``, else ``$XDG_CACHE_HOME/fissure``, else ``~/.cache/fissure``."""
    if os.environ.get("FISSURE_CACHE"):
        return Path(os.environ["FISSURE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "fissure"


def create_run_dir(verb: str, root: str | Path = "runs") -> Path:
    """A fresh ``root/<verb>-YYYYmmdd-HHMMSS`` directory (suffixed ``-2``, ``-3``... on collision)."""
    root = Path(root)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = root / f"{verb}-{stamp}"
    path, n = base, 1
    while True:
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            n += 1
            path = base.with_name(f"{base.name}-{n}")
        except OSError as exc:  # a file in the way, no permission, a read-only or full disk
            raise UserError(f"cannot create a run directory in {root}: {exc.strerror or exc}") from None


def git_commit() -> str:
    """The commit of the fissure source tree (or of the working directory), or "unknown"."""
    for where in (Path(__file__).resolve().parent, Path.cwd()):
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return out.stdout.strip() + ("-dirty" if dirty else "")
    return "unknown"


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def provenance(seed: int | None, threads: int | None = None, **extra: Any) -> dict[str, Any]:
    """What ``meta.json`` holds: seed, versions, git commit, machine (with the CPU's torch dispatch
    level and bf16 flags) and the command line."""
    from .utils import cpu_features  # torch, imported only once a run starts

    return {
        "seed": seed,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "threads": threads, "cpu": cpu_features()},
        "argv": sys.argv,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }


def write_text_atomic(path: Path, text: str) -> None:
    """Write a file so that a kill leaves the old version or the new one, never half of either:
    a temporary sibling, fsynced, renamed over ``path``, the directory fsynced."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (see :func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def append_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


MAX_JSON_DEPTH = 64  # lists and objects inside each other: more than any record of ours


def json_problem(value: Any) -> str | None:
    """What makes a parsed JSON value unusable as a record, or None: nesting deeper than
    :data:`MAX_JSON_DEPTH` (code that walks it would recurse without end) or a lone surrogate
    (JSON's ``\\udcff`` escape; such text cannot be written as UTF-8 again). Walked without recursion."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                return f"holds a lone surrogate (U+{ord(item[exc.start]):04X}), which is not text"
        elif isinstance(item, (list, dict)):
            if depth >= MAX_JSON_DEPTH:
                return f"is nested more than {MAX_JSON_DEPTH} levels deep"
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return None


def read_json(path: Path) -> Any:
    """A JSON file a run wrote; a missing or unreadable one is a :class:`UserError` naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise UserError(f"{path} is not readable JSON: {exc}") from None


def read_meta(run_dir: Path) -> dict | None:
    """A run directory's ``meta.json`` (provenance: versions, commit, machine), None if absent."""
    path = Path(run_dir) / "meta.json"
    return read_json(path) if path.is_file() else None


def write_jsonl(path: Path, rows: list[Any]) -> None:
    """A whole JSONL file, one value per line, written atomically."""
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path, repair: bool = False) -> list[tuple[int, Any]]:
    """``(line number, value)`` of every non-empty line of a JSONL file ([] if there is none).

    A last line cut off by a crash is dropped (and, with ``repair``, removed from the file so
    that appending goes on cleanly); a bad line anywhere else (or text that is not UTF-8, JSON
    nested absurdly deep, a lone surrogate) is a one-line UserError.
    """
    path = Path(path)
    if not path.is_file():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (bad byte at offset {exc.start})") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except RecursionError:
            raise UserError(f"{path}: line {n} is nested more than {MAX_JSON_DEPTH} levels deep") from None
        except json.JSONDecodeError:
            if n != len(lines):
                raise UserError(f"{path}: line {n} is not JSON") from None
            if repair:
                write_jsonl(path, [r for _, r in rows])
            continue
        problem = json_problem(value)
        if problem:
            raise UserError(f"{path}: line {n} {problem}")
        rows.append((n, value))
    return rows


# What a run directory holds before it holds results: provenance, and the token files fissure train
# derives from its input (a user mistake found while preparing data leaves nothing else behind)
_PROVENANCE_ONLY = {"config.toml", "meta.json", "data"}


@contextlib.contextmanager
def run_directory(verb: str, config: dict[str, Any], seed: int | None, root: str | Path = "runs",
                  threads: int | None = None):
    """:func:`start_run` as a context: if the work fails before writing anything but the
    provenance files (a user mistake found early), the empty run directory is removed again,
    so a failed command leaves nothing half-written. Results already written are kept."""
    run_dir = start_run(verb, config, seed, root=root, threads=threads)
    try:
        yield run_dir
    except BaseException:
        if {p.name for p in run_dir.iterdir()} <= _PROVENANCE_ONLY:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def start_run(verb: str, config: dict[str, Any], seed: int | None, root: str | Path = "runs",
              threads: int | None = None) -> Path:
    """Create the run directory and write ``config.toml`` and ``meta.json`` into it."""
    text = dump_toml(config)  # a config that cannot be saved is an error before anything is made
    run_dir = create_run_dir(verb, root)
    try:
        write_text_atomic(run_dir / "config.toml", text)
        write_json(run_dir / "meta.json", provenance(seed, threads))
    except OSError as exc:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise UserError(f"cannot write the run directory {run_dir}: {exc.strerror or exc}") from None
    return run_dir
