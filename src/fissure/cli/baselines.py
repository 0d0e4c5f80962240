"""``fissure baselines --data NAME``: n-gram, LSTM and GPT baselines (and any given model) on one
corpus's held-out documents, in bits per byte with bootstrap intervals."""

from __future__ import annotations

import typer

from .app import app
from .common import JsonOption, OutDirOption, ThreadsOption, err, guard, out, print_json


def _orders(text: str) -> list[int]:
    from ..errors import ConfigError

    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--orders must be comma-separated integers (e.g. 1,2,3,4,5), not {text!r}") from None


@app.command(epilog="Examples: fissure baselines --data code\n\n"
             "fissure baselines --data news --max-bytes 300000 --gpt-steps 0 --model runs/train-.../checkpoint --json")
@guard
def baselines(
    data: str = typer.Option("code", help="A data domain (see `fissure data list`)."),
    model: list[str] = typer.Option(None, "--model", help="Also score this model spec (repeatable; not trained)."),
    orders: str = typer.Option("1,2,3,4,5", help="Byte n-gram orders (interpolated Kneser-Ney), comma-separated."),
    max_bytes: int = typer.Option(1_000_000, help="Cap on the corpus read (training and held-out)."),
    max_eval_bytes: int = typer.Option(100_000, help="Cap on the held-out text scored (whole documents)."),
    lstm_steps: int = typer.Option(200, help="Training steps of the LSTM baseline (0: none)."),
    gpt_steps: int = typer.Option(200, help="Training steps of the GPT baseline (0: none)."),
    block_size: int = typer.Option(128, help="Context of the neural baselines (training and scoring window)."),
    seed: int = typer.Option(0, help="Seed of the split and of training."),
    threads: ThreadsOption = 0,
    out_dir: OutDirOption = "runs",
    as_json: JsonOption = False,
) -> None:
    """Train baselines on a corpus's training documents and score them on its held-out documents."""
    from ..diagnose.baselines import BaselinesConfig, check_inputs, run_baselines
    from ..runs import run_directory, write_json
    from ..utils import set_threads

    cfg = BaselinesConfig(data=data, max_bytes=max_bytes, max_eval_bytes=max_eval_bytes, orders=_orders(orders),
                          lstm_steps=lstm_steps, gpt_steps=gpt_steps, block_size=block_size, models=list(model or []),
                          seed=seed, threads=threads)
    check_inputs(cfg)
    n_threads = set_threads(threads)
    from dataclasses import asdict

    with run_directory("baselines", asdict(cfg), seed, root=out_dir, threads=n_threads) as run_dir:
        err.print(f"run directory: {run_dir}")
        result = run_baselines(cfg, run_dir, log=err.print)
        result["run_dir"] = str(run_dir)
        write_json(run_dir / "results.json", result)
    if as_json:
        print_json(result)
        return
    from rich.table import Table

    t = Table(title=f"bits per byte on {result['eval_documents']} held-out '{data}' documents "
                    f"({result['eval_bytes']:,} bytes; trained on {result['train_bytes']:,})")
    t.add_column("model", overflow="fold")
    t.add_column("bits/byte", justify="right")
    t.add_column("95% interval", justify="right")
    t.add_column("seconds", justify="right")
    for row in result["rows"]:
        b = row["bits_per_byte"]
        t.add_row(row["model"], f"{b['estimate']:.3f}", f"{b['low']:.3f}-{b['high']:.3f}", f"{row['seconds']:.1f}")
    out.print(t)
