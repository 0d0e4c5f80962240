"""``fissure specialise``: the gain/forgetting frontier of tuning a model on one domain."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import UserError
from .app import app
from .common import JsonOption, ModelArgument, OutDirOption, ThreadsOption, err, guard, out, print_json


def _list(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


@app.command(epilog="Examples: fissure specialise smollm2 --domain legal --general code,news,chat;  "
                    "fissure specialise smollm2 --methods full,lora16 --replay 0 --steps 10 --json")
@guard
def specialise(
    model: ModelArgument = "smollm2",
    domain: Annotated[str, typer.Option(help="The domain to specialise on (a text domain of `fissure data list`). "
                                             "[default: legal]")] = None,
    general: Annotated[str, typer.Option(help="General domains to watch for forgetting, comma separated. "
                                              "[default: code,news,chat]")] = None,
    methods: Annotated[str, typer.Option(help="full and/or lora<rank>, comma separated. "
                                              "[default: full,lora4,lora16,lora64]")] = None,
    replay: Annotated[str, typer.Option(help="Shares of general text replayed per batch. [default: 0,0.1,0.3]")] = None,
    steps: Annotated[int, typer.Option(help="Training steps per setting. [default: 20]")] = None,
    eval_every: Annotated[int, typer.Option(help="Measure every N steps. [default: 10]")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Override any field, e.g. lr_lora=5e-4 (repeatable).")]
    = None,
    resume: Annotated[Path, typer.Option("--resume", help="Finish an interrupted sweep (its config is reused).")]
    = None,
    threads: ThreadsOption = None,
    out_dir: OutDirOption = "runs",
    as_json: JsonOption = False,
) -> None:
    """Tune MODEL on a domain with each method and replay share; measure domain and general bits per
    byte and general knowledge as it goes; report the frontier."""
    from ..config import apply_overrides, from_dict, load_toml, to_dict
    from ..diagnose.specialise import SpecialiseConfig, run_specialise
    from ..report.specialise import write_specialise_report
    from ..runs import start_run

    if resume is not None:
        if not (resume / "config.toml").is_file():
            raise UserError(f"{resume} is not a specialise run directory (no config.toml)")
        config = from_dict(SpecialiseConfig, load_toml(resume / "config.toml"))
        run_dir = resume
    else:
        given = {"model": model, "domain": domain, "general": _list(general), "methods": _list(methods),
                 "replay": _floats(replay) if replay else None, "steps": steps,
                 "eval_every": eval_every, "threads": threads}
        config = from_dict(SpecialiseConfig, apply_overrides({k: v for k, v in given.items() if v is not None},
                                                             set_ or []))
        from ..text.catalogue import get_domain

        for name in [config.domain, *config.general]:  # fail before any run directory exists
            if get_domain(name).kind != "text":
                raise UserError(f"'{name}' is a labelled domain: specialise on text domains (fissure data list)")
            get_domain(name).locate()
        run_dir = start_run("specialise", to_dict(config), config.seed, root=out_dir, threads=config.threads)
    err.print(f"run directory: {run_dir}")
    results = run_specialise(config, run_dir, log=lambda m: err.print(m, highlight=False, markup=False))
    write_specialise_report(run_dir, results)
    results["run_dir"] = str(run_dir)
    if as_json:
        print_json(results)
        return
    for line in results["summary"]:
        out.print(line, highlight=False, markup=False)
    out.print(f"report: {run_dir / 'report.html'}", highlight=False, markup=False)


def _floats(text: str) -> list[float]:
    try:
        return [float(r) for r in _list(text)]
    except ValueError:
        raise UserError(f"--replay must be comma-separated shares, e.g. 0,0.1,0.3; got {text!r}") from None
