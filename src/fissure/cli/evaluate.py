"""``fissure eval MODEL --text FILE``: perplexity and bits per byte."""

from __future__ import annotations

from pathlib import Path

import typer

from ..runs import start_run, write_json
from . import app
from .common import err, guard, out, print_json


@app.command("eval", epilog="Example: fissure eval runs/train-.../checkpoint --text data/val.txt --window 256 --stride 128")
@guard
def evaluate(
    model: Path = typer.Argument(..., help="A checkpoint directory."),
    text: list[Path] = typer.Option(..., "--text", help="Text file(s) or folder(s) (.txt, .jsonl) to score."),
    window: int = typer.Option(None, help="Tokens per window (default: the model's context)."),
    stride: int = typer.Option(None, help="Tokens scored per window (default: = window, disjoint windows)."),
    batch_size: int = typer.Option(8, help="Windows per forward pass (results do not depend on it)."),
    threads: int = typer.Option(0, help="Torch threads (0 = free cores)."),
    out_dir: str = typer.Option("runs", help="Where the run directory goes."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Score text: token cross-entropy, perplexity and tokenizer-independent bits per byte."""
    from ..metrics.lm import evaluate_texts
    from ..text.corpus import read_documents
    from ..text.tokenizers import load_tokenizer
    from ..train.checkpoint import load_model_from_checkpoint
    from ..utils import set_threads

    n_threads = set_threads(threads)
    lm = load_model_from_checkpoint(model)
    tok = load_tokenizer(model)
    docs = read_documents(text, normalize=None)
    window = window or lm.max_positions
    stride = stride or window
    run_dir = start_run("eval", {"model": str(model), "text": [str(t) for t in text], "window": window,
                                 "stride": stride, "batch_size": batch_size}, None, root=out_dir, threads=n_threads)
    result = evaluate_texts(lm, tok.encode, [d.text for d in docs], window=window, stride=stride,
                            prefix_token=tok.eos_id, batch_size=batch_size, progress=not as_json,
                            tokenizer=f"{tok.name}-{tok.vocab_size}")
    result["run_dir"] = str(run_dir)
    write_json(run_dir / "results.json", result)
    if as_json:
        print_json(result)
    else:
        out.print(f"perplexity {result['perplexity']:.3f}   bits/byte {result['bits_per_byte']:.4f}   "
                  f"({result['tokens']} tokens, {result['bytes']} bytes, window {window}, stride {stride})")
    err.print(f"run directory: {run_dir}")
