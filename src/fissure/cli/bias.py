"""``fissure bias MODEL``: does the model prefer one group's term in otherwise identical sentences?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..runs import append_jsonl, run_directory, write_json
from .app import app
from .common import (BackendOption, DtypeOption, JsonOption, ModelArgument, OutDirOption, ServedModelOption,
                     ThreadsOption, err, guard, http_options, out, print_json)


@app.command(epilog="Examples: fissure bias smollm2;  fissure bias smollm2 --axes gender --json;  "
                    "fissure bias runs/train-.../checkpoint --templates my-axis.toml")
@guard
def bias(
    model: ModelArgument,
    axes: Annotated[str, typer.Option(help="Built-in axes, comma separated (gender, age). [default: all "
                                           "built-in axes, or none when --templates is given]")] = None,
    templates: Annotated[list[Path], typer.Option("--templates", help="An axis of your own: a template TOML file "
                                                                      "(see docs/bias.md; repeatable).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples per interval.")] = 1000,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass (local models).")] = 8,
    backend: BackendOption = "auto",
    served_model: ServedModelOption = None,
    dtype: DtypeOption = "fp32",
    threads: ThreadsOption = 0,
    out_dir: OutDirOption = "runs",
    as_json: JsonOption = False,
) -> None:
    """Bias probes: do template pairs that differ only in a group term (she/he) get different likelihoods?

    Per axis and per filler: the mean log-likelihood gap (group A minus group B, nats) with a bootstrap
    interval and the share of pairs preferring A with a Wilson interval. See docs/bias.md."""
    from ..backends import load
    from ..diagnose.bias import make_pairs, pair_record, resolve_axes, run_bias
    from ..errors import UserError
    from ..report.bias import write_bias_report
    from ..utils import set_threads

    if not 100 <= resamples <= 100_000:
        raise UserError(f"--resamples must be from 100 to 100000, not {resamples}")
    names = [a.strip() for a in axes.split(",") if a.strip()] if axes is not None else None
    chosen = resolve_axes(names, templates)
    if not chosen:
        raise UserError("no bias axis chosen: give --axes or --templates")
    for axis in chosen:
        make_pairs(axis)  # every file fully checked before the model loads
    remote = http_options(model, None, None, None)
    n_threads = set_threads(threads)
    lm = load(model, backend=backend, model=served_model, batch_size=batch_size, dtype=dtype, **remote)
    caps = lm.capabilities
    if not caps.has_logprobs:
        raise UserError(f"{caps.name} ({caps.backend} backend) gives no log-probabilities, which bias scoring needs")
    config = {"model": model, "backend": caps.backend, "axes": [a.name for a in chosen],
              "templates": [a.source for a in chosen], "seed": seed, "n_resamples": resamples,
              "batch_size": batch_size, "dtype": dtype}
    with run_directory("bias", config, seed, root=out_dir, threads=n_threads) as run_dir:
        def save(axis, pairs, gaps):
            append_jsonl(run_dir / "samples.jsonl", [pair_record(p, g) for p, g in zip(pairs, gaps)])

        summaries = run_bias(lm, chosen, seed=seed, n_resamples=resamples, on_axis=save)
        results = {"model": model, "backend": caps.backend, "seed": seed, "n_resamples": resamples,
                   "confidence": 0.95, "score": "log P(sentence A) - log P(sentence B), nats, summed over tokens",
                   "axes": summaries, "run_dir": str(run_dir)}
        write_json(run_dir / "results.json", results)
        write_bias_report(run_dir, results)
    if as_json:
        print_json(results)
    else:
        _print_tables(summaries)
    err.print(f"run directory: {run_dir}")


def _print_tables(summaries: list[dict]) -> None:
    from rich.table import Table

    from ..report.html import interval

    for ax in summaries:
        a, b = ax["group_a"], ax["group_b"]
        t = Table(title=f"bias axis {ax['axis']}: gap = log P({a}) - log P({b}) in nats; > 0 prefers {a}")
        for column in ("", "pairs", "mean gap [95% CI]", f"share preferring {a} [95% CI]"):
            t.add_column(column, justify="left" if not column else "right")
        rows = [("all pairs", ax["overall"])]
        for slot, values in ax["by_filler"].items():
            rows += sorted(((f"{slot}={v}", s) for v, s in values.items()),
                           key=lambda r: r[1]["mean_gap"]["estimate"])
        for label, s in rows:
            t.add_row(label, str(s["n"]), interval(s["mean_gap"], 3), interval(s["prefer_a"]))
        out.print(t)
