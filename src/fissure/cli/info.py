"""``fissure info CHECKPOINT``: what a checkpoint holds."""

from __future__ import annotations

import json
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
    from ..text.tokenizers import load_tokenizer
    from ..train.checkpoint import load_model_from_checkpoint

    model = load_model_from_checkpoint(checkpoint)
    tok = load_tokenizer(checkpoint)
    data = json.loads((checkpoint / "config.json").read_text())
    summary = {"family": data["family"], "config": data["config"], "parameters": model.num_params(non_embedding=False),
               "tokenizer": {"kind": tok.name, "vocab_size": tok.vocab_size}}
    state_file = checkpoint / "trainer_state.json"
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        summary["training"] = {"step": state.get("step"), "best_val_loss": state.get("best_val_loss"),
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
