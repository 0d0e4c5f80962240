"""Which backend loads a model spec: a registry of matchers, so a new backend is one decorated
loader in one file instead of another branch in :func:`fissure.load`.

A spec (a name, a URL, a path) is parsed once into a :class:`ModelSpec`. Each entry has a
``matches(spec)`` predicate; the entries are tried in one fixed order, highest ``priority``
first (ties by name), and the first that matches loads the model. The built-in order:

    100  named models    the spec is a registered name (``smollm2``); beats a path of that name
     90  http            an ``http(s)://`` URL of an OpenAI-compatible server
     60  adapter         a LoRA adapter checkpoint of ``fissure tune`` (its base loaded by its own spec)
     55  ngram           a saved n-gram model (``config.json`` with ``family`` "ngram")
     50  checkpoint      a fissure checkpoint directory (``config.json`` with ``family``)
     40  gguf-llama      a ``.gguf`` file, on the native Llama
     40  hf-llama        an HF directory with ``model_type`` llama, on the native Llama
     10  transformers    any HF directory or ``.gguf`` file, through transformers

``load(backend=...)`` chooses between implementations of the same spec: an entry's ``engine``
(``"native"`` or ``"transformers"``) says which choice it belongs to, ``None`` that the choice
does not apply (names, URLs and checkpoints have one loader each). ``"auto"`` takes the first
match of any engine, so an HF model without a native implementation falls back to transformers.

The built-in entries are registered beside their loaders (``native.py``, ``http.py``,
``transformers.py``); importing :mod:`fissure.backends` imports all three. A new backend is one
``@register_backend(...)`` loader, a new named model one ``@register_model(...)``.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import BackendError, LanguageModel

ENGINES = ("auto", "native", "transformers")  # the values of load(backend=...)
NAMED_PRIORITY = 100


@dataclass(frozen=True)
class ModelSpec:
    """A model spec, parsed once: what every matcher looks at."""

    text: str
    path: Path  # the text as a path (``~`` expanded), whether or not it is one
    exists: bool
    is_file: bool
    config: dict[str, Any] | None  # config.json of a directory that has one ({} if it is not a JSON object)

    @classmethod
    def parse(cls, spec: str | Path) -> ModelSpec:
        text = str(spec)
        path = Path(text).expanduser()
        config_file = path / "config.json"
        config = None
        if path.is_dir() and config_file.is_file():
            try:
                data = json.loads(config_file.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise BackendError(f"{config_file} is not valid JSON") from None
            config = data if isinstance(data, dict) else {}
        return cls(text=text, path=path, exists=path.exists(), is_file=path.is_file(), config=config)

    @property
    def is_gguf(self) -> bool:
        return self.is_file and self.path.suffix == ".gguf"


@dataclass(frozen=True)
class BackendEntry:
    """One way to load a model: which specs it takes and how it loads them."""

    name: str
    description: str  # one line: what runs the model
    accepts: str  # the specs it matches, in words (for `fissure models list`)
    matches: Callable[[ModelSpec], bool]
    load: Callable[..., LanguageModel]  # load(spec: ModelSpec, *, batch_size, model, **kwargs)
    priority: int
    engine: str | None = None  # "native" | "transformers": what load(backend=...) picks; None: no choice
    named: bool = False  # a registered model name rather than a kind of spec


BACKENDS: dict[str, BackendEntry] = {}


def register_backend(name: str, *, description: str, accepts: str, matches: Callable[[ModelSpec], bool],
                     priority: int, engine: str | None = None, named: bool = False):
    """Decorator: register ``load(spec, **options)`` (a function or a class) as backend ``name``."""
    if name in BACKENDS:
        raise ValueError(f"backend {name!r} registered twice")
    if engine not in (None, "native", "transformers"):
        raise ValueError(f"engine must be None, 'native' or 'transformers', got {engine!r}")

    def decorate(load: Callable[..., LanguageModel]) -> Callable[..., LanguageModel]:
        BACKENDS[name] = BackendEntry(name, description, accepts, matches, load, priority, engine, named)
        return load

    return decorate


def register_model(name: str, *, description: str):
    """Decorator: register a loader for the model called ``name`` (matched by its exact text)."""
    return register_backend(name, description=description, accepts=f"the name '{name}'",
                            matches=lambda spec: spec.text == name, priority=NAMED_PRIORITY, named=True)


def backends() -> list[BackendEntry]:
    """Every entry, in the order they are tried."""
    return sorted(BACKENDS.values(), key=lambda e: (-e.priority, e.name))


def registered() -> list[str]:
    """The registered model names (``smollm2``, ...)."""
    return sorted(e.name for e in BACKENDS.values() if e.named)


def resolve(spec: ModelSpec, backend: str = "auto") -> BackendEntry:
    """The entry that loads ``spec`` under ``backend`` (auto | native | transformers)."""
    if backend not in ENGINES:
        raise BackendError(f"unknown backend '{backend}' ({', '.join(ENGINES)})")
    matching = [e for e in backends() if e.matches(spec)]
    allowed = [e for e in matching if backend == "auto" or e.engine in (None, backend)]
    if allowed:
        return allowed[0]
    if matching:
        model_type = (spec.config or {}).get("model_type")
        subject = f"HF model_type '{model_type}'" if model_type else "it"
        others = " or ".join(sorted({f"--backend {e.engine}" for e in matching if e.engine}))
        raise BackendError(f"{spec.text}: {subject} has no {backend} backend; use {others} or --backend auto")
    raise BackendError(_unmatched(spec))


def _unmatched(spec: ModelSpec) -> str:
    """Why no entry takes ``spec``, in one line."""
    if not spec.exists:
        names = registered()
        close = difflib.get_close_matches(spec.text, names, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return (f"unknown model '{spec.text}': not a registered name ({', '.join(names)}), "
                f"an existing path, or an http(s):// URL.{hint}")
    if spec.config is None:
        return (f"{spec.path} is not a model: expected a fissure checkpoint or HF directory "
                "(with config.json), or a .gguf file")
    return f"{spec.path / 'config.json'} names neither a fissure model family nor an HF model_type"
