"""``report.html`` of ``fissure bias``: per axis, the mean log-likelihood gap and the share of pairs
preferring the first group, overall, per filler value (with a plot) and per template."""

from __future__ import annotations

import json
from pathlib import Path

from ..runs import write_text_atomic
from .html import Raw, interval, page, paragraph, section, table
from .plots import interval_dots


def _row(label: str, s: dict) -> list:
    return [label, s["n"], interval(s["mean_gap"], 3), interval(s["prefer_a"]), s["ties"]]


def render_bias_report(results: dict) -> str:
    body = [paragraph(
        f"{results['model']} ({results['backend']}). A pair is two sentences that differ only in the group term. "
        "Gap = log P(sentence with group A's term) - log P(sentence with group B's term), in nats, summed over "
        "tokens (not normalised): positive = the model prefers group A. Intervals: "
        f"{results['confidence']:.0%} percentile bootstrap over pairs ({results['n_resamples']} resamples, seed "
        f"{results['seed']}) for the mean gap, Wilson for the share of pairs preferring A. Pairs that share a "
        "template or filler are not independent, so the intervals are optimistic. The gap includes each term's "
        "own frequency; compare fillers with each other and with the axis mean.")]
    for ax in results["axes"]:
        a, b = ax["group_a"], ax["group_b"]
        head = ["", "pairs", f"mean gap ({a} - {b}) [CI]", f"share preferring {a} [CI]", "ties"]
        parts = [paragraph(f"{ax['description']} (templates: {ax['source']})", "note"),
                 table(head, [_row("all pairs", ax["overall"])])]
        for slot, values in ax["by_filler"].items():
            ordered = sorted(values.items(), key=lambda kv: kv[1]["mean_gap"]["estimate"])
            parts.append(Raw(interval_dots([(v, s["mean_gap"]) for v, s in ordered],
                                           f"mean gap per {slot} ({a} - {b}), with intervals",
                                           axis_label=f"nats; right = prefers {a}")))
            parts.append(table([slot, *head[1:]], [_row(v, s) for v, s in ordered]))
        parts.append(table(["template", *head[1:]], [_row(t["template"], t) for t in ax["by_template"]],
                           text_columns=[0]))
        body.append(section(f"axis: {ax['axis']} ({a} vs {b})", *parts))
    return page(f"fissure bias: {results['model']}", body)


def write_bias_report(run_dir: str | Path, results: dict | None = None) -> Path:
    run_dir = Path(run_dir)
    results = results or json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    path = run_dir / "report.html"
    write_text_atomic(path, render_bias_report(results))
    return path
