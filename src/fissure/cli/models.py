"""``fissure models``: what ``fissure.load`` accepts, read from the backend registry itself, so the
list cannot drift from the code that picks a backend."""

from __future__ import annotations


from .app import command_group
from .common import JsonOption, guard, out, print_json

models_app = command_group("models", "The model backends and named models that a MODEL argument can be.")


@models_app.command("list")
@guard
def list_models(as_json: JsonOption = False) -> None:
    """The registered backends in the order they are tried, and the registered model names."""
    from ..backends import backends, registered

    entries = [{"name": e.name, "matches": e.accepts, "description": e.description, "priority": e.priority,
                "backend": e.engine} for e in backends()]
    if as_json:
        print_json({"backends": entries, "models": registered()})
        return
    from rich.table import Table

    t = Table(title="fissure backends (tried top to bottom; --backend picks native or transformers)")
    t.add_column("name", no_wrap=True)
    t.add_column("matches", overflow="fold")
    t.add_column("--backend", no_wrap=True)
    t.add_column("description", overflow="fold")
    for e in entries:
        t.add_row(e["name"], e["matches"], e["backend"] or "", e["description"])
    out.print(t)
    out.print(f"registered models: {', '.join(registered())}", highlight=False)
