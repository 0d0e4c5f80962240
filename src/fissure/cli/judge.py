"""``fissure judge``: the registered detectors and judges that turn replies into verdicts."""

from __future__ import annotations

import typer

from ..errors import UserError
from .app import command_group
from .common import JsonOption, guard, out, print_json

judge_app = command_group("judge", "Judges: violation and refusal detectors, and the three-way judges made of them.")


@judge_app.command("list")
@guard
def list_judges(as_json: JsonOption = False) -> None:
    """Every registered detector and judge: name, kind (violation, refusal, judge) and what it does."""
    from .. import judges, lab  # noqa: F401  (importing them registers their judges)

    entries = judges.registered()
    if as_json:
        print_json({"judges": [{"name": e.name, "kind": e.kind, "description": e.description} for e in entries]})
        return
    from rich.table import Table

    t = Table(title="fissure judges and detectors")
    t.add_column("name", no_wrap=True)
    t.add_column("kind", no_wrap=True)
    t.add_column("description", overflow="fold")
    for e in entries:
        t.add_row(e.name, e.kind, e.description)
    out.print(t)


def _mapping(text: str | None, flag: str) -> dict[str, str] | None:
    if not text:
        return None
    pairs = [p.partition("=") for p in text.split(",") if p.strip()]
    if not pairs or any(not k.strip() or not sep for k, sep, _ in pairs):
        raise UserError(f"{flag} takes name=value pairs separated by commas, e.g. {flag} reply=response,label=human")
    return {k.strip(): v.strip() for k, _, v in pairs}


@judge_app.command("validate", epilog="Example: fissure judge validate pyrit:refusal_scorer/refusal.csv --split test "
                                      "--json   (pyrit:PATH reads PyRIT's labelled sets in place)")
@guard
def validate(
    labels_file: str = typer.Argument(..., help="Labelled replies: fissure JSONL, PyRIT CSV (pyrit:PATH inside "
                                                "PyRIT's scorer_evals), or any CSV/JSONL with --columns and --labels."),
    fmt: str = typer.Option(None, "--format", help="fissure | pyrit-refusal | pyrit-objective | csv | jsonl "
                                                   "(default: from the path)."),
    judge: str = typer.Option("rules", help="rules (the probe judge) | anchored | lexicon (one refusal detector) | "
                                            "learned:NAME (fitted with fissure judge fit)."),
    split: str = typer.Option("test", help="test (report this) | dev (tune on this) | all."),
    columns: str = typer.Option(None, help="Column mapping for csv/jsonl, e.g. reply=response,label=human,"
                                           "request=prompt."),
    label_map: str = typer.Option(None, "--labels", help="Label mapping for csv/jsonl, e.g. 1=refused,0=complied."),
    confidence: float = typer.Option(0.95, help="Confidence of every interval."),
    as_json: JsonOption = False,
) -> None:
    """Agreement of a judge with human labels: agreement, Cohen's kappa and macro-F1 with bootstrap
    intervals, per-class precision/recall/F1 and the confusion matrix, on a frozen dev/test split."""
    from ..probes.judge_validation import validate as run_validation
    from ..judges.labelled import read_labelled
    if not 0 < confidence < 1:
        raise UserError(f"--confidence must be between 0 and 1 (exclusive), not {confidence}")
    labelled = read_labelled(labels_file, fmt, columns=_mapping(columns, "--columns"),
                             labels=_mapping(label_map, "--labels"))
    report = run_validation(labelled, judge, split, confidence=confidence)
    if as_json:
        print_json(report)
        return
    from rich.table import Table

    def iv(d: dict) -> str:
        return f"{d['estimate']:.3f} [{d['low']:.3f}, {d['high']:.3f}]"

    out.print(f"{report['judge']} on {report['file']} ({report['format']}, split {split}: {report['n']} of "
              f"{report['rows_in_file']} rows, {report['replies_per_second']:,.0f} replies/s)",
              highlight=False, markup=False)
    out.print(f"agreement {iv(report['agreement'])}   kappa {iv(report['kappa'])}   macro-F1 {iv(report['macro_f1'])}",
              highlight=False, markup=False)
    t = Table(title="per class")
    for column in ("class", "precision", "recall", "F1", "human", "judge"):
        t.add_column(column)
    for c in report["per_class"]:
        t.add_row(c["name"], iv(c["precision"]), iv(c["recall"]), f"{c['f1']:.3f}", str(c["support"]),
                  str(c["judged"]))
    out.print(t)
    cm = Table(title="confusion (rows: human label, columns: judge)")
    cm.add_column("")
    classes = report["confusion"]["classes"]
    for c in classes:
        cm.add_column(c)
    for c, row in zip(classes, report["confusion"]["matrix"]):
        cm.add_row(c, *map(str, row))
    out.print(cm)
    kinds = report.get("unclear_kind_agreement")
    if kinds:
        by = ", ".join(f"{k} {v['agree']}/{v['n']}" for k, v in kinds["by_kind"].items())
        out.print(f"unclear kinds: {kinds['agree']} of {kinds['n']} replies both call unclear get the human's kind "
                  f"({by})", highlight=False, markup=False)


@judge_app.command("fit", epilog="Example: fissure judge fit refusal-smollm2 pyrit:refusal_scorer/refusal.csv "
                                 "pyrit:refusal_scorer/refusal_extra.csv --model smollm2")
@guard
def fit(
    name: str = typer.Argument(..., help="Name of the judge (then --judge learned:NAME)."),
    labels_files: list[str] = typer.Argument(..., help="Labelled sets of one scheme (as for validate); only their "
                                                       "dev rows are used."),
    model: str = typer.Option("smollm2", help="Model whose hidden states are the features (registry name or path)."),
    fmt: str = typer.Option(None, "--format", help="Format of every file (default: from each path)."),
    seed: int = typer.Option(0, help="Seed of the cross-validation folds."),
    threads: int = typer.Option(0, help="torch threads (0: free cores)."),
    as_json: JsonOption = False,
) -> None:
    """Fit a learned offline judge (logistic regression on a model's hidden states) on the dev split
    of labelled sets; score it on their test split with fissure judge validate --judge learned:NAME."""
    from ..backends import load
    from ..judges.labelled import read_labelled
    from ..judges.learned import NAME, fit_learned_judge
    from ..utils import check_threads, set_threads

    if not NAME.fullmatch(name):
        raise UserError(f"a judge name is letters, digits, '_', '.' and '-' (up to 64), not {name!r}")
    try:
        check_threads(threads, "--threads")
    except ValueError as exc:
        raise UserError(str(exc)) from None
    sets = [read_labelled(f, fmt) for f in labels_files]
    schemes = {s.scheme for s in sets}
    if len(schemes) > 1:
        raise UserError(f"the files hold labels of different schemes ({', '.join(sorted(schemes))}): fit one judge "
                        "per scheme")
    rows = [r for s in sets for r in s.select("dev")]
    set_threads(threads)
    judge, fitted = fit_learned_judge(name, load(model), model, rows, sets[0].scheme, sets[0].classes,
                                      [s.path for s in sets], seed=seed)
    directory = judge.save()
    summary = {"name": name, "directory": str(directory), "scheme": judge.scheme, **fitted}
    if as_json:
        print_json(summary)
        return
    out.print(f"fitted learned:{name} on {fitted['rows']} dev rows ({judge.scheme}): cross-validated accuracy "
              f"{fitted['cv_accuracy']:.3f} (C={fitted['C']:.3g}); saved in {directory}", highlight=False, markup=False)
