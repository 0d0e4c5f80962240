"""Policies: a system prompt with something to protect, requests that try to break it, benign
twins it must still serve, and a detector that says when a reply broke it.

Built-ins live in ``data/*.toml`` (``secret``, ``private_record``, ``topic_ban``); any TOML
file with the same fields works. The ``[detector]`` table names a registered violation
detector (:mod:`fissure.judges.violation`: ``canary``, ``record_fields``, ``regex``).
"""

from __future__ import annotations

import difflib
import re
import string
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, UserError
from ..judges import base as judges
from ..judges.base import DetectorResult
from ..judges.violation import compile_pattern, string_list

DATA_DIR = Path(__file__).parent / "data"


@dataclass(frozen=True)
class BenignTwin:
    """A request the policy allows, with an optional regex a correct answer matches."""

    prompt: str
    expect: str | None = None

    def answered(self, reply: str) -> bool | None:
        """Whether ``reply`` holds the expected answer (None when there is nothing to check)."""
        return None if self.expect is None else re.search(self.expect, reply) is not None


@dataclass(frozen=True)
class Policy:
    name: str
    description: str
    system_prompt: str  # rendered: placeholders filled
    requests: tuple[str, ...]
    benign_twins: tuple[BenignTwin, ...]
    detector: object  # a registered violation detector: check(views) -> DetectorResult
    seed: int
    source: str
    canary: str | None = None

    def check(self, views: str | Sequence[str]) -> DetectorResult:
        """Whether a (canonicalised) reply, or any of its views, breaks the policy."""
        return self.detector.check([views] if isinstance(views, str) else list(views))

    def partial(self, views: str | Sequence[str]) -> str | None:
        """What a reply that does not break the policy still hints at (None: nothing)."""
        return self.detector.partial([views] if isinstance(views, str) else list(views))


# --- loading ----------------------------------------------------------------------------------

_FIELDS = {"name", "description", "system_prompt", "requests", "detector", "benign_twins", "record"}
_REQUIRED = ("name", "description", "system_prompt", "requests", "detector")


def builtin_policies() -> list[str]:
    return sorted(p.stem for p in DATA_DIR.glob("*.toml"))


def _render(template: str, values: dict[str, str], where: str) -> str:
    """``template`` with each ``{name}`` replaced by ``values[name]`` (``{{`` and ``}}`` are braces).
    Placeholders are names only: a conversion (``!r``), a format spec (``:>9``), an attribute or an
    index would let a policy file run Python's formatting machinery on our values."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"{where}: system_prompt is not a valid template: {exc}") from None
    names = {f for _, f, _, _ in parts if f is not None}
    unknown = sorted(names - set(values))
    if unknown:
        raise ConfigError(f"{where}: system_prompt has unknown placeholder {{{unknown[0]}}}; "
                          f"known: {', '.join('{' + k + '}' for k in values) or 'none'}")
    odd = [(f, spec, conv) for _, f, spec, conv in parts if f is not None and (spec or conv)]
    if odd:
        f, spec, conv = odd[0]
        shown = f"{{{f}{'!' + conv if conv else ''}{':' + spec if spec else ''}}}"
        raise ConfigError(f"{where}: system_prompt placeholder {shown} may only name a value, as {{{f}}}")
    if "canary" in values and "canary" not in names:
        raise ConfigError(f"{where}: system_prompt must contain {{canary}} for detector kind 'canary'")
    return "".join(literal + (values[f] if f is not None else "") for literal, f, _, _ in parts)


def _resolve(name_or_path: str | Path) -> Path:
    builtin = DATA_DIR / f"{name_or_path}.toml"
    if isinstance(name_or_path, str) and "/" not in name_or_path and builtin.is_file():
        return builtin
    path = Path(name_or_path)
    if path.is_file():
        return path
    close = difflib.get_close_matches(str(name_or_path), builtin_policies(), n=3)
    hint = f" (did you mean: {', '.join(close)}?)" if close else ""
    raise UserError(f"no policy '{name_or_path}'{hint}; built-ins: {', '.join(builtin_policies())}, "
                    "or give a path to a TOML file")


def load_policy(name_or_path: str | Path, seed: int = 0) -> Policy:
    """A built-in policy by name or a policy TOML file; ``seed`` fixes the canary."""
    path = _resolve(name_or_path)
    where = f"policy {path}"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot be read: {exc.strerror or exc}") from None
    for key in data:
        if key not in _FIELDS:
            close = difflib.get_close_matches(key, sorted(_FIELDS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown field '{key}'{hint}")
    for key in _REQUIRED:
        if key not in data:
            raise ConfigError(f"{where}: missing field '{key}'")
    for key in ("name", "description", "system_prompt"):
        if not isinstance(data[key], str) or not data[key].strip():
            raise ConfigError(f"{where}: field '{key}' must be a non-empty string")
    spec = data["detector"]
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: field 'detector' must be a table")
    for key in spec:
        if key not in ("kind", "patterns"):
            raise ConfigError(f"{where}: unknown field 'detector.{key}' (known: kind, patterns)")
    kinds = [r.name for r in judges.registered("violation")]
    if "kind" not in spec:
        raise ConfigError(f"{where}: missing field 'detector.kind' (one of: {', '.join(kinds)})")
    if spec["kind"] not in kinds:
        raise ConfigError(f"{where}: unknown detector.kind {spec['kind']!r}; known: {', '.join(kinds)}")
    detector, values = judges.get(spec["kind"], "violation").from_policy(spec, data, where, seed)
    twins = []
    raw_twins = data.get("benign_twins", [])
    if not isinstance(raw_twins, list):
        raise ConfigError(f"{where}: field 'benign_twins' must be a list of tables ([[benign_twins]] with prompt "
                          f"and an optional expect), not {type(raw_twins).__name__}")
    for i, twin in enumerate(raw_twins):
        if not isinstance(twin, dict) or "prompt" not in twin:
            raise ConfigError(f"{where}: missing field 'benign_twins[{i}].prompt'")
        extra = sorted(set(twin) - {"prompt", "expect"})
        if extra:
            raise ConfigError(f"{where}: unknown field 'benign_twins[{i}].{extra[0]}' (known: prompt, expect)")
        if not isinstance(twin["prompt"], str) or not twin["prompt"].strip():
            raise ConfigError(f"{where}: field 'benign_twins[{i}].prompt' must be a non-empty string")
        expect = twin.get("expect")
        if expect is not None:
            compile_pattern(expect, f"{where}: benign_twins[{i}].expect")
        twins.append(BenignTwin(twin["prompt"], expect))
    return Policy(name=data["name"], description=data["description"],
                  system_prompt=_render(data["system_prompt"], values, where),
                  requests=string_list(data["requests"], f"{where}: field 'requests'"),
                  benign_twins=tuple(twins), detector=detector, seed=seed, source=str(path),
                  canary=values.get("canary"))
