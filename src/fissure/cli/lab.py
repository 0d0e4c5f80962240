"""``fissure lab``: model organisms of jailbreaks (competing objectives, mismatched generalization)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import UserError
from .app import command_group
from .common import JsonOption, err, guard, out, print_json, styled

lab_app = command_group("lab", "Model organisms of jailbreaks: train, attack and report in minutes on a CPU.")


@lab_app.command("list")
@guard
def list_studies(as_json: JsonOption = False) -> None:
    """The built-in studies and what each shows."""
    from ..lab.study import builtin_names, load_study
    from ..lab.tuned import TunedStudy

    studies = {name: load_study(name) for name in builtin_names()}
    if as_json:
        print_json({name: {"shows": s.shows, "points": len(s.points()), "seeds": s.seeds} for name, s in studies.items()})
        return
    for name, s in studies.items():
        n = len(s.points())
        what = "method" if isinstance(s, TunedStudy) else "point"
        out.print(styled((name, "bold"), f" ({n} {what}{'s' if n != 1 else ''} x {len(s.seeds)} seeds): {s.shows}"),
                  highlight=False)


@lab_app.command("findings", epilog="Example: fissure lab findings runs/lab-A --check runs/lab-B")
@guard
def findings_cmd(
    run_dir: Path = typer.Argument(..., help="A finished lab run directory."),
    check: list[Path] = typer.Option(None, "--check", help="Another run of the same study (another thread count or "
                                                           "machine): a finding is stated only where every run "
                                                           "agrees (repeatable)."),
) -> None:
    """Print the README's block for a finished run: the ASR table with the between-seed spread and
    the findings that hold pooled and in most seeds alone (and in every --check run)."""
    from ..report.lab import findings_markdown
    from ..runs import read_json, read_meta

    def read(path: Path) -> tuple[dict, dict | None]:
        if not (path / "results.json").is_file():
            raise UserError(f"{path} is not a finished lab run directory (no results.json)")
        results = read_json(path / "results.json")
        if not isinstance(results, dict) or "points" not in results:
            raise UserError(f"{path} is not a synthetic-world lab run (a safety-tune study's findings are in its "
                            "report)")
        return results, read_meta(path)

    results, meta = read(run_dir)
    print(findings_markdown(results, meta, [read(c) for c in check or []]))


@lab_app.command("run", epilog="Examples: fissure lab run;  fissure lab run studies/coverage.toml --seeds 3;  "
                               "fissure lab run --resume runs/lab-20250101-120000")
@guard
def run(
    study: str = typer.Argument("jailbroken", help="A built-in study name (see `fissure lab list`) or a TOML file."),
    seeds: int = typer.Option(None, "--seeds", help="Run seeds 0..N-1 instead of the study's seeds."),
    set_: list[str] = typer.Option(None, "--set", help="Override a study field, e.g. stage1.steps=300 (repeatable)."),
    resume: Path = typer.Option(None, "--resume", help="Finish an interrupted run directory (its config is reused)."),
    out_dir: str = typer.Option("runs", help="Where run directories go."),
    threads: int = typer.Option(None, help="Torch threads per task (default: the study's)."),
    executor: str = typer.Option(
        "serial", "--executor",
        help="Where the seeds run, one task each: serial (this process), local[:N] (a pool of N processes; "
             "default N = cores / threads), ray (a local Ray) or ray://host:port (a Ray cluster; "
             "pip install 'fissure\\[scale]'). Results are the same on each. Default serial: on a 2-core "
             "machine a pool was not faster (benchmarks/README.md)."),
    as_json: JsonOption = False,
) -> None:
    """Train the organisms of a study, attack them, and write results.json and report.html."""
    from ..config import load_toml
    from ..executors import open_executor, parse_executor
    from ..utils import default_threads
    from ..lab.runner import run_study
    from ..lab.study import MAX_SEEDS, load_study, study_dict
    from ..report.lab import write_lab_report
    from ..runs import start_run

    from ..lab.tuned import TunedStudy

    where = parse_executor(executor)
    if resume is not None:
        if not (resume / "config.toml").is_file():
            raise UserError(f"{resume} is not a lab run directory (no config.toml)")
        if set_ or seeds is not None:
            raise UserError("--resume reuses the run's own config: drop --set and --seeds")
        spec = load_study(load_toml(resume / "config.toml"))
        run_dir = resume
    else:
        overrides = list(set_ or [])
        if seeds is not None:
            if not 1 <= seeds <= MAX_SEEDS:
                raise UserError(f"--seeds must be between 1 and {MAX_SEEDS}, not {seeds}")
            overrides.append(f"seeds={list(range(seeds))}")
        if threads is not None:
            overrides.append(f"threads={threads}")
        spec = load_study(study, overrides)
        run_dir = None
    if isinstance(spec, TunedStudy):
        _run_tuned(spec, run_dir, where, out_dir, as_json)
        return
    with open_executor(where, cpus_per_task=spec.threads or default_threads()) as pool:  # a Ray that cannot start: no run dir
        if run_dir is None:
            run_dir = start_run("lab", study_dict(spec), spec.seeds[0], root=out_dir, threads=spec.threads)
        err.print(f"run directory: {run_dir}")
        results = run_study(spec, run_dir, executor=pool, progress=not as_json,
                            log=lambda m: err.print(m, highlight=False, soft_wrap=True))
    write_lab_report(run_dir, spec, results)
    results["run_dir"] = str(run_dir)
    if as_json:
        print_json(results)
        return
    for p in results["points"]:
        out.print(styled("\n", (p["label"], "bold")))
        for attack, r in p["attacks"].items():
            a, b = r["asr"], r["benign"]["accuracy"]
            out.print(f"  {attack:32s} ASR {a['estimate']:.2f} [{a['low']:.2f}, {a['high']:.2f}]  "
                      f"benign acc {b['estimate']:.2f}  refused/violated/unclear "
                      f"{r['counts']['refused']}/{r['counts']['violated']}/{r['counts']['unclear']}", highlight=False)
        missed = [f for f in p["findings"] if f["observed"] != f["expected"]]
        for f in missed:
            out.print(styled("  ", ("not as expected:", "red"), f" {f['effect']} ({f['detail']})"))
    out.print(f"\nreport: {run_dir / 'report.html'}")


def _run_tuned(spec, run_dir: Path | None, where, out_dir: str, as_json: bool) -> None:
    """A safety-tune study: one process (its tuning runs use the study's threads)."""
    from ..lab.study import study_dict
    from ..lab.tuned import check_study
    from ..lab.tuned_run import run_tuned_study
    from ..report.tuned import write_tuned_report
    from ..runs import start_run

    if where.kind != "serial":
        raise UserError(f"the {spec.name} study runs in this process: drop --executor {where}")
    check_study(spec)
    if run_dir is None:
        run_dir = start_run("lab", study_dict(spec), spec.seeds[0], root=out_dir, threads=spec.threads)
    err.print(f"run directory: {run_dir}")
    results = run_tuned_study(spec, run_dir, log=lambda m: err.print(m, highlight=False, soft_wrap=True))
    write_tuned_report(run_dir, spec, results)
    results["run_dir"] = str(run_dir)
    if as_json:
        print_json(results)
        return
    base, tuned = results["base"], results["by_method"]
    for name, row in base["attacks"].items():
        cells = "  ".join(f"{m} {v['attacks'][name]['asr']['estimate']:.2f} [{v['attacks'][name]['asr']['low']:.2f}, "
                          f"{v['attacks'][name]['asr']['high']:.2f}]" for m, v in tuned.items())
        a = row["asr"]
        out.print(f"  {name:28s} base {a['estimate']:.2f} [{a['low']:.2f}, {a['high']:.2f}]  {cells}", highlight=False)
    cells = "  ".join(f"{m} {v['over_refusal']['estimate']:.2f}" for m, v in tuned.items())
    out.print(f"  {'over-refusal (benign)':28s} base {base['over_refusal']['estimate']:.2f}  {cells}", highlight=False)
    out.print(f"\nreport: {run_dir / 'report.html'}")
