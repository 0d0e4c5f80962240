"""The root ``fissure`` Typer app that every verb module registers its commands on."""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from .._version import __version__

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


def command_group(name: str, help: str, **settings) -> typer.Typer:
    """A verb with sub-commands (``fissure NAME list``, ``fissure NAME run``...), registered on the root app."""
    group = typer.Typer(help=help, no_args_is_help=True, **settings)
    app.add_typer(group, name=name)
    return group


class ModelFirstGroup(TyperGroup):
    """A verb whose default sub-command is ``run``: ``fissure probe MODEL ...`` runs ``fissure probe
    run MODEL ...`` (and ``--list`` is ``list``), so the short forms the README shows keep working."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if args and args[0] == "--list":
            args = ["list", *args[1:]]
        elif args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["run", *args]
        return super().parse_args(ctx, args)
