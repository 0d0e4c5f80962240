"""``fissure eval MODEL --text FILE``: perplexity and bits per byte, for any model spec."""

from __future__ import annotations

from pathlib import Path

import typer

from ..runs import append_jsonl, run_directory, write_json
from .app import app
from .common import (BackendOption, ConcurrencyOption, DtypeOption, JsonOption, ModelArgument, OutDirOption,
                     ServedModelOption, ThreadsOption, err, guard, http_options, out, print_json)


@app.command("eval", epilog="Examples: fissure eval runs/train-.../checkpoint --text data/val.txt --window 256 --stride 128\n\n"
             "fissure eval smollm2 --text notes.txt --json\n\n"
             "fissure eval runs/train-.../checkpoint --sources test.en --references test.de")
@guard
def evaluate(
    model: ModelArgument,
    text: list[Path] = typer.Option(None, "--text", help="Text file(s) or folder(s) (.txt, .jsonl) to score."),
    sources: Path = typer.Option(None, help="Translation: source sentences, one per line (with --references)."),
    references: Path = typer.Option(None, help="Translation: reference translations, aligned with --sources."),
    decodings: list[str] = typer.Option(None, "--decoding", help="Translation: greedy | beam4 | beam8 | sample "
                                        "(repeatable; default all)."),
    max_sentences: int = typer.Option(0, help="Translation: score only the first N sentences (0 = all)."),
    max_new_tokens: int = typer.Option(64, help="Translation: longest translation, in tokens."),
    bootstrap: int = typer.Option(1000, help="Translation: bootstrap resamples for the 95% intervals."),
    seed: int = typer.Option(0, help="Translation: seed of the bootstrap and of sampling."),
    window: int = typer.Option(None, help="Tokens per window (default: the model's context)."),
    stride: int = typer.Option(None, help="Tokens scored per window (default: = window, disjoint windows)."),
    batch_size: int = typer.Option(8, help="Windows per forward pass (results do not depend on it)."),
    backend: BackendOption = "auto",
    served_model: ServedModelOption = None,
    concurrency: ConcurrencyOption = None,
    dtype: DtypeOption = "fp32",
    threads: ThreadsOption = 0,
    out_dir: OutDirOption = "runs",
    as_json: JsonOption = False,
) -> None:
    """Score text: token cross-entropy, perplexity and tokenizer-independent bits per byte; or, with
    --sources and --references, a translation model's BLEU and chrF per decoding strategy."""
    if sources or references:
        from ..errors import UserError
        from .translate import evaluate_translation

        if not (sources and references) or text:
            raise UserError("translation scoring takes --sources and --references together (and no --text)")
        return evaluate_translation(model, sources, references, decodings, max_sentences, max_new_tokens,
                                    bootstrap, seed, threads, out_dir, as_json, dtype)
    if not text:
        from ..errors import UserError

        raise UserError("give --text FILE to score (or --sources and --references for a translation model)")
    from tqdm import tqdm

    from ..backends import load
    from ..metrics.lm import summarise_scores
    from ..text.corpus import read_documents
    from ..utils import set_threads

    remote = http_options(model, concurrency, None, None)
    n_threads = set_threads(threads)
    lm = load(model, backend=backend, model=served_model, batch_size=batch_size, dtype=dtype, **remote)
    docs = read_documents(text, normalize=None)
    caps = lm.capabilities
    scores = []
    with run_directory("eval", {"model": model, "backend": caps.backend, "text": [str(t) for t in text],
                                "window": window or 0, "stride": stride or 0, "batch_size": batch_size,
                                **({"concurrency": remote["concurrency"]} if remote else {})},
                       None, root=out_dir, threads=n_threads) as run_dir:
        step = remote.get("concurrency", 1)  # a served model scores `concurrency` documents at once
        with tqdm(total=len(docs), desc="eval", unit="doc", disable=as_json or len(docs) < 2) as bar:
            for start in range(0, len(docs), step):
                chunk = docs[start:start + step]
                done = lm.loglikelihood_rolling([doc.text for doc in chunk], window=window, stride=stride)
                scores.extend(done)
                # rows as documents are scored: a failure later keeps what was computed
                append_jsonl(run_dir / "samples.jsonl", [{"source": doc.source, "loglikelihood": score.loglikelihood,
                                                          "tokens": score.tokens, "bytes": score.bytes}
                                                         for doc, score in zip(chunk, done)])
                bar.update(len(chunk))
    tokenizer = getattr(getattr(lm, "tokenizer", None), "name", caps.backend)
    result = summarise_scores(scores, prefix_token=getattr(lm, "start_token", None),
                              tokenizer=f"{tokenizer}|model={Path(model).name}")
    result.update(model=model, backend=caps.backend, run_dir=str(run_dir))
    if remote:
        result["concurrency"] = remote["concurrency"]
    write_json(run_dir / "results.json", result)
    if as_json:
        print_json(result)
    else:
        out.print(f"perplexity {result['perplexity']:.3f}   bits/byte {result['bits_per_byte']:.4f}   "
                  f"({result['tokens']} tokens, {result['bytes']} bytes, window {result['window']}, "
                  f"stride {result['stride']})")
    err.print(f"run directory: {run_dir}")
