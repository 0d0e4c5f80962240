"""``fissure frontier MODEL``: quality against diversity over decoding settings, with the Pareto front."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app
from .common import (BackendOption, DtypeOption, JsonOption, ModelArgument, OutDirOption, ServedModelOption,
                     ThreadsOption, err, guard, http_options, out, print_json)


@app.command(epilog="Examples: fissure frontier smollm2;  fissure frontier smollm2 --prompts prompts.jsonl "
                    "--grid grid.toml --json;  fissure frontier runs/train-.../checkpoint --reference smollm2")
@guard
def frontier(
    model: ModelArgument = "smollm2",
    prompts: Annotated[Path, typer.Option(help="One prompt per line, or JSONL with \"prompt\" and optional "
                                               "\"reference\" (a human continuation). [default: prompts and "
                                               "continuations from --domain]")] = None,
    grid: Annotated[Path, typer.Option(help="Decoding settings: a TOML file with [settings.NAME] tables and/or a "
                                            "[grid] of value lists (docs/frontier.md). [default: greedy, beam 4, "
                                            "pure sampling, t=0.7, top-k 40, top-p 0.9 and 0.95, repetition "
                                            "penalty 1.2]")] = None,
    reference: Annotated[str, typer.Option(help="The model that scores quality (log-likelihood per token). "
                                                "[default: MODEL itself]")] = None,
    domain: Annotated[str, typer.Option(help="Text domain the default prompts come from. [default: news]")] = None,
    n_prompts: Annotated[int, typer.Option(help="Prompts taken from --domain. [default: 24]")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per continuation. [default: 64]")] = None,
    quality: Annotated[str, typer.Option(help="Quality axis of the front: loglik | bleu | chrf (bleu and chrf "
                                              "need references). [default: loglik]")] = None,
    diversity: Annotated[str, typer.Option(help="Diversity axis: distinct_1..4 | entropy_1..4 | self_bleu. "
                                                "[default: distinct_2]")] = None,
    weight: Annotated[list[float], typer.Option("--weight", help="Weight on quality (0-1) to recommend a setting "
                                                                 "for (repeatable). [default: 0.25 0.5 0.75]")] = None,
    seed: Annotated[int, typer.Option(help="Sampling and bootstrap seed. [default: 0]")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Override any field, e.g. prompt_words=40 (repeatable).")]
    = None,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass (local models).")] = 8,
    backend: BackendOption = "auto",
    served_model: ServedModelOption = None,
    dtype: DtypeOption = "fp32",
    threads: ThreadsOption = None,
    out_dir: OutDirOption = "runs",
    as_json: JsonOption = False,
) -> None:
    """Decode the same prompts with every setting; measure quality (log-likelihood under a reference model,
    BLEU/chrF against references), diversity and degeneration with intervals over prompts; find the Pareto
    front and check Holtzman et al. 2020's orderings. See docs/frontier.md."""
    from ..backends import load
    from ..config import apply_overrides, from_dict, to_dict
    from ..diagnose.frontier import FrontierConfig, corpus_prompts, load_grid, load_prompts, run_frontier
    from ..errors import UserError
    from ..report.frontier import write_frontier_report
    from ..runs import run_directory
    from ..utils import set_threads

    given = {"model": model, "reference": reference, "prompts": str(prompts) if prompts else None, "domain": domain,
             "n_prompts": n_prompts, "max_new_tokens": max_new_tokens, "quality": quality, "diversity": diversity,
             "weights": weight, "seed": seed, "threads": threads, "batch_size": batch_size}
    config = from_dict(FrontierConfig, apply_overrides({k: v for k, v in given.items() if v is not None}, set_ or []))
    if grid is not None:
        config.settings = load_grid(grid)
    if prompts is not None:
        items = load_prompts(prompts)
    else:
        items = corpus_prompts(config.domain, config.n_prompts, config.prompt_words, config.reference_words)
    if config.quality != "loglik" and not all(i.reference is not None for i in items):
        raise UserError(f"--quality {config.quality} needs references: give --prompts as JSONL with \"reference\"")
    if len(items) < 2:
        raise UserError(f"the frontier needs at least 2 prompts to measure diversity, got {len(items)}")
    n_threads = set_threads(config.threads)
    lm = load(model, backend=backend, model=served_model, batch_size=batch_size, dtype=dtype,
              **http_options(model, None, None, None))
    scorer = lm if not config.reference or config.reference == model else \
        load(config.reference, batch_size=batch_size, dtype=dtype, **http_options(config.reference, None, None, None))
    if not scorer.capabilities.has_logprobs:
        raise UserError(f"{scorer.capabilities.name} gives no log-probabilities: choose another --reference")
    with run_directory("frontier", to_dict(config), config.seed, root=out_dir, threads=n_threads) as run_dir:
        err.print(f"run directory: {run_dir}")
        results = run_frontier(config, items, lm, scorer, run_dir,
                               log=lambda m: err.print(m, highlight=False, markup=False))
        results["run_dir"] = str(run_dir)
        write_frontier_report(run_dir, results)
    if as_json:
        print_json(results)
        return
    for r in results["settings"]:
        out.print(f"{r['name']:>22}  log-lik/token {_est(r['loglik_per_token']):7.3f}  distinct-2 "
                  f"{_est(r['distinct_2']):.3f}  self-BLEU {_est(r['self_bleu']):5.1f}  loops "
                  f"{100 * _est(r['loops']):3.0f}%  {r['tokens_per_second'] or 0:6.1f} tok/s"
                  f"{'  front' if r['on_front'] else ''}", soft_wrap=True)
    for line in results["summary"]:
        out.print(line, soft_wrap=True)
    out.print(f"report: {run_dir / 'report.html'}")


def _est(iv: dict | None) -> float:
    return iv["estimate"] if iv else float("nan")
