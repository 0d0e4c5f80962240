"""``fissure fill-mask CHECKPOINT TEXT``: the most likely tokens for each [MASK] in a text."""

from __future__ import annotations

from pathlib import Path

import typer

from ..runs import run_directory, write_json
from .app import app
from .common import JsonOption, OutDirOption, ThreadsOption, check_text, err, guard, out, print_json, styled


@app.command("fill-mask", epilog='Example: fissure fill-mask runs/train-.../checkpoint "The [MASK] sat on the mat." '
             "--top-k 5 --json\n\nEach [MASK] is one token (one WordPiece): a word the vocabulary splits into pieces "
             "needs one [MASK] per piece, and several masks are each predicted on their own.")
@guard
def fill_mask(
    checkpoint: Path = typer.Argument(..., help="A BERT: fissure checkpoint (task = \"mlm\") or HF BERT directory."),
    text: str = typer.Argument(..., help="Text with one or more [MASK] tokens."),
    top_k: int = typer.Option(5, "--top-k", help="Predictions per mask."),
    threads: ThreadsOption = 0,
    out_dir: OutDirOption = "runs",
    as_json: JsonOption = False,
) -> None:
    """Predict the token behind each [MASK] (HF fill-mask's output: score, token, token_str, sequence)."""
    from ..backends.masked_lm import load_masked_lm
    from ..decode.fill_mask import encode_with_masks, fill_mask as predict
    from ..errors import UserError
    from ..utils import set_threads

    check_text("TEXT", text)
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, not {top_k}")
    n_threads = set_threads(threads)
    model, tokenizer = load_masked_lm(checkpoint)
    encode_with_masks(tokenizer, text)  # a text without a mask (or with too many) fails before the run directory
    with run_directory("fill-mask", {"model": str(checkpoint), "text": text, "top_k": top_k}, None, root=out_dir,
                       threads=n_threads) as run_dir:
        predictions = predict(model, tokenizer, text, top_k=top_k)
        write_json(run_dir / "results.json", {"model": str(checkpoint), "text": text, "predictions": predictions})
    if as_json:
        print_json(predictions)
    else:
        for i, row in enumerate(predictions if isinstance(predictions[0], list) else [predictions], 1):
            out.print(styled((f"[MASK] {i}", "bold")))
            for p in row:
                out.print(f"  {p['score']:.4f}  {p['token_str']:<16}  {p['sequence']}", soft_wrap=True)
    err.print(f"run directory: {run_dir}")
