"""``fissure judge``: the registered detectors and judges that turn replies into verdicts."""

from __future__ import annotations


from .app import command_group
from .common import JsonOption, guard, out, print_json

judge_app = command_group("judge", "Judges: violation and refusal detectors, and the three-way judges made of them.")


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
