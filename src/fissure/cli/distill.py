"""``fissure distill TEACHER --student CONFIG --data NAME``: train a small GPT on a teacher's logits,
beside the same student trained without it, and compare their bits per byte."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError
from .app import app
from .common import JsonOption, OutDirOption, err, guard, out, print_json


@app.command(epilog="Example: fissure distill smollm2 --student examples/tiny-gpt.toml --data code "
                    "--set model.n_layer=4 --set train.max_steps=300")
@guard
def distill(
    teacher: Annotated[str, typer.Argument(help="A local model: a name (smollm2), a fissure checkpoint, an HF Llama "
                                                "directory or a GGUF file.", show_default=False)] = None,
    student: Annotated[Path, typer.Option(help="The student's TOML: a `fissure train` config whose \\[model] and "
                                               "\\[train] are used (the tokenizer is the teacher's).")] = None,
    data: Annotated[str, typer.Option(help="A domain of `fissure data list` (code, docs, ...) or a text file / "
                                           "folder (./docs for a folder named like a domain).")] = None,
    temperature: Annotated[float, typer.Option(help="Softmax temperature T of the soft targets. [default: 2]")] = None,
    alpha: Annotated[float, typer.Option(help="Weight of the soft term (1 - alpha on the hard labels). "
                                              "[default: 0.5]")] = None,
    baseline: Annotated[bool, typer.Option("--baseline/--no-baseline", help="Also train the same student without "
                                                                            "the teacher.")] = True,
    set_: Annotated[list[str], typer.Option("--set", help="Override a field: model.n_layer=4, train.max_steps=300, "
                                                          "distill.eval_bytes=20000 (repeatable).")] = None,
    resume: Annotated[Path, typer.Option(help="Continue an interrupted distill run directory (its own "
                                              "config).")] = None,
    out_dir: OutDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Distil TEACHER into a small GPT; report both students' and the teacher's bits per byte."""
    from ..config import apply_overrides, load_toml, to_dict
    from ..runs import run_directory
    from ..tune.distill import load_distill_config, load_teacher, read_data, run_distill

    if resume is not None:
        if teacher or student or data or set_ or temperature is not None or alpha is not None:
            raise ConfigError("--resume continues a run with its own config: give no TEACHER, --student, --data, "
                              "--set, --temperature or --alpha")
        if not (resume / "config.toml").is_file():
            raise ConfigError(f"--resume: {resume} is not a distill run directory (no config.toml)")
        raw = load_toml(resume / "config.toml")
        raw.get("model", {}).pop("vocab_size", None)
    else:
        if not teacher or student is None or not data:
            raise ConfigError("give TEACHER, --student CONFIG and --data NAME (or --resume RUN_DIR)")
        raw = load_toml(student)
        raw["distill"] = {**raw.get("distill", {}), "teacher": teacher, "data": data,
                          **({"temperature": temperature} if temperature is not None else {}),
                          **({"alpha": alpha} if alpha is not None else {}),
                          **({} if baseline else {"baseline": False})}
        touched = [s.split("=", 1)[0].strip() for s in set_ or []]
        replaced = [t for t in touched if t.split(".")[0] in ("data", "tokenizer") or t == "model.vocab_size"]
        if replaced:
            raise ConfigError(f"--set {replaced[0]}: a distilled student takes its data from --data and its tokenizer "
                              "and vocabulary from the teacher")
        raw = apply_overrides(raw, set_ or [])
    cfg = load_distill_config(raw)
    cfg.train.progress = cfg.train.progress and not as_json
    docs = read_data(cfg.distill.data, cfg.distill.max_bytes)  # checked before the run directory exists
    lm = load_teacher(cfg)
    log = lambda m: err.print(m, highlight=False, markup=False)  # noqa: E731
    saved = to_dict(cfg)
    saved["model"]["vocab_size"] = lm.model.config.vocab_size
    if resume is not None:
        err.print(f"resuming in {resume}")
        results = run_distill(cfg, lm, docs, resume, log)
        run_dir = resume
    else:
        with run_directory("distill", saved, cfg.seed, root=out_dir or cfg.out_dir, threads=cfg.train.threads) \
                as run_dir:
            err.print(f"run directory: {run_dir}")
            results = run_distill(cfg, lm, docs, run_dir, log)
    results["run_dir"] = str(run_dir)
    if as_json:
        print_json(results)
        return
    rows = [(arm, r["bits_per_byte"], r["bits_per_byte_ci"]) for arm, r in results["arms"].items()]
    rows.append(("teacher", results["teacher_scores"]["bits_per_byte"], results["teacher_scores"]["bits_per_byte_ci"]))
    for name, bpb, ci in rows:
        interval = f" [{ci['low']:.4f}, {ci['high']:.4f}]" if ci else ""
        out.print(f"{name:10s} bits/byte {bpb:.4f}{interval}", highlight=False)
    diff = results.get("distilled_minus_baseline_bpb")
    if diff:
        out.print(f"distilled - baseline: {diff['estimate']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}] "
                  "bits/byte (paired bootstrap over held-out passages)", highlight=False)
    out.print(f"run directory: {run_dir}", highlight=False, markup=False)
