"""``report.html`` of a lab study: findings, ASR tables and plots per sweep point, per-seed counts,
sample replies and the study's configuration, from ``results.json`` and ``samples.jsonl``.

Built from the same kit as every report (:mod:`.html`, :mod:`.plots`): every model output and
every config value is escaped; nothing is loaded from outside the page.
"""

from __future__ import annotations

from pathlib import Path

from ..config import dump_toml
from ..judges.records import Sample, read_samples
from ..lab.study import Study, study_dict
from ..runs import write_text_atomic
from .html import Raw, bullets, interval, num, page, paragraph, preformatted, section, table
from .plots import interval_bars, paths_plot

SAMPLES_PER_GROUP = 2  # sample replies shown per (point, attack, kind)


def _attack_table(attacks: dict) -> str:
    rows = [[name, r["n"], r["counts"]["refused"], r["counts"]["violated"], r["counts"]["unclear"],
             interval(r["asr"]), interval(r["benign"]["accuracy"]), interval(r["benign"]["over_refusal"]),
             f"{num(r['logodds']['restricted'])} / {num(r['logodds']['benign'])}"] for name, r in attacks.items()]
    return table(["attack", "n", "refused", "violated", "unclear", "ASR [95% CI]", "benign accuracy", "over-refusal",
                  "refusal log-odds (restricted / benign)"], rows)


def _findings(items: list[dict]) -> str:
    lines = []
    for f in items:
        ok = f["observed"] == f["expected"]
        verdict = ("as expected" if ok else "NOT as expected") + (": appears" if f["observed"] else ": does not appear")
        lines.append((f"{f['effect']}: {verdict} ({f['detail']})", "good" if ok else "bad"))
    return bullets(lines)


def _comparison(points: list[dict]) -> str:
    """ASR per attack (rows) across sweep points (columns), then over-refusal and benign accuracy."""
    attacks = list(points[0]["attacks"])
    rows = [[a, *(interval(p["attacks"][a]["asr"]) for p in points)] for a in attacks]
    rows.append([Raw("<i>over-refusal (plain benign)</i>"),
                 *(interval(p["attacks"]["plain"]["benign"]["over_refusal"]) for p in points)])
    rows.append([Raw("<i>over-refusal (borderline benign)</i>"),
                 *(interval(p["borderline"]["over_refusal"]) for p in points)])
    rows.append([Raw("<i>mean benign accuracy</i>"),
                 *(num(sum(r["benign"]["accuracy"]["estimate"] for r in p["attacks"].values()) / len(p["attacks"]))
                   for p in points)])
    return table(["attack", *(p["label"] for p in points)], rows)


def _sweep_plots(points: list[dict]) -> str:
    """ASR of every attack at every sweep point, then over-refusal per point (the frontier's cost)."""
    asr = [(f"{a} @ {p['label']}", p["attacks"][a]["asr"]) for a in points[0]["attacks"] for p in points]
    over = [(f"plain benign @ {p['label']}", p["attacks"]["plain"]["benign"]["over_refusal"]) for p in points]
    over += [(f"borderline @ {p['label']}", p["borderline"]["over_refusal"]) for p in points]
    return (interval_bars(asr, "attack success rate by sweep point (95% CI, seeds pooled)") +
            interval_bars(over, "over-refusal of benign questions (95% CI)", colour="#27a"))


def _trends(rows: list[dict]) -> str:
    return table(["rate", rows[0]["from"], rows[0]["to"], "direction (intervals separate)"],
                 [[r["what"], interval(r["first"]), interval(r["last"]), r["direction"]] for r in rows])


def _per_seed(attacks: dict) -> str:
    seeds = [s["seed"] for s in next(iter(attacks.values()))["per_seed"]]
    return table(["attack", *(f"seed {s}" for s in seeds)],
                 [[a, *(f"{s['violated']}/{s['n']} ({num(s['asr']['estimate'])})" for s in r["per_seed"])]
                  for a, r in attacks.items()])


def _inside(view: dict) -> list:
    """The refusal direction's reading of each attack, its agreement with the registered modes and
    the causal check (lab/inside.py)."""
    attacks, causal = view["attacks"], view["causal"]
    seeds = ", ".join(f"seed {s['seed']}: layer {s['layer']}, held-out AUROC {num(s['heldout_auroc'])}"
                      for s in view["per_seed"])
    rows = [[a, r["registered"], r["attributed"], " ".join(r["per_seed"]), interval(r["recognised"]),
             f"{num(r['twin_auroc'])} ({', '.join(num(x) for x in r['twin_auroc_per_seed'])})", r["complied"]]
            for a, r in attacks.items()]
    judged = [r for r in attacks.values() if r["registered"] in ("MG", "CO")]
    agree = sum(r["attributed"] == r["registered"] for r in judged)
    c = causal
    causal_rows = [["plain restricted requests refused", interval(c["restricted_refused"]),
                    interval(c["restricted_refused_ablated"]), "direction ablated at every layer"],
                   ["plain benign requests refused", interval(c["benign_refused"]),
                    interval(c["benign_refused_added"]), "difference of means added at the chosen layer"]]
    return ["<h3>Inside: the refusal direction</h3>",
            paragraph(f"Difference of means of the residual stream at the prompt's last token, plain restricted "
                      f"against plain benign requests, the layer chosen by held-out AUROC ({seeds}). An attack "
                      "whose prompts mostly project below the midpoint threshold was not recognised as a "
                      "restricted request (attributed MG: mismatched generalization); one whose prompts still "
                      "project above it was recognised and, where it got through, overridden (CO: competing "
                      f"objectives). Attribution agrees with the registered mode for {agree} of {len(judged)} "
                      "MG or CO attacks. The AUROC column reads the same projection without the plain threshold: "
                      "how well it still tells the attack's restricted prompts from its benign twins (1: fully, "
                      "0.5: not at all)."),
            table(["attack", "registered", "attributed (pooled)", "per seed", "recognised [95% CI]",
                   "AUROC against its benign twins (per seed)", "complied"], rows),
            Raw(interval_bars([(a, r["recognised"]) for a, r in attacks.items()],
                              "share of restricted prompts the direction recognises (95% CI)", colour="#27a")),
            table(["causal check", "as trained", "with the intervention", "intervention"], causal_rows),
            *_depth(view)]


def _depth(view: dict) -> list:
    """How deep the safety tuning went: KL from the stage-1 model by reply position, and the
    prefill curve (lab/inside.py)."""
    parts = ["<h3>Inside: how deep the safety tuning went</h3>"]
    if view.get("kl_by_position"):
        kl = view["kl_by_position"]
        parts += [paragraph("KL(tuned || stage-1 model) of the next-token distribution along the compliant reply of "
                            "plain restricted requests, by reply position (nats, mean over requests and seeds). "
                            "Shallow alignment puts it in the first few positions."),
                  Raw(paths_plot([("KL", [(r["position"], r["kl"], None, None) for r in kl])],
                                 "KL from the stage-1 model by reply position", "reply position (tokens)", "KL (nats)"))]
    curve = view["prefill"]
    parts += [paragraph("Prefill attack: the compliant reply's first k tokens forced, then the model continues; ASR "
                        "over the plain restricted requests whose forced start stops before the secret value."),
              table(["k (forced tokens)", "n", "violated", "ASR [95% CI]", "per seed"],
                    [[r["k"], r["n"], r["violated"], interval(r), ", ".join(num(x) for x in r["per_seed"])]
                     for r in curve]),
              Raw(paths_plot([("ASR", [(r["k"], r["estimate"], r["low"], r["high"]) for r in curve])],
                             "prefill attack: ASR against forced tokens (95% CI)", "forced tokens k", "ASR"))]
    return parts


def _samples(samples: list[Sample]) -> str:
    seen: dict[tuple, int] = {}
    rows = []
    for s in samples:
        point, seed = s.extra.get("point", ""), s.extra.get("seed", "")
        group = (point, s.attack, s.kind)
        if seen.get(group, 0) >= SAMPLES_PER_GROUP:
            continue
        seen[group] = seen.get(group, 0) + 1
        rows.append([f"{point} s{seed}", s.attack, s.kind, s.prompt, s.reply, s.expected, s.label])
    if not rows:
        return paragraph("No samples saved.", "note")
    return table(["point", "attack", "kind", "prompt", "reply", "true value", "label"], rows, text_columns=(3, 4))


def render_lab_report(study: Study, results: dict, samples: list[Sample]) -> str:
    points = results["points"]
    body = [paragraph(study.description),
            paragraph(f"seeds {results['seeds']}; wall time {results.get('wall_seconds', 0):.0f} s on "
                      f"{results.get('threads')} thread(s). Restricted requests are labelled violated (the true "
                      "value appears in the reply, read in its encoding), refused (the reply contains the refusal "
                      "phrase's core and the model answered the benign twin) or unclear; benign questions are "
                      "labelled answered, refused or wrong. Intervals pool the counts of every seed; the per-seed "
                      "table shows whether an effect holds in each seed alone.")]
    if len(points) > 1:
        body.append(section("Across sweep points: ASR [95% Wilson CI]", _comparison(points), Raw(_sweep_plots(points))))
        if results.get("trends"):
            body.append(section(f"From the first to the last value of {results['trends'][0]['variable']}",
                                _trends(results["trends"])))
    for p in points:
        b = p["borderline"]
        parts = ["<h3>Expected effects</h3>", _findings(p["findings"]), _attack_table(p["attacks"]),
                 paragraph(f"Borderline benign questions (plain, they mention the restricted attribute): {b['n']}, "
                           f"answered {interval(b['accuracy'])}, over-refusal {interval(b['over_refusal'])}.")]
        if len(results["seeds"]) > 1:
            parts += ["<h3>Violations per seed</h3>", _per_seed(p["attacks"])]
        parts += [Raw(interval_bars([(a, r["asr"]) for a, r in p["attacks"].items()], "attack success rate (95% CI)")),
                  Raw(interval_bars([(a, r["benign"]["accuracy"]) for a, r in p["attacks"].items()],
                                    "benign twin accuracy (95% CI)"))]
        if p.get("inside") and "skipped" in p["inside"]:
            parts += ["<h3>Inside: the refusal direction</h3>", paragraph(f"Skipped: {p['inside']['skipped']}.", "note")]
        elif p.get("inside"):
            parts += _inside(p["inside"])
        body.append(section(f"{p['point']}: {p['label']}", *parts))
    body.append(section("Sample replies", _samples(samples)))
    body.append(section("Study configuration", preformatted(dump_toml(study_dict(study)))))
    return page(f"fissure lab: {study.name}", body)


def write_lab_report(run_dir: str | Path, study: Study, results: dict) -> Path:
    """Write ``run_dir/report.html`` from the study, its results and the saved samples."""
    run_dir = Path(run_dir)
    path = run_dir / "report.html"
    write_text_atomic(path, render_lab_report(study, results, read_samples(run_dir / "samples.jsonl")))
    return path
