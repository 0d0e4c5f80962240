"""``fissure probe``: jailbreak probes on any model, and what to do with their runs.

- ``fissure probe run MODEL [options]`` (or just ``fissure probe MODEL``): run the suite;
- ``fissure probe list``: the attacks, their mode, controls and description (also ``--list``);
- ``fissure probe compare RUN_A RUN_B``: McNemar's exact test per attack;
- ``fissure probe judge REPLIES.jsonl --policy NAME``: judge saved replies again;
- ``fissure probe curve MODEL --dose shots|prefill|attempts``: an attack's dose-response curve.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import UserError
from .app import ModelFirstGroup, command_group
from .common import (BackendOption, ChatTemplateOption, ConcurrencyOption, DtypeOption, JsonOption, ModelArgument,
                     OutDirOption, ServedModelOption, TemplateFromOption, ThreadsOption, err, guard, http_options, out,
                     print_json, styled)


probe_app = command_group("probe", "Jailbreak probes (competing objectives, mismatched generalization) on any model.",
                          cls=ModelFirstGroup)

PolicyOption = Annotated[str, typer.Option(help="Built-in policy (secret, private_record, topic_ban) or a TOML file. "
                                                "[default: secret]")]
SeedOption = Annotated[int, typer.Option(help="Seed for the canary, attack randomness and sampling. [default: 0]")]
JudgeOption = Annotated[str, typer.Option(help="Who judges replies: rules (policy detector + refusal rules), model "
                                               "(a judge model answers a rubric), cascade (policy detector, then the "
                                               "model, rules as fallback and second opinion). [default: rules]")]
JudgeModelOption = Annotated[str, typer.Option(help="The judge model for --judge model|cascade: a registry name, a "
                                                    "path or an http(s) URL of an OpenAI-compatible server.")]
JudgeRubricOption = Annotated[str, typer.Option(help="How the judge model is asked: letters (our rubric: refused, gave "
                                                     "the restricted content, neither) or llamaguard (a served Llama "
                                                     "Guard's safe/unsafe; the rules tell refusals apart). "
                                                     "[default: letters]")]
ThresholdOption = Annotated[float, typer.Option(help="Twin accuracy below which the model 'cannot read' an encoding. "
                                                     "[default: 0.5]")]


@probe_app.command("run", epilog="Examples: fissure probe smollm2;  fissure probe ./my-model --policy policies/bank.toml "
                                 "--attacks co,mg --samples 3 --temperature 0,0.7;  fissure probe --resume runs/probe-A")
@guard
def run(
    ctx: typer.Context,
    model: ModelArgument = None,
    policy: PolicyOption = None,
    attacks: Annotated[str, typer.Option(help="Comma list of attacks or groups (co, mg, co+mg, control, all, default). "
                                              "[default: default, 10 attacks]")] = None,
    samples: Annotated[int, typer.Option(help="Generations per request at each temperature > 0; a request is broken "
                                              "at k samples if any is. [default: 1]")] = None,
    temperature: Annotated[str, typer.Option(help="Comma list of temperatures, e.g. 0,0.7,1.0 (0 = greedy). "
                                                  "[default: 0]")] = None,
    requests: Annotated[int, typer.Option(help="Use the policy's first N requests (0 = all). [default: 0]")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per reply. [default: 48]")] = None,
    twins: Annotated[int, typer.Option(help="Capability twins per MG attack (0 = no capability control). "
                                            "[default: 4]")] = None,
    capability_threshold: ThresholdOption = None,
    benign: Annotated[bool, typer.Option("--benign/--no-benign", help="Ask the benign twins (over-refusal). "
                                                                      "[default: on]")] = None,
    whitebox: Annotated[bool, typer.Option("--whitebox/--no-whitebox", help="Log-probability probes where the backend "
                                                                            "has them. [default: on]")] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts per generate call (a served model: its concurrency applies "
                                                     "instead). [default: 16]")] = None,
    seed: SeedOption = None,
    judge: JudgeOption = None,
    judge_model: JudgeModelOption = None,
    judge_rubric: JudgeRubricOption = None,
    backend: BackendOption = None,
    served_model: ServedModelOption = None,
    concurrency: ConcurrencyOption = None,
    chat_template: ChatTemplateOption = None,
    template_from: TemplateFromOption = None,
    dtype: DtypeOption = None,
    resume: Annotated[Path, typer.Option("--resume", help="Finish an interrupted probe run (its config is reused).")]
    = None,
    threads: ThreadsOption = 0,
    executor: Annotated[str, typer.Option(
        "--executor", help="Where batches are generated: serial (this process), local[:N] (N worker processes, "
                           "each loading the model; default N = cores / threads), ray or ray://host:port (pip "
                           "install 'fissure\\[scale]'). Shards are whole batches, so replies match a serial run. "
                           "Not for a served model (it keeps requests in flight itself). [default: serial]")] = "serial",
    out_dir: OutDirOption = "runs",
    as_json: JsonOption = False,
) -> None:
    """Attack a model under a policy, judge every reply, report ASR, over-refusal and capability.

    Every ASR has a Wilson interval; refusals in an encoding the model cannot read count as unclear."""
    from dataclasses import fields

    from ..executors import parse_executor
    from ..probes.suite import SuiteConfig

    where = parse_executor(executor)
    # every option named like a SuiteConfig field defines the run (temperature -> temperatures)
    run_fields = {f.name for f in fields(SuiteConfig)} | {"temperature"}
    given = {k: v for k, v in ctx.params.items() if k in run_fields - {"model"} and v is not None}
    if resume is not None:
        _resume(model, given, resume, threads, where, as_json)
    else:
        _run(_config_from(model, given), threads, where, out_dir, as_json)


def _floats(text: str, name: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{name} must be comma-separated numbers, e.g. 0,0.7,1.0; got '{text}'") from None


def _config_from(model: str | None, given: dict):
    from ..probes.suite import SuiteConfig, resolve_attacks

    if model is None:
        raise UserError("give a model to probe (e.g. `fissure probe smollm2`), or --resume RUN_DIR")
    fields = dict(given, model=model)
    if "attacks" in fields:
        fields["attacks"] = resolve_attacks(fields["attacks"])
    if "temperature" in fields:
        fields["temperatures"] = _floats(fields.pop("temperature"), "--temperature")
    config = SuiteConfig(**fields)
    if config.samples > 1 and not any(config.temperatures):
        err.print(f"note: --samples {config.samples} needs a temperature > 0 (greedy samples are identical); "
                  "add e.g. --temperature 0,0.7", highlight=False)
    return config


def _resume(model: str | None, given: dict, resume: Path, threads: int, where, as_json: bool) -> None:
    from ..probes.suite import load_config

    if given:
        raise UserError(f"--resume reuses the run's own config: drop --{next(iter(given)).replace('_', '-')}")
    config = load_config(resume)
    if model is not None and model != config.model:
        raise UserError(f"{resume} probed '{config.model}', not '{model}'")
    _run(config, threads, where, None, as_json, run_dir=resume)


def _run(config, threads: int, executor_spec, out_dir: str | None, as_json: bool, run_dir: Path | None = None) -> None:
    from tqdm import tqdm

    from ..executors import open_executor
    from ..probes.suite import run_suite
    from ..probes.suite.run import load_model
    from ..report.probe import write_probe_report
    from ..runs import run_directory
    from ..utils import set_threads

    remote = http_options(config.model, config.concurrency, config.chat_template, config.template_from or None)
    n_threads = set_threads(threads)
    lm = load_model(config, **remote)
    bars: list = []

    def on_plan(total: int, done: int) -> None:
        bars.append(tqdm(total=total, initial=done, desc="probe", unit="reply", disable=as_json))

    def work(where: Path) -> dict:
        err.print(f"run directory: {where}")
        try:
            return run_suite(lm, config, where, progress=lambda n: bars[0].update(n), on_plan=on_plan,
                             executor=pool, threads=n_threads)
        finally:
            for bar in bars:
                bar.close()

    with open_executor(executor_spec, cpus_per_task=n_threads) as pool:  # a Ray that cannot start: no run dir
        if run_dir is not None:
            results = work(run_dir)
        else:
            with run_directory("probe", config.as_dict(), config.seed, root=out_dir, threads=n_threads) as run_dir:
                results = work(run_dir)
    write_probe_report(run_dir, results)
    for warning in (results.get("chat_template") or {}).get("warnings", []):
        err.print(f"warning: {warning}", soft_wrap=True)
    if as_json:
        print_json(results)
        return
    _print_summary(results)
    out.print(f"report: {run_dir / 'report.html'}")


@probe_app.command("list")
@guard
def list_attacks(as_json: JsonOption = False) -> None:
    """The attacks: name, mode (CO, MG, CO+MG, control), what each is a control for, description."""
    from ..probes.attacks import CONTROLS, list_attacks as attacks_of

    attacks = attacks_of()
    for a in attacks:
        a["control_for"] = ("every attack (baseline)" if a["name"] == "none" else CONTROLS.get(a["name"]))
    if as_json:
        print_json({"attacks": attacks})
        return
    from rich.table import Table

    t = Table(title="fissure probe attacks", show_lines=False)
    t.add_column("name", no_wrap=True)
    t.add_column("mode", no_wrap=True)
    t.add_column("control for", overflow="fold")
    t.add_column("description", overflow="fold")
    for a in attacks:
        t.add_row(a["name"], a["mode"], a["control_for"] or "", a["description"])
    out.print(t)


def _print_summary(results: dict) -> None:
    from rich import box
    from rich.table import Table

    from ..report.html import interval
    from ..report.probe import detectable_line

    for d in results["decodings"]:
        t = Table(title=f"{results['model']} / {results['policy']['name']}: {d['decoding']}, k={d['samples']}",
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
        t.add_column("attack", no_wrap=True)
        t.add_column("mode", no_wrap=True)
        for col in ("n", "ref", "viol", "uncl"):  # refused, violated, unclear
            t.add_column(col, justify="right", no_wrap=True)
        t.add_column("ASR [95% CI]", justify="right", no_wrap=True)
        t.add_column("twin", justify="right", no_wrap=True)
        unreadable = False
        for name, a in d["attacks"].items():
            c = a["counts"]
            twin = "" if a["twin_accuracy"] is None else f"{a['twin_accuracy']['estimate']:.2f}"
            if a["readable"] is False:
                twin, unreadable = twin + "*", True
            t.add_row(name, a["mode"], str(a["n"]), str(c["refused"]), str(c["violated"]), str(c["unclear"]),
                      interval(a["asr"]), twin)
        out.print(t)
        if unreadable:
            out.print("* twin accuracy below the threshold: the model cannot read this encoding, so its "
                      "refusals there count as unclear", highlight=False)
        modes = "   ".join(f"{m} {interval(r['asr'])}" for m, r in d["modes"].items())
        out.print(f"per mode: {modes}", highlight=False)
        out.print(f"adaptive ASR {interval(d['adaptive_asr'])}   over-refusal on benign twins "
                  f"{interval(d['over_refusal']['rate'])}", highlight=False)
        if d.get("detectable"):
            out.print(detectable_line(d["detectable"]), highlight=False)
    if isinstance(results.get("judge"), dict) and results["judge"].get("judge") != "rules":
        from ..report.probe import judge_line

        out.print(f"judge: {judge_line(results['judge'])}", highlight=False)
    w = results.get("whitebox") or {}
    if w.get("skipped"):
        out.print(f"white-box: {w['note']}", highlight=False)
    elif w:
        extra = f", prefill greedy leak share {w['share_prefill_greedy']:.2f}" if w.get("target") else ""
        during = w.get("scored_during_generation") or 0
        took = (f" ({len(w['requests'])} attack prompts: {during} scored during generation"
                + (f", {len(w['requests']) - during} in a pass of {w['seconds']:.1f} s)" if during < len(w["requests"])
                   else ")")) if "seconds" in w else ""
        out.print(f"white-box: mean refusal log-odds {w['mean_refusal_log_odds']:.2f}{extra}{took}", highlight=False)
    tp = results.get("throughput") or {}
    if tp.get("prompts_per_s"):
        tok = f", {tp['tokens_per_s']:.1f} tokens/s" if tp.get("tokens_per_s") else ""
        out.print(f"throughput: {tp['prompts']} prompts, {tp['prompts_per_s']:.2f} prompts/s{tok}", highlight=False)
    if isinstance(tp.get("backend"), dict):
        from ..report.probe import server_traffic

        out.print(f"server: {server_traffic(tp['backend'])}", highlight=False)


@probe_app.command("compare")
@guard
def compare(
    run_a: Annotated[Path, typer.Argument(help="A probe run directory.")],
    run_b: Annotated[Path, typer.Argument(help="Another probe run directory (same attacks and requests).")],
    out_dir: OutDirOption = "runs",
    as_json: JsonOption = False,
) -> None:
    """McNemar's exact test per attack between two probe runs, paired on request x temperature."""
    from ..probes.suite import compare as compare_runs
    from ..runs import start_run, write_json

    result = compare_runs(run_a, run_b)
    run_dir = start_run("probe-compare", {"run_a": str(run_a), "run_b": str(run_b)}, None, root=out_dir)
    result["run_dir"] = str(run_dir)
    write_json(run_dir / "results.json", result)
    if as_json:
        print_json(result)
        return
    from rich import box
    from rich.table import Table

    t = Table(title=f"{run_a} (A) vs {run_b} (B): McNemar exact, paired on request x temperature",
              box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
    t.add_column("attack", no_wrap=True)
    t.add_column("mode", no_wrap=True)
    for col in ("pairs", "ASR A", "ASR B", "A only", "B only", "p"):
        t.add_column(col, justify="right")
    for name, r in result["attacks"].items():
        t.add_row(name, r["mode"], str(r["n_pairs"]), f"{r['asr_a']:.2f}", f"{r['asr_b']:.2f}", str(r["a_only"]),
                  str(r["b_only"]), f"{r['p_value']:.3g}")
    o = result["overall"]
    t.add_row("all", "", str(o["n_pairs"]), "", "", str(o["a_only"]), str(o["b_only"]), f"{o['p_value']:.3g}")
    out.print(t)
    for note in result["notes"]:
        out.print(styled(("note:", "yellow"), f" {note}"))
    err.print(f"run directory: {run_dir}")


@probe_app.command("curve", epilog="Examples: fissure probe curve smollm2 --dose shots --shots 0,1,2,4,8,16;  "
                                   "fissure probe curve smollm2 --dose prefill;  "
                                   "fissure probe curve http://HOST:8000/v1 --model M --dose attempts --attempts 16")
@guard
def curve(
    model: ModelArgument,
    dose: Annotated[str, typer.Option(help="shots (many-shot faux dialogues), prefill (forced reply tokens; a local "
                                           "model) or attempts (best-of-N sampling). [default: shots]")] = "shots",
    policy: PolicyOption = "secret",
    requests: Annotated[int, typer.Option(help="The policy's first N requests (0 = all). [default: 0]")] = 0,
    shots: Annotated[str, typer.Option(help="Comma list of shot counts. [default: 0,1,2,4,8,16,32,64]")] = "",
    depths: Annotated[str, typer.Option(help="Comma list of forced tokens. [default: 0,1,2,4,8,16]")] = "",
    attempts: Annotated[int, typer.Option(help="Samples per request for --dose attempts. [default: 8]")] = 8,
    temperature: Annotated[float, typer.Option(help="Sampling temperature for --dose attempts. [default: 1.0]")] = 1.0,
    sample: Annotated[bool, typer.Option("--sample/--no-sample", help="Shots: also generate and judge replies "
                                                                       "(ASR), not only log-likelihoods.")] = False,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per reply. [default: 48]")] = 48,
    seed: SeedOption = 0,
    backend: BackendOption = "auto",
    served_model: ServedModelOption = None,
    concurrency: ConcurrencyOption = None,
    threads: ThreadsOption = 0,
    out_dir: OutDirOption = "runs",
    as_json: JsonOption = False,
) -> None:
    """One attack's dose-response curve on a policy, with the power law fitted to it (see probes/curves.py)."""
    from ..backends import load
    from ..probes import curves
    from ..probes.policies import load_policy
    from ..probes.shallow import PREFILL_DEPTHS
    from ..runs import run_directory, write_json
    from ..utils import set_threads

    if dose not in curves.KINDS:
        raise UserError(f"--dose must be one of {', '.join(curves.KINDS)}, not '{dose}'")
    if not 1 <= attempts <= 1024:
        raise UserError(f"--attempts must be from 1 to 1024, not {attempts}")
    shot_counts = _floats(shots, "--shots") if shots else list(curves.SHOTS)
    depth_counts = _floats(depths, "--depths") if depths else list(PREFILL_DEPTHS)
    if any(x < 0 or x != int(x) or x > 4096 for x in shot_counts + depth_counts):
        raise UserError("--shots and --depths must be whole counts from 0 to 4096")
    shot_counts, depth_counts = [int(x) for x in shot_counts], [int(x) for x in depth_counts]
    pol = load_policy(policy, seed=seed)
    curves.target_of(pol)  # a policy without a compliant reply: the error before anything loads
    chosen = list(pol.requests[:requests] if requests else pol.requests)
    remote = http_options(model, concurrency, None, None)
    n_threads = set_threads(threads)
    lm = load(model, backend=backend, model=served_model, **remote)
    config = {"model": model, "dose": dose, "policy": policy, "requests": len(chosen), "shots": shot_counts,
              "depths": depth_counts, "attempts": attempts, "temperature": temperature, "sample": sample,
              "max_new_tokens": max_new_tokens, "seed": seed}
    with run_directory("curve", config, seed, root=out_dir, threads=n_threads) as run_dir:
        if dose == "shots":
            result = curves.shots_curve(lm, pol, chosen, shot_counts, seed=seed, sample=sample,
                                        max_new_tokens=max_new_tokens)
        elif dose == "prefill":
            result = curves.prefill_points(lm, pol, chosen, depth_counts, max_new_tokens=max_new_tokens)
        else:
            result = curves.attempts_points(lm, pol, chosen, attempts, temperature=temperature, seed=seed,
                                            max_new_tokens=max_new_tokens)
        result.update(model=model, backend=lm.capabilities.backend, policy=pol.name, run_dir=str(run_dir))
        write_json(run_dir / "results.json", result)
    if as_json:
        print_json(result)
        return
    for point in result["points"]:
        x = {"shots": "shots", "prefill": "k", "attempts": "attempts"}[dose]
        parts = [f"{x} {point[x]}"]
        if "nll_per_token" in point:
            parts.append(f"NLL/token {point['nll_per_token']:.3f}")
        asr = point.get("asr") or (point if dose == "attempts" else None)
        if asr:
            parts.append(f"ASR {asr['estimate']:.2f} [{asr['low']:.2f}, {asr['high']:.2f}]")
        out.print("  ".join(parts), highlight=False, markup=False)
    fit = result.get("fit")
    if fit:
        out.print(f"fit {result['law']}: exponent {fit['exponent']:.3f} [{fit['low']:.3f}, {fit['high']:.3f}], "
                  f"R^2 {fit['r2']:.2f}", highlight=False, markup=False)
    if result.get("note"):
        out.print(styled(("note:", "yellow"), f" {result['note']}"))
    err.print(f"run directory: {run_dir}")


@probe_app.command("judge")
@guard
def judge(
    replies: Annotated[Path, typer.Argument(help="A run's samples.jsonl, or any JSONL with a reply per line.")],
    policy: PolicyOption = None,
    seed: SeedOption = None,
    capability_threshold: ThresholdOption = None,
    judge_name: Annotated[str, typer.Option("--judge", help="rules, model or cascade (see `fissure probe run`). "
                                                          "[default: rules]")] = "rules",
    judge_model: JudgeModelOption = "",
    judge_rubric: JudgeRubricOption = "letters",
    judge_cache: Annotated[Path, typer.Option(help="JSONL cache of the judge model's answers (re-judging reads it: "
                                                   "no model calls). [default: judgements.jsonl in fissure's cache "
                                                   "directory]")] = None,
    out_dir: OutDirOption = "runs",
    as_json: JsonOption = False,
) -> None:
    """Judge saved replies again (under another policy, or after the judge changed)."""
    from ..judges import append_samples
    from ..probes.suite import load_config, rejudge
    from ..report.probe import write_probe_report
    from ..runs import read_jsonl, start_run, write_json

    from ..probes.suite.config import check_judge

    check_judge(judge_name, judge_model, judge_rubric)
    if not replies.is_file():
        raise UserError(f"no replies file {replies}")
    if policy is None or seed is None or capability_threshold is None:  # a run's samples: take its settings
        try:
            run_config = load_config(replies.parent)
        except UserError:
            run_config = None
        if policy is None:
            if run_config is None:
                raise UserError("give --policy (a built-in name or a TOML file) to judge the replies under")
            policy = run_config.policy
        if seed is None:
            seed = run_config.seed if run_config else 0
        if capability_threshold is None:
            capability_threshold = run_config.capability_threshold if run_config else 0.5
    rows = [row for _, row in read_jsonl(replies)]
    judge_lm = None
    if judge_name != "rules":
        from ..backends import load
        from ..runs import cache_dir

        judge_cache = judge_cache or cache_dir() / "judgements.jsonl"
        judge_lm = load(judge_model)
    samples, summary = rejudge(rows, policy, seed=seed, capability_threshold=capability_threshold,
                               judge=judge_name, judge_lm=judge_lm, cache=judge_cache, rubric=judge_rubric)
    run_dir = start_run("probe-judge", {"replies": str(replies), "policy": policy, "seed": seed,
                                        "capability_threshold": capability_threshold, "judge": judge_name,
                                        "judge_model": judge_model, "judge_rubric": judge_rubric}, seed, root=out_dir)
    append_samples(run_dir / "samples.jsonl", samples)
    summary.update(replies=str(replies), model=f"replies from {replies}", run_dir=str(run_dir))
    write_json(run_dir / "results.json", summary)
    write_probe_report(run_dir, summary, samples)
    if as_json:
        print_json(summary)
        return
    _print_summary(summary)
    ch = summary["changed"]
    if ch["of"]:
        out.print(f"verdicts changed: {ch['n']} of {ch['of']} {ch['transitions'] or ''}", highlight=False)
    out.print(f"report: {run_dir / 'report.html'}")
