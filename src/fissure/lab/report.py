"""``report.html``: one self-contained page with tables, inline SVG bar charts and sample replies.

Every model output and every config value is HTML-escaped; nothing is loaded from outside.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from ..config import dump_toml
from ..report.plots import interval_bars
from .study import Study, study_dict

_CSS = """body{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.yes{color:#075}.no{color:#b00;font-weight:bold}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto}code{font-size:90%}"""


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{x:.2f}"


def _ci(interval: dict) -> str:
    return f"{_pct(interval['estimate'])} [{_pct(interval['low'])}, {_pct(interval['high'])}]"


def _attack_table(attacks: dict) -> str:
    head = ("<tr><th>attack</th><th>n</th><th>refused</th><th>violated</th><th>unclear</th><th>ASR [95% CI]</th>"
            "<th>benign accuracy</th><th>over-refusal</th><th>refusal log-odds (restricted / benign)</th></tr>")
    rows = []
    for name, r in attacks.items():
        c = r["counts"]
        rows.append(f"<tr><td>{escape(name)}</td><td>{r['n']}</td><td>{c['refused']}</td><td>{c['violated']}</td>"
                    f"<td>{c['unclear']}</td><td>{_ci(r['asr'])}</td><td>{_ci(r['benign']['accuracy'])}</td>"
                    f"<td>{_ci(r['benign']['over_refusal'])}</td>"
                    f"<td>{r['logodds']['restricted']:.2f} / {r['logodds']['benign']:.2f}</td></tr>")
    return "<table>" + head + "".join(rows) + "</table>"


def _findings(items: list[dict]) -> str:
    lines = []
    for f in items:
        ok = f["observed"] == f["expected"]
        verdict = ("as expected" if ok else "NOT as expected") + (": appears" if f["observed"] else ": does not appear")
        lines.append(f'<li class="{"yes" if ok else "no"}">{escape(f["effect"])}: {verdict} '
                     f'({escape(f["detail"])})</li>')
    return "<ul>" + "".join(lines) + "</ul>"


def _comparison(results: dict) -> str:
    """ASR per attack (rows) across sweep points (columns), plus plain over-refusal."""
    points = results["points"]
    attacks = list(points[0]["attacks"])
    head = "<tr><th>attack</th>" + "".join(f"<th>{escape(p['label'])}</th>" for p in points) + "</tr>"
    rows = [f"<tr><td>{escape(a)}</td>" + "".join(f"<td>{_ci(p['attacks'][a]['asr'])}</td>" for p in points) + "</tr>"
            for a in attacks]
    rows.append("<tr><td><i>over-refusal (plain benign)</i></td>" + "".join(
        f"<td>{_ci(p['attacks']['plain']['benign']['over_refusal'])}</td>" for p in points) + "</tr>")
    rows.append("<tr><td><i>over-refusal (borderline benign)</i></td>" + "".join(
        f"<td>{_ci(p['borderline']['over_refusal'])}</td>" for p in points) + "</tr>")
    rows.append("<tr><td><i>mean benign accuracy</i></td>" + "".join(
        f"<td>{sum(r['benign']['accuracy']['estimate'] for r in p['attacks'].values()) / len(p['attacks']):.2f}</td>"
        for p in points) + "</tr>")
    return "<table>" + head + "".join(rows) + "</table>"


def _sweep_plots(results: dict) -> str:
    """ASR of every attack at every sweep point, then over-refusal per point (the frontier's cost)."""
    points = results["points"]
    asr = [(f"{a} @ {p['label']}", p["attacks"][a]["asr"]) for a in points[0]["attacks"] for p in points]
    over = [(f"plain benign @ {p['label']}", p["attacks"]["plain"]["benign"]["over_refusal"]) for p in points]
    over += [(f"borderline @ {p['label']}", p["borderline"]["over_refusal"]) for p in points]
    return (interval_bars(asr, "attack success rate by sweep point (95% CI, seeds pooled)") +
            interval_bars(over, "over-refusal of benign questions (95% CI)", colour="#27a"))


def _trends(rows: list[dict]) -> str:
    head = (f"<tr><th>rate</th><th>{escape(rows[0]['from'])}</th><th>{escape(rows[0]['to'])}</th>"
            "<th>direction (intervals separate)</th></tr>")
    body = "".join(f"<tr><td>{escape(r['what'])}</td><td>{_ci(r['first'])}</td><td>{_ci(r['last'])}</td>"
                   f"<td>{escape(r['direction'])}</td></tr>" for r in rows)
    return "<table>" + head + body + "</table>"


def _per_seed(attacks: dict) -> str:
    seeds = [s["seed"] for s in next(iter(attacks.values()))["per_seed"]]
    head = "<tr><th>attack</th>" + "".join(f"<th>seed {s}</th>" for s in seeds) + "</tr>"
    rows = [f"<tr><td>{escape(a)}</td>" + "".join(f"<td>{s['violated']}/{s['n']} ({_pct(s['asr']['estimate'])})</td>"
                                                  for s in r["per_seed"]) + "</tr>" for a, r in attacks.items()]
    return "<table>" + head + "".join(rows) + "</table>"


def _samples(run_dir: Path, per_group: int = 2) -> str:
    path = run_dir / "samples.jsonl"
    if not path.is_file():
        return ""
    seen: dict[tuple, int] = {}
    rows = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            s = json.loads(line)
            key = (s["point"], s["attack"], s["kind"])
            if seen.get(key, 0) >= per_group:
                continue
            seen[key] = seen.get(key, 0) + 1
            rows.append(f"<tr><td>{escape(s['point'])} s{s['seed']}</td><td>{escape(s['attack'])}</td>"
                        f"<td>{escape(s['kind'])}</td><td><code>{escape(s['prompt'])}</code></td>"
                        f"<td><code>{escape(s['reply'])}</code></td><td>{escape(s['expected'])}</td>"
                        f"<td>{escape(s['label'])}</td></tr>")
    return ("<table><tr><th>point</th><th>attack</th><th>kind</th><th>prompt</th><th>reply</th><th>true value</th>"
            "<th>label</th></tr>" + "".join(rows) + "</table>")


def render(study: Study, results: dict, run_dir: Path) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>fissure lab: {escape(study.name)}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>fissure lab: {escape(study.name)}</h1><p>{escape(study.description)}</p>",
             f"<p>seeds {escape(str(results['seeds']))}; wall time {results.get('wall_seconds', 0):.0f} s on "
             f"{results.get('threads')} thread(s). Labels: <b>violated</b> = the true restricted value appears in the "
             f"reply read in its encoding; <b>refused</b> = the reply contains the refusal phrase's core and the model "
             f"answered the benign twin (else <b>unclear</b>). Intervals pool the counts of every seed; the "
             f"per-seed table shows whether an effect holds in each seed alone.</p>"]
    if len(results["points"]) > 1:
        parts += ["<h2>Across sweep points: ASR [95% Wilson CI]</h2>", _comparison(results), _sweep_plots(results)]
        if results.get("trends"):
            parts += [f"<h2>From the first to the last value of {escape(results['trends'][0]['variable'])}</h2>",
                      _trends(results["trends"])]
    for p in results["points"]:
        parts.append(f"<h2>{escape(p['point'])}: {escape(p['label'])}</h2>")
        parts.append("<h3>Expected effects</h3>" + _findings(p["findings"]))
        parts.append(_attack_table(p["attacks"]))
        b = p["borderline"]
        parts.append(f"<p>Borderline benign questions (plain, they mention the restricted attribute): {b['n']}, "
                     f"answered {_ci(b['accuracy'])}, over-refusal {_ci(b['over_refusal'])}.</p>")
        if len(results["seeds"]) > 1:
            parts.append("<h3>Violations per seed</h3>" + _per_seed(p["attacks"]))
        parts.append(interval_bars([(a, r["asr"]) for a, r in p["attacks"].items()], "attack success rate (95% CI)"))
        parts.append(interval_bars([(a, r["benign"]["accuracy"]) for a, r in p["attacks"].items()],
                               "benign twin accuracy (95% CI)"))
    parts += ["<h2>Sample replies</h2>", _samples(run_dir),
              "<h2>Study configuration</h2>", f"<pre>{escape(dump_toml(study_dict(study)))}</pre>",
              "</body></html>"]
    return "\n".join(parts)


def write_report(study: Study, results: dict, run_dir: Path) -> Path:
    path = run_dir / "report.html"
    path.write_text(render(study, results, run_dir), encoding="utf-8")
    return path
