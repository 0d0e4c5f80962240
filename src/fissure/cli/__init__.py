"""The ``fissure`` command line: thin verbs that parse, call the library, print and save."""

from __future__ import annotations

from . import data, evaluate, generate, info, judge, lab, models, probe, quickstart, specialise, train, translate, tune  # noqa: F401
from .app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
