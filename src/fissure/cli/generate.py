"""``fissure generate MODEL --prompt ...``: decode text, streamed to the terminal."""

from __future__ import annotations

from pathlib import Path

import typer

from ..runs import append_jsonl, start_run, write_json
from . import app
from .common import err, guard, out, print_json


@app.command(epilog='Example: fissure generate runs/train-.../checkpoint --prompt "The" --top-p 0.9 --temperature 0.8')
@guard
def generate(
    model: Path = typer.Argument(..., help="A checkpoint directory."),
    prompt: list[str] = typer.Option(None, "--prompt", "-p", help="Prompt text (repeatable: one generation each)."),
    max_new_tokens: int = typer.Option(None, help="Tokens to generate per prompt (default: 64, or what fits the context)."),
    temperature: float = typer.Option(None, help="Sampling temperature (implies sampling; 0 = greedy)."),
    top_k: int = typer.Option(None, help="Sample from the k most likely tokens (implies sampling)."),
    top_p: float = typer.Option(None, help="Nucleus sampling mass (implies sampling)."),
    repetition_penalty: float = typer.Option(1.0, help="Penalise tokens already present (HF semantics; 1 = off)."),
    num_beams: int = typer.Option(1, help="Beam search width (1 = no beam search)."),
    length_penalty: float = typer.Option(1.0, help="Beam search length penalty."),
    stop: list[str] = typer.Option(None, "--stop", help="Stop string (repeatable)."),
    seed: int = typer.Option(0, help="Random seed for sampling."),
    threads: int = typer.Option(0, help="Torch threads (0 = free cores)."),
    out_dir: str = typer.Option("runs", help="Where the run directory goes."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout (no streaming)."),
) -> None:
    """Generate continuations of one or more prompts. Greedy unless a sampling option is given."""
    from ..decode import Decoding, truncate_at_stop
    from ..decode import generate as decode
    from ..errors import UserError
    from ..text.tokenizers import load_tokenizer
    from ..train.checkpoint import load_model_from_checkpoint
    from ..utils import set_threads

    if not prompt:
        raise UserError("give at least one --prompt")
    n_threads = set_threads(threads)
    lm = load_model_from_checkpoint(model)
    tok = load_tokenizer(model)
    encoded = [tok.encode(p) for p in prompt]
    if max_new_tokens is None:
        max_new_tokens = max(1, min(64, lm.max_positions - max(len(e) for e in encoded)))
    sampling = any(v is not None for v in (temperature, top_k, top_p))
    decoding = Decoding(max_new_tokens=max_new_tokens, do_sample=sampling and (temperature is None or temperature > 0),
                        temperature=1.0 if temperature in (None, 0) else temperature, top_k=top_k or 0,
                        top_p=1.0 if top_p is None else top_p, repetition_penalty=repetition_penalty,
                        num_beams=num_beams, length_penalty=length_penalty, stop=list(stop or []), seed=seed,
                        eos_token_id=tok.eos_id)
    run_dir = start_run("generate", {"model": str(model), "prompts": prompt, "decoding": decoding.to_dict()},
                        seed, root=out_dir, threads=n_threads)
    stream = not as_json and len(prompt) == 1 and num_beams == 1
    streamed: list[int] = []
    printed = 0

    def on_token(row: int, token: int) -> None:
        nonlocal printed
        if not streamed:  # the prompt, once generation has really started
            out.print(prompt[0], end="", style="bold", highlight=False, markup=False, soft_wrap=True)
        streamed.append(token)
        text = tok.decode(streamed)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            out.print(text[printed:], end="", highlight=False, markup=False, soft_wrap=True)
            printed = len(text)

    result = decode(lm, encoded, decoding, eos_token_id=tok.eos_id,
                    pad_token_id=tok.eos_id, decode_fn=tok.decode, on_token=on_token if stream else None)
    texts = [truncate_at_stop(tok.decode([t for t in seq if t != tok.eos_id]), decoding.stop) for seq in result.sequences]
    append_jsonl(run_dir / "samples.jsonl", [
        {"prompt": p, "text": t, "tokens": len(s), "finish_reason": r}
        for p, t, s, r in zip(prompt, texts, result.sequences, result.finish_reasons)
    ])
    summary = {"texts": texts, "finish_reasons": result.finish_reasons, "decoding": decoding.signature(),
               "run_dir": str(run_dir)}
    write_json(run_dir / "results.json", summary)
    if as_json:
        print_json(summary)
    elif stream:
        out.print()
    else:
        for p, t in zip(prompt, texts):
            out.print(f"[bold]{p}[/]", end="", highlight=False)
            out.print(t, highlight=False, markup=False)
    err.print(f"run directory: {run_dir}")
