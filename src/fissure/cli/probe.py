"""``fissure probe``: jailbreak probes on any model, and what to do with their runs.

One verb, four forms (the first word decides):

- ``fissure probe MODEL [options]``: run the suite, write ``runs/probe-<ts>/``;
- ``fissure probe --list``: the attacks, their mode, controls and description;
- ``fissure probe compare RUN_A RUN_B``: McNemar's exact test per attack;
- ``fissure probe judge REPLIES.jsonl --policy NAME``: judge saved replies again.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import UserError
from .app import app
from .common import err, guard, out, print_json

_EPILOG = ("Examples: fissure probe smollm2;  fissure probe ./my-model --policy policies/bank.toml --attacks co,mg "
           "--samples 3 --temperature 0,0.7;  fissure probe --list;  fissure probe compare runs/probe-A runs/probe-B;  "
           "fissure probe judge runs/probe-A/samples.jsonl --policy secret;  fissure probe --resume runs/probe-A")

# options that define a run: not allowed with --resume (the run's config.toml is reused)
_RUN_OPTIONS = ("policy", "attacks", "samples", "temperature", "requests", "max_new_tokens", "twins",
                "capability_threshold", "batch_size", "seed", "benign", "whitebox", "backend",
                "served_model", "dtype")


def _floats(text: str, name: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{name} must be comma-separated numbers, e.g. 0,0.7,1.0; got '{text}'") from None


@app.command(epilog=_EPILOG)
@guard
def probe(
    args: list[str] = typer.Argument(None, metavar="MODEL | compare RUN_A RUN_B | judge REPLIES",
                                     help="A model spec (registered name, checkpoint/HF dir, .gguf, URL), "
                                          "or `compare RUN_A RUN_B`, or `judge REPLIES.jsonl`."),
    list_: bool = typer.Option(False, "--list", help="List the attacks (name, mode, control, description)."),
    policy: str = typer.Option(None, help="Built-in policy (secret, private_record, topic_ban) or a TOML file. "
                                          "[default: secret]"),
    attacks: str = typer.Option(None, help="Comma list of attacks or groups (co, mg, co+mg, control, all, default). "
                                           "[default: default, 10 attacks]"),
    samples: int = typer.Option(None, help="Generations per request at each temperature > 0; a request is broken "
                                           "at k samples if any is. [default: 1]"),
    temperature: str = typer.Option(None, help="Comma list of temperatures, e.g. 0,0.7,1.0 (0 = greedy). [default: 0]"),
    requests: int = typer.Option(None, help="Use the policy's first N requests (0 = all). [default: 0]"),
    max_new_tokens: int = typer.Option(None, help="Tokens per reply. [default: 48]"),
    twins: int = typer.Option(None, help="Capability twins per MG attack (0 = no capability control). [default: 4]"),
    capability_threshold: float = typer.Option(None, help="Twin accuracy below which the model 'cannot read' an "
                                                          "encoding. [default: 0.5]"),
    benign: bool = typer.Option(None, "--benign/--no-benign",
                                help="Ask the benign twins (over-refusal). [default: on]"),
    whitebox: bool = typer.Option(None, "--whitebox/--no-whitebox", help="Log-probability probes where the backend "
                                                                         "has them. [default: on]"),
    batch_size: int = typer.Option(None, help="Prompts per generate call. [default: 16]"),
    seed: int = typer.Option(None, help="Seed for the canary, attack randomness and sampling. [default: 0]"),
    resume: Path = typer.Option(None, "--resume", help="Finish an interrupted probe run (its config is reused)."),
    backend: str = typer.Option(None, help="auto | native | transformers (for HF dirs and GGUF files)."),
    served_model: str = typer.Option(None, "--model", help="Model name on an OpenAI-compatible server."),
    dtype: str = typer.Option(None, help="Weights of local models: fp32 | bf16."),
    threads: int = typer.Option(0, help="Torch threads (0 = free cores)."),
    out_dir: str = typer.Option("runs", help="Where the run directory goes."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Attack a model with jailbreaks (competing objectives, mismatched generalization) under a policy,
    judge every reply, and report ASR with Wilson intervals, over-refusal and capability control."""
    args = list(args or [])
    given = {k: v for k, v in locals().items() if k in _RUN_OPTIONS and v is not None}
    if list_:
        if args or resume:
            raise UserError("--list takes no model or run directory")
        return _list(as_json)
    if args and args[0] == "compare":
        if len(args) != 3:
            raise UserError("usage: fissure probe compare RUN_A RUN_B")
        return _compare(args[1], args[2], out_dir, as_json)
    if args and args[0] == "judge":
        if len(args) != 2:
            raise UserError("usage: fissure probe judge REPLIES.jsonl --policy NAME")
        return _judge(Path(args[1]), given.get("policy"), given.get("seed"), given.get("capability_threshold"),
                      out_dir, as_json)
    if len(args) > 1:
        raise UserError(f"give one model, not {len(args)} (forms: MODEL, compare RUN_A RUN_B, judge REPLIES)")
    _run(args[0] if args else None, given, resume, threads, out_dir, as_json)


def _list(as_json: bool) -> None:
    from ..probes.attacks import CONTROLS, list_attacks

    attacks = list_attacks()
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


def _config_from(model: str | None, given: dict):
    from ..probes.suite import SuiteConfig, resolve_attacks

    if model is None:
        raise UserError("give a model to probe (e.g. `fissure probe smollm2`), or --list, compare, judge")
    fields = {"model": model}
    for key in ("policy", "samples", "requests", "max_new_tokens", "twins", "capability_threshold", "batch_size",
                "seed", "benign", "whitebox", "backend", "served_model", "dtype"):
        if key in given:
            fields[key] = given[key]
    if "attacks" in given:
        fields["attacks"] = resolve_attacks(given["attacks"])
    if "temperature" in given:
        fields["temperatures"] = _floats(given["temperature"], "--temperature")
    config = SuiteConfig(**fields)
    if config.samples > 1 and not any(config.temperatures):
        err.print(f"note: --samples {config.samples} needs a temperature > 0 (greedy samples are identical); "
                  "add e.g. --temperature 0,0.7", highlight=False)
    return config


def _run(model: str | None, given: dict, resume: Path | None, threads: int, out_dir: str, as_json: bool) -> None:
    from tqdm import tqdm

    from ..backends import load
    from ..probes.suite import load_config, run_suite
    from ..report.probe import write_probe_report
    from ..runs import run_directory
    from ..utils import set_threads

    if resume is not None:
        if given:
            raise UserError(f"--resume reuses the run's own config: drop --{next(iter(given)).replace('_', '-')}")
        config = load_config(resume)
        if model is not None and model != config.model:
            raise UserError(f"{resume} probed '{config.model}', not '{model}'")
    else:
        config = _config_from(model, given)
    n_threads = set_threads(threads)
    lm = load(config.model, backend=config.backend, model=config.served_model or None, dtype=config.dtype,
              batch_size=config.batch_size)
    bars: list = []

    def on_plan(total: int, done: int) -> None:
        bars.append(tqdm(total=total, initial=done, desc="probe", unit="reply", disable=as_json))

    def work(run_dir: Path) -> dict:
        err.print(f"run directory: {run_dir}")
        try:
            return run_suite(lm, config, run_dir, progress=lambda n: bars[0].update(n), on_plan=on_plan)
        finally:
            for bar in bars:
                bar.close()

    if resume is not None:
        results = work(resume)
        run_dir = resume
    else:
        with run_directory("probe", config.as_dict(), config.seed, root=out_dir, threads=n_threads) as run_dir:
            results = work(run_dir)
    write_probe_report(run_dir, results)
    if as_json:
        print_json(results)
        return
    _print_summary(results)
    out.print(f"report: {run_dir / 'report.html'}")


def _print_summary(results: dict) -> None:
    from rich import box
    from rich.table import Table

    from ..report.html import interval as _ci

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
                      _ci(a["asr"]), twin)
        out.print(t)
        if unreadable:
            out.print("* twin accuracy below the threshold: the model cannot read this encoding, so its "
                      "refusals there count as unclear", highlight=False)
        modes = "   ".join(f"{m} {_ci(r['asr'])}" for m, r in d["modes"].items())
        out.print(f"per mode: {modes}", highlight=False)
        out.print(f"adaptive ASR {_ci(d['adaptive_asr'])}   over-refusal on benign twins "
                  f"{_ci(d['over_refusal']['rate'])}", highlight=False)
    w = results.get("whitebox") or {}
    if w.get("skipped"):
        out.print(f"white-box: {w['note']}", highlight=False)
    elif w:
        extra = f", prefill greedy leak share {w['share_prefill_greedy']:.2f}" if w.get("target") else ""
        out.print(f"white-box: mean refusal log-odds {w['mean_refusal_log_odds']:.2f}{extra}", highlight=False)
    tp = results["throughput"]
    if tp.get("prompts_per_s"):
        tok = f", {tp['tokens_per_s']:.1f} tokens/s" if tp.get("tokens_per_s") else ""
        out.print(f"throughput: {tp['prompts']} prompts, {tp['prompts_per_s']:.2f} prompts/s{tok}", highlight=False)


def _compare(run_a: str, run_b: str, out_dir: str, as_json: bool) -> None:
    from ..probes.suite import compare
    from ..runs import start_run, write_json

    result = compare(run_a, run_b)
    run_dir = start_run("probe-compare", {"run_a": run_a, "run_b": run_b}, None, root=out_dir)
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
        out.print(f"[yellow]note:[/] {note}")
    err.print(f"run directory: {run_dir}")


def _judge(path: Path, policy: str | None, seed: int | None, threshold: float | None, out_dir: str,
           as_json: bool) -> None:
    from ..judges import append_samples
    from ..probes.suite import load_config, rejudge
    from ..report.probe import write_probe_report
    from ..runs import read_jsonl, start_run, write_json

    if not path.is_file():
        raise UserError(f"no replies file {path}")
    if policy is None or seed is None or threshold is None:  # a run's samples: take its settings
        try:
            run_config = load_config(path.parent)
        except UserError:
            run_config = None
        if policy is None:
            if run_config is None:
                raise UserError("give --policy (a built-in name or a TOML file) to judge the replies under")
            policy = run_config.policy
        if seed is None:
            seed = run_config.seed if run_config else 0
        if threshold is None:
            threshold = run_config.capability_threshold if run_config else 0.5
    rows, summary = rejudge([row for _, row in read_jsonl(path)], policy, seed=seed, capability_threshold=threshold)
    run_dir = start_run("probe-judge", {"replies": str(path), "policy": policy, "seed": seed,
                                        "capability_threshold": threshold}, seed, root=out_dir)
    append_samples(run_dir / "samples.jsonl", rows)
    summary.update(replies=str(path), model=f"replies from {path}", run_dir=str(run_dir))
    write_json(run_dir / "results.json", summary)
    write_probe_report(run_dir, summary, rows)
    if as_json:
        print_json(summary)
        return
    summary.setdefault("throughput", {})
    _print_summary(summary)
    ch = summary["changed"]
    if ch["of"]:
        out.print(f"verdicts changed: {ch['n']} of {ch['of']} {ch['transitions'] or ''}", highlight=False)
    out.print(f"report: {run_dir / 'report.html'}")
