"""The ``fissure`` command line: thin verbs that parse, call the library, print and save."""

from __future__ import annotations

from . import (  # noqa: F401
    attention, baselines, bias, data, distill, evaluate, fill_mask, frontier, generate, info, judge, lab, models,
    probe, quickstart, specialise, train, translate, tune,
)
from .app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
