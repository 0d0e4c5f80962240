"""``fissure info CHECKPOINT``: what a checkpoint holds."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app
from .common import JsonOption, guard, out, print_json, styled


@app.command(epilog="Example: fissure info runs/train-.../checkpoint")
@guard
def info(
    checkpoint: Path = typer.Argument(..., help="A checkpoint directory."),
    as_json: JsonOption = False,
) -> None:
    """Show a checkpoint's model config, size, tokenizer and training state."""
    from ..train.checkpoint import load_checkpoint, load_trainer_state, read_model_config

    model, tok = load_checkpoint(checkpoint)
    data = read_model_config(checkpoint)
    summary = {"family": data["family"], "config": data["config"], "parameters": model.num_params(non_embedding=False),
               "tokenizer": {"kind": tok.name, "vocab_size": tok.vocab_size}}
    if (checkpoint / "trainer_state.json").is_file():
        state, _ = load_trainer_state(checkpoint)  # every field checked: a corrupted state is a one-line error
        summary["training"] = {"step": state["step"], "best_val_loss": state.get("best_val_loss"),
                               "resumable": (checkpoint / "optimizer.safetensors").is_file()}
    if as_json:
        print_json(summary)
        return
    out.print(styled((str(checkpoint), "bold"), f": {summary['family']} with {summary['parameters']:,} parameters"))
    for k, v in summary["config"].items():
        out.print(f"  {k} = {v}")
    out.print(f"tokenizer: {tok.name}, {tok.vocab_size} tokens")
    if "training" in summary:
        t = summary["training"]
        out.print(f"training: step {t['step']}, best val loss {t['best_val_loss']}, resumable {t['resumable']}")
