"""``report.html`` of ``fissure specialise``: gain on the domain against forgetting of general text,
per setting and step, the Pareto set, and the plain-language summary, from ``results.json``."""

from __future__ import annotations

import json
from pathlib import Path

from ..runs import write_text_atomic
from .html import Raw, bullets, interval, num, page, paragraph, section, table
from .plots import paths_plot


def _ci(value: float, ci: dict | None) -> str:
    return f"{num(value, 3)} [{num(ci['low'], 3)}, {num(ci['high'], 3)}]" if ci else num(value, 3)


def render_specialise_report(results: dict) -> str:
    base, points, domain = results["base"], results["points"], results["domain"]
    general = results["general"]
    settings: dict[str, list[dict]] = {}
    for p in points:
        settings.setdefault(p["setting_id"], []).append(p)
    series = [(sid, [(base["mean_general_bpb"], base["domain_bpb"], base["domain_ci"]["low"],
                      base["domain_ci"]["high"])] +
               [(p["mean_general_bpb"], p["domain_bpb"], p["domain_ci"]["low"], p["domain_ci"]["high"])
                for p in ps]) for sid, ps in settings.items()]
    front = set(results["pareto"])
    paired = {r["setting"]: r for r in results["rows"]}
    rows = [["base", "", "", _ci(base["domain_bpb"], base["domain_ci"]),
             *(_ci(base["general_bpb"][g], base["general_ci"][g]) for g in general),
             interval(base["knowledge"]["accuracy"]), "", "", ""]]
    for sid, ps in settings.items():
        p = ps[-1]
        rows.append([p["setting"], f"{p['replay']:g}", p["step"], _ci(p["domain_bpb"], p["domain_ci"]),
                     *(_ci(p["general_bpb"][g], p["general_ci"][g]) for g in general),
                     interval(p["knowledge"]["accuracy"]), interval(paired[sid]["gain_ci"], 3),
                     num(paired[sid]["forgetting"], 3), "yes" if sid in front else ""])
    head = ["setting", "replay", "step", f"{domain} bpb [95% CI]", *(f"{g} bpb" for g in general),
            "general knowledge", "gain [paired 95% CI]", "forgetting (mean)", "Pareto"]
    body = [paragraph(f"{results['model']} tuned on {domain}; general text: {', '.join(general)}. dtype "
                      f"{results['dtype']}, {results['threads']} threads, {results['wall_seconds']:.0f} s. Gain = "
                      f"the fall in {domain} bits per byte from the base model; forgetting = the rise in mean bits "
                      "per byte over the general domains. Intervals bootstrap over held-out documents; gain and forgetting are "
                      "paired (the same documents before and after)."),
            section("What the numbers say", bullets((line, None) for line in results["summary"])),
            section("Gain against forgetting", Raw(paths_plot(
                series, f"{domain} bits per byte against general bits per byte, from the base (first point)",
                "mean general bits per byte (right = more forgetting)", f"{domain} bits per byte (down = gain)")),
                paragraph("Each line starts at the base model; whiskers are the domain's 95% bootstrap interval.",
                          "note")),
            section("Last point of each setting", table(head, rows)),
            section("Every point", table(["setting", "replay", "step", f"{domain} bpb", "mean general bpb",
                                          "knowledge accuracy", "train loss"],
                                         [[p["setting"], f"{p['replay']:g}", p["step"], num(p["domain_bpb"], 3),
                                           num(p["mean_general_bpb"], 3), interval(p["knowledge"]["accuracy"]),
                                           num(p.get("train_loss"), 3)] for p in points]))]
    return page(f"fissure specialise: {results['model']} on {domain}", body)


def write_specialise_report(run_dir: str | Path, results: dict | None = None) -> Path:
    run_dir = Path(run_dir)
    results = results or json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    path = run_dir / "report.html"
    write_text_atomic(path, render_specialise_report(results))
    return path
