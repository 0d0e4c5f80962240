"""``fissure judge``: the registered detectors and judges that turn replies into verdicts."""

from __future__ import annotations

import typer

from .app import app
from .common import JsonOption, guard, out, print_json

judge_app = typer.Typer(help="Judges: violation and refusal detectors, and the three-way judges built from them.",
                        no_args_is_help=True)
app.add_typer(judge_app, name="judge")


@judge_app.command("list")
@guard
def list_judges(as_json: JsonOption = False) -> None:
    """Every registered detector and judge: name, kind (violation, refusal, judge) and what it does."""
    from .. import judges, lab  # noqa: F401  (importing them registers their judges)

    entries = judges.registered()
    if as_json:
        print_json({"judges": [{"name": e.name, "kind": e.kind, "description": e.description} for e in entries]})
        return
    from rich.table import Table

    t = Table(title="fissure judges and detectors")
    t.add_column("name", no_wrap=True)
    t.add_column("kind", no_wrap=True)
    t.add_column("description", overflow="fold")
    for e in entries:
        t.add_row(e.name, e.kind, e.description)
    out.print(t)
