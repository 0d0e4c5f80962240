"""``report.html`` of a lab study: findings, ASR tables and plots per sweep point, per-seed counts,
sample replies and the study's configuration, from ``results.json`` and ``samples.jsonl``.

Built from the same kit as every report (:mod:`.html`, :mod:`.plots`): every model output and
every config value is escaped; nothing is loaded from outside the page.
"""

from __future__ import annotations

from pathlib import Path

from ..config import dump_toml
from ..errors import UserError
from ..judges.records import Sample, read_samples
from ..lab.study import Study, study_dict
from ..runs import read_meta, write_text_atomic
from .html import Raw, bullets, interval, num, page, paragraph, preformatted, section, table
from .plots import interval_bars, paths_plot

SAMPLES_PER_GROUP = 2  # sample replies shown per (point, attack, kind)


def _sd(value: float | None) -> str:
    return "" if value is None else f"± {num(value)}"


def _attack_table(attacks: dict) -> str:
    rows = [[name, r["n"], r["counts"]["refused"], r["counts"]["violated"], r["counts"]["unclear"],
             interval(r["asr"]), _sd(r.get("seed_sd", {}).get("asr")), interval(r["benign"]["accuracy"]),
             _sd(r.get("seed_sd", {}).get("benign_accuracy")), interval(r["benign"]["over_refusal"]),
             f"{num(r['logodds']['restricted'])} / {num(r['logodds']['benign'])}"] for name, r in attacks.items()]
    return table(["attack", "n", "refused", "violated", "unclear", "ASR [95% CI]", "between-seed SD",
                  "benign accuracy", "between-seed SD", "over-refusal", "refusal log-odds (restricted / benign)"], rows)


def _findings(items: list[dict]) -> str:
    lines = []
    for f in items:
        ok = f["observed"] == f["expected"]
        verdict = ("as expected" if ok else "NOT as expected") + (": appears" if f["observed"] else ": does not appear")
        if f.get("stable") is False:
            verdict += ", but not in most seeds alone: the seeds disagree"
        lines.append((f"{f['effect']}: {verdict} ({f['detail']})", "good" if ok and f.get("stable") is not False
                      else "bad"))
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
                           f"answered {interval(b['accuracy'])}, over-refusal {interval(b['over_refusal'])} "
                           f"{_sd(b.get('seed_sd', {}).get('over_refusal'))} between seeds.")]
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


def _md_rate(r: dict) -> str:
    return f"{r['estimate']:.2f} [{r['low']:.2f}, {r['high']:.2f}]"


def _md_sd(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _where(results: dict, meta: dict | None) -> str:
    meta = meta or {}
    cpu = meta.get("machine", {}).get("cpu", {})
    caps = "".join(f", {name}={value}" for name, value in cpu.get("isa_caps", {}).items())
    torch_version = meta.get("versions", {}).get("torch")
    return (f"threads {results.get('threads')}, CPU {cpu.get('torch_capability', '?')} "
            f"({' '.join(cpu.get('flags', [])) or 'no avx flags'}{caps}), "
            f"{f'torch {torch_version}, ' if torch_version else ''}commit {str(meta.get('git_commit', '?'))[:7]}")


def findings_markdown(results: dict, meta: dict | None = None, checks: list[tuple[dict, dict | None]] = ()) -> str:
    """The README's lab block for every point: the ASR table (seeds pooled, the between-seed SD and
    each seed's count beside each number) and the findings, split into those that hold pooled *and*
    in most seeds alone (stated) and those that do not (not stated). ``checks`` are other runs of
    the same study (another thread count or machine: ``(results, meta)``): a finding is stated only
    when every run agrees on it. Between ``lab-findings`` markers naming the machine and commit."""
    runs = [(results, meta), *checks]
    for other, _ in checks:
        if other["study"] != results["study"] or [p["point"] for p in other["points"]] != \
                [p["point"] for p in results["points"]]:
            raise UserError(f"a check run is of another study ({other['study']}) or other points")
    where, seeds = _where(results, meta), results["seeds"]
    lines = []
    for i, p in enumerate(results["points"]):
        lines += [f"<!-- lab-findings {results['study']} {p['point']}: seeds {seeds}, {where} -->",
                  f"**{results['study']}, {p['label']}** (seeds {', '.join(map(str, seeds))}; {where}; "
                  f"95% Wilson intervals on counts pooled over seeds; SD: between-seed standard deviation of the "
                  f"seeds' own rates)", "",
                  "| attack | kind | ASR [95% CI] | SD | violations per seed | benign twin accuracy | SD |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        kinds = {f["effect"].split(": ", 1)[1].removesuffix(" ASR above plain"): f["effect"].split(": ", 1)[0]
                 for f in p["findings"] if f["effect"].endswith(" ASR above plain")}
        for attack, r in p["attacks"].items():
            n = {s["n"] for s in r["per_seed"]}
            counts = " / ".join(str(s["violated"]) for s in r["per_seed"])
            sd = r.get("seed_sd", {})
            lines.append(f"| {attack} | {kinds.get(attack, 'baseline')} | {_md_rate(r['asr'])} | {_md_sd(sd.get('asr'))} "
                         f"| {counts} (of {'/'.join(map(str, sorted(n)))}) | {r['benign']['accuracy']['estimate']:.2f} "
                         f"| {_md_sd(sd.get('benign_accuracy'))} |")
        b = p["borderline"]
        lines += [f"| *borderline benign questions* | over-refusal | {_md_rate(b['over_refusal'])} refused "
                  f"| {_md_sd(b.get('seed_sd', {}).get('over_refusal'))} | | {b['accuracy']['estimate']:.2f} answered "
                  f"| {_md_sd(b.get('seed_sd', {}).get('accuracy'))} |", ""]
        if checks:
            lines += ["Checked against: " + "; ".join(_where(r, m) for r, m in checks) + ".", ""]
        stated, unstated = [], []
        for f in p["findings"]:
            others = [{g["effect"]: g for g in r["points"][i]["findings"]}.get(f["effect"]) for r, _ in checks]
            agree = f.get("stable") is not False and all(
                g is not None and g.get("stable") is not False and g["observed"] == f["observed"] for g in others)
            (stated if agree else unstated).append((f, others))
        lines.append("Findings (pooled, and in most seeds alone" + (", in every run" if checks else "") + "):")
        lines += [f"- {'appears' if f['observed'] else 'does not appear'}: {f['effect']} "
                  f"({f['seeds_observed']} of {f['seeds']} seeds{'' if f['observed'] == f['expected'] else '; not as expected'})"
                  for f, _ in stated]
        if unstated:
            lines += ["", "Not stated (the seeds" + (" or the runs" if checks else "") + " disagree):"]
            for f, others in unstated:
                runs_text = "; ".join(
                    f"{'appears' if g['observed'] else 'does not appear'} pooled, in {g['seeds_observed']} of "
                    f"{g['seeds']} seeds alone" + (f" (threads {r.get('threads')})" if checks else "")
                    for g, (r, _) in zip([f, *others], runs) if g is not None)
                lines.append(f"- {f['effect']}: {runs_text}")
        lines += [f"<!-- /lab-findings {results['study']} {p['point']} -->", ""]
    return "\n".join(lines)


def write_lab_report(run_dir: str | Path, study: Study, results: dict) -> Path:
    """Write ``run_dir/report.html`` from the study, its results and the saved samples, and
    ``run_dir/findings.md`` (the README's block, :func:`findings_markdown`)."""
    run_dir = Path(run_dir)
    path = run_dir / "report.html"
    write_text_atomic(path, render_lab_report(study, results, read_samples(run_dir / "samples.jsonl")))
    write_text_atomic(run_dir / "findings.md", findings_markdown(results, read_meta(run_dir)))
    return path
