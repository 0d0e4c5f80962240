"""``fissure data``: the named offline text domains (``fissure.text.catalogue``), read from the registry
itself so that the list cannot drift from what ``--data NAME`` loads."""

from __future__ import annotations

import typer

from .app import command_group
from .common import JsonOption, guard, out, print_json, styled

data_app = command_group("data", "Named offline text domains (code, docs, legal, news, reviews, topics, chat).")

SAMPLE_CHARS = 300


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _entry(domain, *, counts: bool) -> dict:
    """What list and show print about a domain; counts read the whole domain (nothing is cached)."""
    from ..errors import DataError
    from ..text.catalogue import domain_stats

    entry = {"name": domain.name, "kind": domain.kind, "description": domain.description, "source": domain.source,
             "licence": domain.licence, "package": domain.package, "install": domain.install}
    try:
        entry["location"] = [str(p) for p in domain.locate()]
        entry["installed"] = True
    except DataError as exc:
        entry.update(installed=False, location=[], error=str(exc))
        return entry
    if counts:
        stats = domain_stats(domain.name)
        entry.update(documents=stats.documents, bytes=stats.bytes, labels=stats.labels)
    return entry


@data_app.command("list")
@guard
def list_domains(as_json: JsonOption = False) -> None:
    """Every domain: kind, documents and size where installed, licence and source."""
    from ..text.catalogue import domains

    entries = [_entry(d, counts=True) for d in domains()]
    if as_json:
        print_json({"domains": entries})
        return
    from rich.table import Table

    t = Table(title="fissure data domains (fissure data show NAME for details)")
    t.add_column("name", no_wrap=True)
    t.add_column("kind", no_wrap=True)
    t.add_column("documents", justify="right", no_wrap=True)
    t.add_column("size", justify="right", no_wrap=True)
    t.add_column("licence", overflow="fold")
    t.add_column("source", overflow="fold")
    for e in entries:
        if e["installed"]:
            docs, size = f"{e['documents']:,}", _size(e["bytes"])
        else:
            docs, size = "not installed", ""
        t.add_row(e["name"], e["kind"], docs, size, e["licence"], e["source"])
    out.print(t)


@data_app.command("show")
@guard
def show(name: str = typer.Argument(help="A domain name (see `fissure data list`)."), as_json: JsonOption = False) -> None:
    """One domain: what it is, where it lies (or how to install it), its counts and two sample documents."""
    from ..text.catalogue import get_domain, load_domain

    domain = get_domain(name)
    entry = _entry(domain, counts=True)
    if entry["installed"]:
        entry["samples"] = [{"source": d.source, "label": d.label, "chars": len(d.text), "text": d.text[:SAMPLE_CHARS]}
                            for d in load_domain(name, max_documents=2)]
    if as_json:
        print_json(entry)
        return

    def p(label: str, text: str) -> None:
        out.print(styled((label, "bold"), " ", text), soft_wrap=True)

    p(f"{domain.name} ({domain.kind}):", domain.description)
    p("source:  ", domain.source)
    p("licence: ", domain.licence)
    if domain.install:
        p("install: ", domain.install)
    if not entry["installed"]:
        p("not installed:", entry["error"])
        return
    p("location:", ", ".join(entry["location"]))
    p("counts:  ", f"{entry['documents']:,} documents, {entry['bytes']:,} bytes ({_size(entry['bytes'])})")
    if entry["labels"]:
        p("labels:  ", ", ".join(f"{label} {n:,}" for label, n in entry["labels"].items()))
    for sample in entry["samples"]:
        out.print()
        p(sample["source"], f"[{sample['label']}]" if sample["label"] else "")
        more = "..." if sample["chars"] > SAMPLE_CHARS else ""
        out.print(sample["text"] + more, highlight=False, markup=False, soft_wrap=True)
