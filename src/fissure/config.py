"""Typed configuration: TOML files loaded into dataclasses.

Unknown keys are errors that name the key; ``--set section.field=value`` overrides any
field, with the value parsed as TOML (so ``3e-4``, ``true`` and ``"text"`` all work).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown_key(key: str, where: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown config key '{where}{key}'{hint}; known keys: {', '.join(sorted(known))}")


INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # what torch, numpy and safetensors can hold


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        for arg in args[:-1]:  # the first type the value fits; the last one's error otherwise
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                pass
        return _coerce(value, args[-1], where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config '{where}' must be a table, got {type(value).__name__}")
        return from_dict(tp, value, prefix=where + ".")
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config '{where}' must be a list, got {_show(value)}")
        (inner,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(v, inner, where) for v in value]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config '{where}' must be a table, got {type(value).__name__}")
        inner = (typing.get_args(tp) or (str, Any))[1]
        return {k: _coerce(v, inner, f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:
            raise ConfigError(f"config '{where}' is too large a number: {_show(value)}") from None
    if tp in (int, float, str, bool) and not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"config '{where}' must be {tp.__name__}, got {_show(value)}")
    if tp is float and not math.isfinite(value):
        raise ConfigError(f"config '{where}' must be a finite number, got {value}")
    if tp is int and not INT_MIN <= value <= INT_MAX:
        raise ConfigError(f"config '{where}' is out of range: {_show(value)} (integers must fit in 64 bits)")
    return value


def _show(value: Any, limit: int = 60) -> str:
    """A value for an error message: its repr, cut to ``limit`` characters (a config can hold anything)."""
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # deeply nested, or an int too long to print
        text = f"a {type(value).__name__}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_range(name: str, value: Any, lo: float | None = None, hi: float | None = None, *,
                lo_open: bool = False, hi_open: bool = False, integer: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a finite number (an integer with
    ``integer``) within ``[lo, hi]`` (``lo_open``/``hi_open`` exclude an end). The one range check
    of every config's ``__post_init__``: NaN, infinity, a wrong type and a huge value all fail."""
    number = isinstance(value, int) if integer else isinstance(value, (int, float))
    ok = number and not isinstance(value, bool) and (isinstance(value, int) or math.isfinite(value))
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        kind = "an integer" if integer else "a number"
        lo, hi = (x if x is None or isinstance(x, int) else f"{x:g}" for x in (lo, hi))
        if lo is not None and hi is not None:
            want = f"{kind} in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        elif lo is not None:
            want = f"{kind} {'>' if lo_open else '>='} {lo}"
        elif hi is not None:
            want = f"{kind} {'<' if hi_open else '<='} {hi}"
        else:
            want = f"a finite {'integer' if integer else 'number'}"
        raise ValueError(f"{name} must be {want}, not {_show(value)}")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict; unknown keys and wrong types are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"config{(' ' + repr(prefix.rstrip('.'))) if prefix else ''} must be a table, "
                          f"got {type(data).__name__}")
    types_ = _field_types(cls)
    for key in data:
        if key not in types_:
            raise _unknown_key(key, prefix, list(types_))
    kwargs = {k: _coerce(v, types_[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        error = ConfigError(f"invalid config{(' ' + prefix.rstrip('.')) if prefix else ''}: {exc}")
        error.detail = str(exc)  # the bare reason, for callers that say where the config came from
        raise error from None


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as a plain nested dict, with ``None`` fields left out (TOML has no null)."""

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if x is not None}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return clean(dataclasses.asdict(obj))


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-4"`` -> (["train", "lr"], 3e-4). The value is parsed as TOML, else kept as a string."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to a raw config dict (validation happens in :func:`from_dict`)."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
        node[path[-1]] = value
    return data


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file with one-line errors for a missing file or bad syntax."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_string(text: str) -> str:
    """A basic TOML string: quotes, backslashes and every control character escaped, so any text
    written to a run's config.toml reads back unchanged. Lone surrogates cannot be written (TOML is
    UTF-8): a ConfigError."""
    out = []
    for ch in text:
        code = ord(ch)
        if 0xD800 <= code <= 0xDFFF:
            raise ConfigError(f"text with a lone surrogate (U+{code:04X}) cannot be saved in a config: {text[:40]!r}")
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif code < 0x20 or code == 0x7F:
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(ch, f"\\u{code:04X}"))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def dump_toml(data: dict[str, Any]) -> str:
    """Write a nested dict as TOML (scalars, lists and tables; a table inside a list is written inline:
    enough for our configs and policy files)."""

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return _toml_string(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        if isinstance(v, dict):  # inside a list: an inline table
            return "{" + ", ".join(f"{_toml_key(k)} = {scalar(x)}" for k, x in v.items() if x is not None) + "}"
        raise TypeError(f"cannot write {type(v).__name__} to TOML")

    lines: list[str] = []

    def table(d: dict[str, Any], name: str) -> None:
        d = {k: v for k, v in d.items() if v is not None}  # TOML has no null: absent means default
        flat = {k: v for k, v in d.items() if not isinstance(v, dict)}
        nested = {k: v for k, v in d.items() if isinstance(v, dict)}
        if name and flat:
            lines.append(f"[{name}]")
        for k, v in flat.items():
            lines.append(f"{_toml_key(k)} = {scalar(v)}")
        if flat:
            lines.append("")
        for k, v in nested.items():
            table(v, f"{name}.{_toml_key(k)}" if name else _toml_key(k))

    table(data, "")
    return "\n".join(lines).rstrip() + "\n"
