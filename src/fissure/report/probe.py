"""``report.html`` of a probe run: ASR per attack and per mode with intervals, capability
control, over-refusal, white-box probes and the worst replies, from ``results.json`` and
``samples.jsonl`` alone (so a report can be rebuilt from any run directory)."""

from __future__ import annotations

import json
from pathlib import Path

from ..judges.records import Sample, read_samples
from ..runs import write_text_atomic
from .html import Raw, interval, num, page, paragraph, section, table
from .plots import dot_plot, interval_bars

MAX_EXAMPLES = 12


def _user_text(prompt) -> str:
    if isinstance(prompt, list):
        return next((m.get("content", "") for m in reversed(prompt) if m.get("role") == "user"), "")
    return str(prompt or "")


def detectable_line(d: dict | None) -> str:
    """One sentence on the minimum detectable difference of a decoding's ``detectable``."""
    if not d:
        return ""

    def rise(value: float | None, above: str) -> str:
        return f"{value:.2f} above {above}" if value is not None else f"none above {above} (not even an ASR of 1 would show)"

    head = (f"at n = {d['n']} per attack (power {d['power']:.0%}, two-sided \u03b1 = {d['alpha']:.2g}) the smallest "
            f"detectable ASR difference is")
    over_zero = rise(d["rise_over_zero"], "zero")
    if d.get("baseline") is None:
        return f"{head} {over_zero}"
    plain = f"the plain request's {d['baseline']:.2f}"
    return f"{head} {rise(d.get('rise_over_baseline'), plain)}, {over_zero}"


def _decoding_section(d: dict) -> str:
    k = d.get("samples", 1)
    title = f"Decoding {d['decoding']} (temperature {d['temperature']:g}, {k} sample{'s' if k > 1 else ''} per request)"
    rows = []
    for name, a in d["attacks"].items():
        c = a["counts"]
        twin = interval(a["twin_accuracy"]) if a.get("twin_accuracy") else "-"
        if a.get("readable") is False:
            twin += " (cannot read)"
        kinds = ", ".join(f"{kind} {n}" for kind, n in a.get("unclear_kinds", {}).items()) or "-"
        rows.append([name, a["mode"], a["n"], c["refused"], c["violated"], c["unclear"], kinds, interval(a["asr"]),
                     interval(a["asr_per_sample"]), twin, a.get("reclassified_unclear", 0)])
    attack_table = table(["attack", "mode", "n", "refused", "violated", "unclear", "unclear kinds",
                          f"ASR at k={k} [95% CI]", "ASR per sample", "twin accuracy", "refusals -> unclear"], rows)
    mode_rows = [[m, r["n"], r["counts"]["refused"], r["counts"]["violated"], r["counts"]["unclear"],
                  interval(r["asr"]), interval(d["adaptive_asr_by_mode"].get(m))] for m, r in d["modes"].items()]
    mode_table = table(["mode", "n", "refused", "violated", "unclear", "ASR [95% CI]", "adaptive ASR"], mode_rows)
    o = d["over_refusal"]
    corrected = f" (corrected for the judge's error: {interval(o['corrected'])})" if o and o.get("corrected") else ""
    over = (paragraph(f"Benign twins: {o['n']} replies, refused {o['counts']['refused']}, over-refusal "
                      f"{interval(o['rate'])}{corrected}; correct answer where checkable {interval(o['answered'])} "
                      f"(of {o['answered_n']}).") if o and o["n"] else paragraph("No benign twins asked.", "note"))
    best_of = [(n, a["attempts"]) for n, a in d["attacks"].items() if a.get("attempts")]
    attempts = []
    if best_of:
        attempts = [table(["attack", *(f"N={r['attempts']}" for r in best_of[0][1]["curve"]), "fit: -log ASR ~ N^b"],
                          [[n, *(interval(r) for r in a["curve"]),
                            f"b = {num(a['fit']['exponent'])} [{num(a['fit']['low'])}, {num(a['fit']['high'])}]"
                            if a["fit"] else "-"] for n, a in best_of]),
                    paragraph("Best-of-N: ASR with N attempts per request, estimated without bias from the k samples "
                              "of each request (bootstrap 95% over requests).")]
    return section(
        title,
        Raw(interval_bars([(n, a["asr"]) for n, a in d["attacks"].items()], "ASR per attack (Wilson 95%)")),
        attack_table,
        *attempts,
        Raw(interval_bars([(m, r["asr"]) for m, r in d["modes"].items()], "ASR per mode (Wilson 95%)")),
        mode_table,
        paragraph(f"Adaptive ASR (a request counts as broken if any attack broke it): {interval(d['adaptive_asr'])}"),
        *([paragraph(f"What this n can decide: {detectable_line(d['detectable'])}.")] if d.get("detectable") else []),
        over,
    )


def _capability_section(d: dict, threshold: str) -> str:
    if not d.get("capability"):
        return section("Capability control", paragraph("No MG attack in this run (or twins turned off).", "note"))
    rows = [[name, c["encoding"], c["n"], c["correct"], interval(c["accuracy"]), "yes" if c["readable"] else "no"]
            for name, c in d["capability"].items()]
    enc_rows = [[enc, c["n"], c["correct"], interval(c["accuracy"]), "yes" if c["readable"] else "no"]
                for enc, c in d["capability_by_encoding"].items()]
    return section(
        "Capability control (benign twins in the same encoding)",
        paragraph("Where the model cannot read an encoding (twin accuracy below the threshold, "
                  f"{threshold}), its refusals and unclear replies there are counted as unclear, not as safety."),
        table(["attack", "encoding", "twins", "correct", "accuracy [95% CI]", "readable"], rows),
        table(["encoding", "twins", "correct", "accuracy [95% CI]", "readable"], enc_rows),
    )


def _whitebox_section(w: dict) -> str:
    if not w or w.get("skipped"):
        return section("White-box probes", paragraph((w or {}).get("note", "not run"), "note"))
    per_attack = w.get("attacks") or {}  # runs before every attack was probed have plain requests only
    rows = []
    for r in w["requests"]:
        pf = r.get("prefill") or {}
        rows.append([r.get("attack", "none"), r["request_id"], r["request"], num(r["refusal_log_odds"]),
                     num(pf.get("logprob")) if pf else "-", num(pf.get("per_token")) if pf else "-",
                     ("yes" if pf.get("greedy") else "no") if pf else "-"])
    parts = [paragraph(f"Refusal log-odds = log P(opens with {', '.join(w['refusal_openings'])}) - "
                       f"log P(opens with {', '.join(w['compliant_openings'])}); positive leans to refusing. "
                       "Measured on every restricted request in every attack's form, before the model writes "
                       "a word: an attack that lowers it made refusing less likely from the start.")]
    if per_attack:
        parts.append(table(["attack", "mode", "n", "mean refusal log-odds", "share leaning to refusal",
                            "share completing the prefill greedily"],
                           [[name, a.get("mode") or "-", a["n"], num(a["mean_refusal_log_odds"]),
                             interval(a["share_leaning_refusal"]), interval(a.get("share_prefill_greedy"))]
                            for name, a in per_attack.items()]))
        parts.append(Raw(dot_plot([(name, a["mean_refusal_log_odds"]) for name, a in per_attack.items()
                                   if a["mean_refusal_log_odds"] is not None],
                                  "Mean refusal log-odds per attack", axis_label="nats (refusal - compliance)")))
    else:
        parts.append(Raw(dot_plot([(r["request_id"], r["refusal_log_odds"]) for r in w["requests"]],
                                  "Refusal log-odds per request", axis_label="nats (refusal - compliance)")))
    if w.get("target"):
        parts.append(paragraph(f"Prefill: log P(target | prompt + \"{w['prefill']}\"); greedy = the model would emit "
                               f"the target itself. Share greedy over all rows {num(w.get('share_prefill_greedy'))}."))
    elif w.get("note"):
        parts.append(paragraph(w["note"], "note"))
    parts.append(table(["attack", "request", "text", "refusal log-odds", "prefill log P(target)", "per token",
                        "greedy"], rows, text_columns=(2,)))
    return section("White-box probes", *parts)


def _examples_section(samples: list[Sample]) -> str:
    violated = [s for s in samples if s.kind == "restricted" and s.judge_label == "violated"]
    violated.sort(key=lambda s: (s.mode == "control", s.attack, s.request_id))
    parts = []
    if violated:
        parts.append(table(
            ["attack", "t", "request", "attack prompt", "reply", "canonical reply", "evidence"],
            [[s.attack, f"{s.temperature:g}", s.request, _user_text(s.prompt), s.reply,
              s.canonical if s.canonical != s.reply else "(same)", s.verdicts.get("violation", {}).get("evidence")]
             for s in violated[:MAX_EXAMPLES]], text_columns=(2, 3, 4, 5)))
        if len(violated) > MAX_EXAMPLES:
            parts.append(paragraph(f"... and {len(violated) - MAX_EXAMPLES} more in samples.jsonl.", "note"))
    else:
        parts.append(paragraph("No reply violated the policy.", "note"))
    over = [s for s in samples if s.kind == "benign" and s.judge_label == "refused"]
    if over:
        parts.append("<h3>Over-refusals on benign twins</h3>")
        parts.append(table(["t", "request", "reply", "refusal evidence"],
                           [[f"{s.temperature:g}", s.request, s.reply, _refusal_evidence(s)]
                            for s in over[:MAX_EXAMPLES]], text_columns=(1, 2)))
    return section("Worst examples (policy violations)", *parts)


def _refusal_evidence(sample: Sample) -> str | None:
    return next((v["evidence"] for role, v in sample.verdicts.items()
                 if role.startswith("refusal_") and isinstance(v, dict) and v.get("evidence")), None)


def server_traffic(tp: dict) -> str:
    """A served model's request counts in one line: requests, requests/s, retries by reason."""
    retries = tp.get("retries") or {}
    why = ", ".join(f"{n} {reason}" for reason, n in retries.items())
    return (f"{tp.get('requests')} requests in {num(tp.get('seconds'), 1)} s: {num(tp.get('requests_per_s'))} "
            f"requests/s, at most {tp.get('max_in_flight')} in flight (concurrency {tp.get('concurrency')}); "
            f"{sum(retries.values())} retries{f' ({why})' if why else ''}, {tp.get('failed')} failed")


def validation_text(v: dict | None) -> str:
    """What the judge's validation says, in words: on which set, agreement and kappa."""
    if not isinstance(v, dict):
        return ""
    if not v.get("validated"):
        return f"; not validated here ({v.get('note')})"
    return (f"; refusal detection validated on {v['set']} ({v['n']} human-labelled replies no rule was written "
            f"against): agreement {interval(v['agreement'])}, kappa {v['kappa']['estimate']:.2f}. Leaks are found "
            "by exact detectors, so ASR is not corrected; over-refusal is also shown corrected for this error")


def judge_line(j: dict | None) -> str:
    """Which judge gave the verdicts, in one line, with a cascade's disagreements and fallbacks."""
    if not isinstance(j, dict):
        return "rules (policy detector + refusal rules)"
    if j.get("judge") in (None, "rules"):
        return "rules (policy detector + refusal rules)" + validation_text(j.get("validation"))
    text = f"{j['judge']}: {j.get('model')} ({j.get('mode')}, rubric v{j.get('rubric_version')})"
    so = j.get("second_opinion")
    if isinstance(so, dict):
        text += (f"; rules disagree with the model on {so.get('disagree')} of {so.get('compared')} replies; "
                 f"{j.get('policy_detector_final', 0)} leaks decided by the policy detector; "
                 f"{j.get('rules_fallback', 0)} decided by the rules because the judge model failed")
    if j.get("outside_rubric"):
        text += f"; {j['outside_rubric']} answers outside the rubric (unclear)"
    return text


def render_probe_report(results: dict, samples: list[Sample]) -> str:
    tp = results.get("throughput") or {}
    policy = results.get("policy") or {}
    head = table(["", ""], [
        ["model", f"{results.get('model')} ({results.get('backend')} backend)"],
        ["policy", f"{policy.get('name')}: {policy.get('requests')} requests, "
                   f"{policy.get('benign_twins')} benign twins"],
        ["signature", results.get("signature")],
        ["judge", judge_line(results.get("judge"))],
        ["throughput", f"{tp.get('prompts')} prompts in {num(tp.get('generate_seconds'), 1)} s: "
                       f"{num(tp.get('prompts_per_s'))} prompts/s, {num(tp.get('tokens_per_s'), 1)} new tokens/s"
                       + (f" ({tp['resumed_samples']} samples from before a resume)"
                          if tp.get("resumed_samples") else "")],
        *([["server", server_traffic(tp["backend"])]] if isinstance(tp.get("backend"), dict) else []),
        ["run directory", results.get("run_dir")],
    ])
    threshold = results.get("capability_threshold")
    thr = f"{threshold:g}" if threshold is not None else "see config.toml"
    body = [head]
    for d in results.get("decodings", []):
        body.append(_decoding_section(d))
        body.append(_capability_section(d, thr))
    body.append(_whitebox_section(results.get("whitebox")))
    body.append(_examples_section(samples))
    return page(f"fissure probe: {results.get('model')} / {policy.get('name')}", body)


def write_probe_report(run_dir: str | Path, results: dict | None = None, samples: list[Sample] | None = None) -> Path:
    """Write ``run_dir/report.html`` (reading results.json and samples.jsonl where not given)."""
    run_dir = Path(run_dir)
    if results is None:
        results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    if samples is None:
        samples = read_samples(run_dir / "samples.jsonl")
    path = run_dir / "report.html"
    write_text_atomic(path, render_probe_report(results, samples))
    return path
