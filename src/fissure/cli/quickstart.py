"""``fissure quickstart``: the embedded default, end to end, on nothing but the installation."""

from __future__ import annotations

import math
from importlib import resources

import typer

from ..config import apply_overrides
from ..runs import append_jsonl, run_directory, write_json
from .app import app
from .common import JsonOption, err, guard, out, print_json, styled

PROMPTS = ["def ", "import os\n", "class "]


@app.command(epilog="Example: fissure quickstart --set train.max_steps=100")
@guard
def quickstart(
    set_: list[str] = typer.Option(None, "--set", help="Override a field of the built-in config (repeatable)."),
    out_dir: str = typer.Option("runs", help="Where the run directory goes."),
    as_json: JsonOption = False,
) -> None:
    """Train a small GPT on Python's own standard library, then sample from it (a few minutes on a CPU)."""
    import tomllib

    from ..decode import Decoding
    from ..decode import generate as decode
    from ..train.pipeline import load_run_config, run_config_dict, train_from_config

    raw = tomllib.loads(resources.files("fissure.train").joinpath("quickstart.toml").read_text())
    cfg = load_run_config(apply_overrides(raw, set_ or []))
    with run_directory("quickstart", run_config_dict(cfg), cfg.seed, root=out_dir, threads=cfg.train.threads) as run_dir:
        err.print(f"run directory: {run_dir}")
        _, summary = train_from_config(cfg, run_dir)
    from ..train.checkpoint import load_checkpoint

    model, tok = load_checkpoint(run_dir / "checkpoint")
    decodings = {
        "greedy": Decoding(max_new_tokens=48),
        "top_k": Decoding(max_new_tokens=48, do_sample=True, top_k=20, temperature=0.8, seed=cfg.seed),
        "top_p": Decoding(max_new_tokens=48, do_sample=True, top_p=0.9, temperature=0.8, seed=cfg.seed),
    }
    samples = []
    for name, decoding in decodings.items():
        gen = decode(model, [tok.encode(p) for p in PROMPTS], decoding, eos_token_id=tok.eos_id, pad_token_id=tok.eos_id)
        for p, seq in zip(PROMPTS, gen.sequences):
            samples.append({"decoding": name, "signature": decoding.signature(), "prompt": p,
                            "text": tok.decode([t for t in seq if t != tok.eos_id])})
    append_jsonl(run_dir / "samples.jsonl", samples)
    summary.update(val_perplexity_before=math.exp(summary["val_loss_before"]),
                   val_perplexity_after=math.exp(summary["val_loss"]), run_dir=str(run_dir))
    write_json(run_dir / "results.json", summary)
    if as_json:
        print_json(summary)
        return
    out.print(styled(f"\nvalidation perplexity: {summary['val_perplexity_before']:.1f} before -> ",
                     (f"{summary['val_perplexity_after']:.1f}", "bold"), f" after {summary['steps']} steps "
                     f"({summary['tokens_per_second']:,.0f} tokens/s, {summary['threads']} threads)"))
    for s in samples:
        out.print(styled("\n", (s["decoding"], "cyan"), " ", (s["signature"], "dim")))
        out.print(s["prompt"] + s["text"], highlight=False, markup=False)
    out.print(f"\nrun directory: {run_dir}")
