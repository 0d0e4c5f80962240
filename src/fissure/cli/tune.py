"""``fissure tune``: fine-tune any local model (LoRA or full) on text, chats, pairs, preferences or
labelled texts; ``fissure tune merge``: fold an adapter into a full checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import UserError
from .app import ModelFirstGroup, command_group
from .common import BackendOption, JsonOption, ModelArgument, OutDirOption, ThreadsOption, err, guard, out, print_json

tune_app = command_group("tune", "Fine-tune a model (LoRA or full) and write a checkpoint every verb loads.",
                         cls=ModelFirstGroup)


@tune_app.command("run", epilog="Examples: fissure tune smollm2 --data notes.txt;  fissure tune smollm2 --data "
                                "chats.jsonl --method full --set train.max_steps=300;  fissure tune smollm2 --data "
                                "reviews.csv --text-column text --label-column label;  fissure tune --config tune.toml")
@guard
def run(
    ctx: typer.Context,
    model: ModelArgument = None,
    data: Annotated[list[str], typer.Option(help="Text file or folder, JSONL (messages / prompt+completion / "
                                                 "prompt+chosen+rejected / text+label), CSV, or a domain of "
                                                 "`fissure data list`. Repeat for a multi-task mixture.")] = None,
    weights: Annotated[str, typer.Option(help="Comma list of task weights, one per --data. [default: equal]")]
    = None,
    method: Annotated[str, typer.Option(help="lora | full. [default: lora]")] = None,
    objective: Annotated[str, typer.Option(help="auto (from the data) | causal_lm | sft | dpo | classify. "
                                                "[default: auto]")] = None,
    rank: Annotated[int, typer.Option(help="LoRA rank. [default: 16]")] = None,
    alpha: Annotated[float, typer.Option(help="LoRA alpha (the update is scaled by alpha/rank). [default: 32]")] = None,
    targets: Annotated[str, typer.Option(help="LoRA targets: groups (attention, mlp) or module names, comma "
                                              "separated. [default: attention,mlp]")] = None,
    text_column: Annotated[str, typer.Option(help="Column with the text (labelled data). [default: text]")] = None,
    label_column: Annotated[str, typer.Option(help="Column with the label. [default: label]")] = None,
    max_length: Annotated[int, typer.Option(help="Tokens per example; longer ones are cut. [default: 256]")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the split, the batches and LoRA's init. [default: 0]")] = None,
    config: Annotated[Path, typer.Option("--config", help="A TOML file with a [tune] section.")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Override a [tune] field, e.g. train.max_steps=300 "
                                                          "(repeatable).")] = None,
    resume: Annotated[Path, typer.Option("--resume", help="Continue from a checkpoint of an earlier tune run "
                                                          "(same config).")] = None,
    backend: BackendOption = None,
    threads: ThreadsOption = None,
    out_dir: OutDirOption = "runs",
    as_json: JsonOption = False,
) -> None:
    """Fine-tune MODEL on --data; prints the run directory, the checkpoint and the losses."""
    from ..config import apply_overrides, load_toml
    from ..runs import run_directory
    from ..tune import load_tune_config, read_tuning_data, run_tune

    raw = load_toml(config) if config else {}
    section = raw.get("tune", raw)
    for name, table in (("[tune]", section), ("[tune.lora]", section.get("lora", {}) if isinstance(section, dict)
                                               else {}), ("[tune.train]", section.get("train", {})
                                                          if isinstance(section, dict) else {})):
        if not isinstance(table, dict):
            raise UserError(f"{config}: {name} must be a table")
    section = dict(section)
    flags = {"model": model, "data": data[0] if data else None, "extra_data": data[1:] if data else None,
             "weights": _weights(weights) if weights else None, "method": method,
             "objective": objective, "text_column": text_column, "label_column": label_column,
             "max_length": max_length, "seed": seed, "backend": backend}
    section.update({k: v for k, v in flags.items() if v is not None})
    lora = {"rank": rank, "alpha": alpha, "targets": [t.strip() for t in targets.split(",")] if targets else None}
    section["lora"] = {**section.get("lora", {}), **{k: v for k, v in lora.items() if v is not None}}
    if threads is not None:
        section["train"] = {**section.get("train", {}), "threads": threads}
    cfg = load_tune_config(apply_overrides(section, set_ or []))
    tuning_data = [read_tuning_data(source, cfg.text_column, cfg.label_column, cfg.labels)  # checked first
                   for source in [cfg.data, *cfg.extra_data]]
    if resume is not None and not resume.is_dir():
        raise UserError(f"--resume: no checkpoint directory {resume}")
    with run_directory("tune", {"tune": cfg.as_dict()}, cfg.seed, root=out_dir, threads=cfg.train.threads) as run_dir:
        err.print(f"run directory: {run_dir}")
        cfg.train.progress = not as_json
        summary = run_tune(cfg, tuning_data if len(tuning_data) > 1 else tuning_data[0], run_dir, resume=resume,
                           log=lambda m: err.print(m, highlight=False, markup=False))
    summary["run_dir"] = str(run_dir)
    if as_json:
        print_json({k: v for k, v in summary.items() if k != "history"})
        return
    out.print(f"{summary['objective']} ({summary['method']}), {summary['steps']} steps: val loss "
              f"{summary['val_loss_before']:.4f} -> {summary['val_loss']:.4f}", highlight=False)
    if "classification" in summary:
        acc = summary["classification"]["accuracy"]
        out.print(f"validation accuracy {acc['estimate']:.3f} [{acc['low']:.3f}, {acc['high']:.3f}]", highlight=False)
    out.print(f"checkpoint: {summary['checkpoint']}", highlight=False, markup=False)


def _weights(text: str) -> list[float]:
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise UserError(f"--weights must be comma-separated numbers, one per --data (e.g. 1,0.5); got {text!r}") from None


@tune_app.command("merge")
@guard
def merge(
    checkpoint: Annotated[Path, typer.Argument(help="An adapter checkpoint written by fissure tune.")],
    out_path: Annotated[Path, typer.Option("--out", help="Where the full checkpoint goes. "
                                                         "[default: CHECKPOINT-merged]")] = None,
    as_json: JsonOption = False,
) -> None:
    """Fold a LoRA adapter into its base and write a full checkpoint (HF layout for Llama models)."""
    from ..tune.merge import merge_adapter

    target = merge_adapter(checkpoint, out_path or checkpoint.with_name(checkpoint.name + "-merged"))
    if as_json:
        print_json({"checkpoint": str(target), "merged_from": str(checkpoint)})
        return
    out.print(f"merged checkpoint: {target}", highlight=False, markup=False)
