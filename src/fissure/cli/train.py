"""``fissure train CONFIG``: train a model on your own text."""

from __future__ import annotations

import importlib
from pathlib import Path

import typer

from ..config import apply_overrides, load_toml, to_dict
from ..errors import ConfigError
from ..runs import run_directory
from .app import app
from .common import JsonOption, err, guard, out, print_json

# The config's top-level ``task`` picks what is trained. "causal_lm" (the default) is the GPT (or
# LSTM) path below; "translation" trains an encoder-decoder and scores its test split (cli/translate.py);
# every other task names a module with load_config(raw), check_resume(cfg, resume) and
# train(cfg, run_dir, resume) -> summary.
TASKS = {"mlm": "fissure.train.mlm_pipeline"}


@app.command(epilog="Example: fissure train examples/tiny-gpt.toml --set train.max_steps=200 --set train.lr=3e-4")
@guard
def train(
    config: Path = typer.Argument(..., help="TOML config: task (causal_lm | translation), [data], [tokenizer], [model], [train]."),
    set_: list[str] = typer.Option(None, "--set", help="Override a config field, e.g. train.lr=3e-4 (repeatable)."),
    resume: Path = typer.Option(None, help="Continue from a checkpoint written by an earlier run."),
    out_dir: str = typer.Option(None, help="Where run directories go (default: the config's out_dir)."),
    as_json: JsonOption = False,
) -> None:
    """Train a model from a TOML config; the run directory gets the checkpoint and results."""
    from ..runs import start_run
    from ..train.distributed import world_from_env
    from ..train.pipeline import check_resume, load_run_config, run_config_dict, train_from_config

    raw = apply_overrides(load_toml(config), set_ or [])
    task = raw.pop("task", "causal_lm")
    if task == "translation":  # an encoder-decoder model on sentence pairs, then its test split scored
        from .translate import train_translation_run

        return train_translation_run(raw, resume, out_dir, as_json)
    if task != "causal_lm":
        return train_task(task, raw, resume, out_dir, as_json)
    cfg = load_run_config(raw)
    if resume:
        check_resume(cfg, resume)  # before the run directory: a checkpoint this config cannot continue is an error
        cfg.tokenizer.path = str(resume)
    world = world_from_env()  # one process, or one of torchrun's
    if world.size == 1:
        with run_directory("train", run_config_dict(cfg), cfg.seed, root=out_dir or cfg.out_dir,
                           threads=cfg.train.threads) as run_dir:
            err.print(f"run directory: {run_dir}")
            _, summary = train_from_config(cfg, run_dir, resume=resume)
    else:
        made = start_run("train", run_config_dict(cfg), cfg.seed, root=out_dir or cfg.out_dir, threads=cfg.train.threads) \
            if world.is_main else None
        run_dir = Path(world.broadcast(str(made) if made else None))
        cfg.train.progress = cfg.train.progress and world.is_main
        if world.is_main:
            err.print(f"run directory: {run_dir} ({world.size} processes)")
        _, summary = train_from_config(cfg, run_dir, resume=resume, world=world)
        if not world.is_main:
            return
    summary["run_dir"] = str(run_dir)
    if as_json:
        print_json(summary)
    else:
        out.print(f"trained {summary['steps']} steps, val loss {summary['val_loss_before']:.3f} -> "
                  f"{summary['val_loss']:.3f}; checkpoint: {summary['checkpoint']}")


def train_task(task: str, raw: dict, resume: Path | None, out_dir: str | None, as_json: bool) -> None:
    """``fissure train`` for a task of :data:`TASKS` (one process)."""
    if task not in TASKS:
        raise ConfigError(f"task must be one of causal_lm, {', '.join(TASKS)}, translation; not {task!r}")
    module = importlib.import_module(TASKS[task])
    cfg = module.load_config(raw)
    if resume:
        module.check_resume(cfg, resume)
    with run_directory("train", to_dict(cfg), cfg.seed, root=out_dir or cfg.out_dir,
                       threads=cfg.train.threads) as run_dir:
        err.print(f"run directory: {run_dir}")
        summary = module.train(cfg, run_dir, resume=resume)
    summary["run_dir"] = str(run_dir)
    if as_json:
        print_json(summary)
    else:
        out.print(f"trained {task} {summary['steps']} steps, val loss {summary['val_loss_before']:.3f} -> "
                  f"{summary['val_loss']:.3f}; checkpoint: {summary['checkpoint']}")
