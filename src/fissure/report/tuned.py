"""``report.html`` of a safety-tune study (:mod:`fissure.lab.tuned`): what tuning changed, per
attack, base against each method; the inside view (refusal direction, mode attribution, causal
check, KL by position) with plots; a plain-language reading; sample replies. Every model output
and config value is escaped (the report kit's ``table``, ``paragraph``, ``preformatted``).
"""

from __future__ import annotations

from pathlib import Path

from ..config import dump_toml
from ..judges.records import read_samples
from ..lab.study import study_dict
from ..lab.tuned import TunedStudy
from ..runs import write_text_atomic
from .html import interval, num, page, paragraph, preformatted, section, table
from .plots import interval_bars, paths_plot, strip_plot

SAMPLES_PER_ATTACK = 1


def _asr_table(results: dict) -> str:
    base, methods = results["base"], results["by_method"]
    headers = ["attack", "mode", "n", "base ASR", *(f"{m} ASR" for m in methods),
               *(f"{m}: McNemar p (seed {r['seed']})" for m, v in methods.items() for r in v["per_seed"]),
               "model can read the form (base)"]
    rows = []
    for name, row in base["attacks"].items():
        p_values = [num(r["compare"].get(name, {}).get("p_value"), 3) for v in methods.values() for r in v["per_seed"]]
        readable = row.get("readable")
        rows.append([name, row["mode"], row["n"], interval(row["asr"]),
                     *(interval(v["attacks"][name]["asr"]) for v in methods.values()), *p_values,
                     "-" if readable is None else ("yes" if all(readable) else "no")])
    rows.append(["benign twins refused (over-refusal)", "", base["over_refusal"]["n"], interval(base["over_refusal"]),
                 *(interval(v["over_refusal"]) for v in methods.values()),
                 *([""] * sum(len(v["per_seed"]) for v in methods.values())), ""])
    return table(headers, rows)


def _asr_plot(results: dict) -> str:
    rows = []
    for name, row in results["base"]["attacks"].items():
        rows.append((f"{name} · base", row["asr"]))
        rows.extend((f"{name} · {m}", v["attacks"][name]["asr"]) for m, v in results["by_method"].items())
    return interval_bars(rows, "attack success rate, base and tuned (95% CI)")


def _attribution(view: dict, label: str) -> str:
    att = view.get("mode_attribution")
    if not att:
        return paragraph(f"{label}: no inside view in this run.")
    inside = view["inside"] if isinstance(view["inside"], dict) else view["inside"][0]
    d = inside["direction"]
    rows = [[a, r["registered"], r["attributed"], interval(r["recognised"]), r["complied"], num(r["twin_auroc"])]
            for a, r in att.items()]
    confusion = view.get("mode_confusion", {})
    registered = sorted({k for row in confusion.values() for k in row})
    conf_rows = [[attributed, *(confusion[attributed].get(k, 0) for k in registered)] for attributed in sorted(confusion)]
    causal = inside["causal"]
    causal_rows = [
        ["plain restricted requests: refused", interval(causal["restricted_refused"]),
         interval(causal["restricted_refused_ablated"]), "direction ablated at every layer"],
        ["plain restricted requests: leaked", interval(causal["restricted_violated"]),
         interval(causal["restricted_violated_ablated"]), "direction ablated at every layer"],
        ["benign twins: refused", interval(causal["benign_refused"]), interval(causal["benign_refused_added"]),
         f"difference of means added at layer {d['layer']}"],
    ]
    strips = ""
    if "projections" in inside:
        t = d["threshold"]
        strips = strip_plot([(a, [v - t for v in p["restricted"]], [v - t for v in p["benign_twins"]])
                             for a, p in inside["projections"].items()],
                            f"{label}: each prompt's projection on the refusal direction (red: restricted, blue: "
                            "benign twin in the same form)", axis_label="projection minus threshold (above 0: recognised)")
    return "".join([
        paragraph(f"{label}: refusal direction at layer {d['layer']} (held-out AUROC "
                  f"{num(d['heldout_auroc'][d['layer']])}, {d['n_restricted']} restricted vs {d['n_benign']} benign "
                  "prompts, half to fit, half to choose the layer)."),
        table(["attack", "registered mode", "attributed (inside)", "recognised share [95% CI]", "replies that leaked",
               "AUROC vs benign twins in the same form"], rows), strips,
        table(["attributed \\ registered", *registered], conf_rows) if conf_rows else "",
        table(["what", "as tuned", "with intervention", "intervention"], causal_rows),
    ])


def _kl_plot(results: dict) -> str:
    series = [(label, [(r["position"], r["kl"], None, None) for r in view["kl_by_position"]])
              for label, view in _views(results) if view.get("kl_by_position")]
    if not series:
        return ""
    return paths_plot(series, "KL(tuned || base) along a leaking reply, by token position", "reply token",
                      "KL (nats)")


def _first_inside(view: dict) -> dict | None:
    """A model's inside view (the first seed's when there are several), None without one."""
    inside = view.get("inside")
    return inside[0] if isinstance(inside, list) else inside


def reading(results: dict) -> str:
    """One paragraph in plain words, every claim read off the numbers (intervals decide, not estimates)."""
    base, tuned, method = results["base"], results["tuned"], results["tuned"]["method"]
    b, t = base["attacks"]["none"]["asr"], tuned["attacks"]["none"]["asr"]
    parts = []
    if t["high"] < b["low"]:
        parts.append(f"After {method} tuning, held-out direct requests leak the secret far less often "
                     f"({num(t['estimate'])} against the base model's {num(b['estimate'])}; the intervals do not overlap).")
    else:
        parts.append(f"{method} tuning did not separate the plain-request leak rate from the base model's "
                     f"({num(t['estimate'])} vs {num(b['estimate'])}; the intervals overlap).")
    parts.append(f"Benign twins refused: {num(base['over_refusal']['estimate'])} before, "
                 f"{num(tuned['over_refusal']['estimate'])} after.")
    through = [a for a, r in tuned["attacks"].items() if a != "none" and r["asr"]["low"] > t["high"]]
    if through:
        parts.append(f"Attacks whose leak rate stays above the plain requests' after tuning: {', '.join(through)}.")
    else:
        parts.append("No attack's leak rate is separated above the tuned model's plain-request rate.")
    att = tuned.get("mode_attribution")
    if att:
        mg = [a for a, r in att.items() if r["attributed"] == "MG" and a != "none"]
        overridden = [a for a, r in att.items() if r["attributed"] == "CO" and a != "none" and r["complied"]]
        held = [a for a, r in att.items() if r["attributed"] == "CO" and a != "none" and not r["complied"]]
        if overridden:
            parts.append(f"Inside, the refusal direction fires on most prompts of {', '.join(overridden)}, which "
                         "still leak: recognised and overridden (competing objectives).")
        if held:
            subject = "It also fires" if overridden else "Inside, the refusal direction fires"
            parts.append(f"{subject} on most prompts of {', '.join(held)}, and none of their replies leaked: "
                         "recognised and refused.")
        parts.append(f"It stays below threshold on most prompts of {', '.join(mg) or 'no attack'} (not recognised as "
                     "the restricted request: mismatched generalization where such a prompt leaks).")
        causal = _first_inside(tuned)["causal"]
        drop = causal["restricted_refused_ablated"]["high"] < causal["restricted_refused"]["low"]
        rise = causal["benign_refused_added"]["low"] > causal["benign_refused"]["high"]
        parts.append(f"Ablating the direction {'removes' if drop else 'does not clearly remove'} the refusals of plain "
                     f"requests ({num(causal['restricted_refused']['estimate'])} -> "
                     f"{num(causal['restricted_refused_ablated']['estimate'])}); adding it "
                     f"{'makes' if rise else 'does not clearly make'} the model refuse benign questions "
                     f"({num(causal['benign_refused']['estimate'])} -> {num(causal['benign_refused_added']['estimate'])}).")
    curve = (_first_inside(tuned) or {}).get("prefill")
    if curve:
        start = curve[0]
        broken = next((r for r in curve[1:] if r["low"] > start["high"]), None)
        last = curve[-1]
        parts.append("Forcing the first words of a leaking reply (the prefill attack) "
                     + (f"breaks the tuned model at {broken['k']} forced tokens (ASR {num(start['estimate'])} -> "
                        f"{num(broken['estimate'])}, intervals separate): its safety sits in the first tokens."
                        if broken else
                        f"does not clearly break the tuned model up to {last['k']} forced tokens (ASR "
                        f"{num(start['estimate'])} -> {num(last['estimate'])})."))
    return " ".join(parts)


def _samples(run_dir: Path, results: dict) -> str:
    rows = []
    sources = [("base", run_dir / "probe-base" / "samples.jsonl")]
    sources += [(f"{m} seed {results['seeds'][0]}", run_dir / f"seed-{results['seeds'][0]}" / m / "probe" / "samples.jsonl")
                for m in results["methods"]]
    for label, path in sources:
        if not path.is_file():
            continue
        shown: dict[str, int] = {}
        for s in read_samples(path):
            if s.kind != "restricted" or shown.get(s.attack, 0) >= SAMPLES_PER_ATTACK:
                continue
            shown[s.attack] = shown.get(s.attack, 0) + 1
            rows.append([label, s.attack, s.request, s.reply, s.label])
    return table(["model", "attack", "request", "reply", "label"], rows, text_columns=(2, 3))


def _views(results: dict) -> list[tuple[str, dict]]:
    """(label, inside view) of the base model and of every tuned model and seed."""
    out = [("base", results["base"]["inside"])] if results["base"].get("inside") else []
    for m, v in results["by_method"].items():
        views = v.get("inside")
        views = views if isinstance(views, list) else [views] if views else []
        out += [(f"{m} seed {v['per_seed'][i]['seed']}", view) for i, view in enumerate(views)]
    return out


def _prefill(results: dict) -> str:
    """The prefill attack's curve per model: ASR against the number of forced tokens of a leaking reply."""
    views = [(label, view["prefill"]) for label, view in _views(results) if view.get("prefill")]
    if not views:
        return ""
    depths = sorted({r["k"] for _, curve in views for r in curve})
    rows = [[label, *(next((f"{r['violated']}/{r['n']} ({interval(r)})" for r in curve if r["k"] == k), "")
                      for k in depths)] for label, curve in views]
    return (paragraph("Prefill attack (Qi et al. 2024): each plain restricted request with the first k tokens of a "
                      "leaking reply forced, the model writing on; ASR (the reply leaks the secret) against k, 95% "
                      "Wilson intervals. Only the reply's words before the secret are forced.") +
            table(["model", *(f"k = {k}" for k in depths)], rows) +
            paths_plot([(label, [(r["k"], r["estimate"], r["low"], r["high"]) for r in curve]) for label, curve in views],
                       "prefill attack: ASR against forced tokens (95% CI)", "forced tokens k", "ASR"))


def write_tuned_report(run_dir: Path, study: TunedStudy, results: dict) -> Path:
    run_dir = Path(run_dir)
    data = results["data"]
    tune_rows = [[m, r["seed"], r["tune"]["steps"], num(r["tune"]["train_loss"], 3), num(r["tune"]["val_loss"], 3),
                  num(r["tune"]["tokens_per_second"], 0), r["tune"]["dtype"]]
                 for m, v in results["by_method"].items() for r in v["per_seed"]]
    recovery = (f" ({num(data['recovery_share'])} of them after a forced start of a leak: safety-recovery rows)"
                if data.get("recovery_share") else "")
    body = [
        section("What the model's insides say", paragraph(reading(results))),
        section("Attack success, base against tuned",
                paragraph("ASR = share of held-out restricted requests (in each attack's form) whose reply leaked the "
                          "secret, seeds pooled; McNemar's exact test pairs each request's outcome before and after "
                          "tuning. An MG attack counts only where the model can do the form (capability twins)."),
                _asr_table(results), _asr_plot(results)),
        section("Refusal direction and mode attribution",
                _attribution(results["base"], "Base model"),
                *(_attribution(v, f"{m} (seeds pooled)") for m, v in results["by_method"].items())),
        section("How deep the tuning went", _kl_plot(results) or paragraph("No KL measured in this run."),
                _prefill(results)),
        section("Tuning", paragraph(f"{data['train_rows']} rows per method and seed, {num(data['safety_share'])} "
                                    f"refusals of {data['train_requests']} direct phrasings{recovery}; benign "
                                    f"answers are the base model's own ({data['benign_kept']} of {data['benign_questions']} kept: "
                                    "no refusal, no leak). Evaluation: "
                                    f"{data['eval_requests']} held-out requests, {data['eval_benign']} benign twins."),
                table(["method", "seed", "steps", "train loss", "val loss", "tokens/s", "dtype"], tune_rows)),
        section("Sample replies (one per attack and model)", _samples(run_dir, results)),
        section("Configuration", preformatted(dump_toml(study_dict(study)))),
    ]
    path = run_dir / "report.html"
    write_text_atomic(path, page(f"fissure lab: {study.name}", body))
    return path
