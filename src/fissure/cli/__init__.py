"""The ``fissure`` command line: thin verbs that parse, call the library, print and save."""

from __future__ import annotations

import typer

from .. import __version__

app = typer.Typer(
    name="fissure",
    help="Build, train, decode and diagnose language models.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fissure {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """fissure: build, train, decode and diagnose language models."""


from . import evaluate, generate, info, lab, models, probe, quickstart, train  # noqa: E402,F401  (register commands)


def main() -> None:
    app()
