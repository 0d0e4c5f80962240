"""``fissure translate MODEL TEXT...``: translate with a seq2seq checkpoint or an HF Marian directory;
and the translation halves of ``fissure train`` (``task = "translation"``) and ``fissure eval``
(``--sources`` / ``--references``)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import DataError, UserError
from ..runs import run_directory, write_json
from .app import app
from .common import DtypeOption, JsonOption, OutDirOption, ThreadsOption, check_text, err, guard, out, print_json

# the decoding strategies ``fissure eval --sources`` compares, by name
DECODINGS = ("greedy", "beam4", "beam8", "sample")


def decodings_by_name(names: list[str], max_new_tokens: int, seed: int) -> dict:
    from ..decode.config import Decoding

    table = {"greedy": Decoding(max_new_tokens=max_new_tokens),
             "beam4": Decoding(max_new_tokens=max_new_tokens, num_beams=4),
             "beam8": Decoding(max_new_tokens=max_new_tokens, num_beams=8),
             "sample": Decoding(max_new_tokens=max_new_tokens, do_sample=True, seed=seed)}
    unknown = [n for n in names if n not in table]
    if unknown:
        raise UserError(f"unknown decoding '{unknown[0]}' (known: {', '.join(DECODINGS)})")
    return {n: table[n] for n in names}


@app.command(epilog='Example: fissure translate runs/train-.../checkpoint "Open the file" --num-beams 4 --json')
@guard
def translate(
    model: str = typer.Argument(..., help="A seq2seq checkpoint directory or an HF Marian directory."),
    texts: list[str] = typer.Argument(..., help="Sentences to translate."),
    num_beams: int = typer.Option(1, help="Beam search width (1 = greedy)."),
    length_penalty: float = typer.Option(1.0, help="Beam search length penalty (HF semantics)."),
    max_new_tokens: int = typer.Option(64, help="Longest translation, in tokens."),
    do_sample: bool = typer.Option(False, "--sample", help="Sample instead of searching."),
    temperature: float = typer.Option(1.0, help="Sampling temperature."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass."),
    seed: int = typer.Option(0, help="Sampling seed."),
    dtype: DtypeOption = "fp32",
    threads: ThreadsOption = 0,
    out_dir: OutDirOption = "runs",
    as_json: JsonOption = False,
) -> None:
    """Translate sentences; prints one translation per line (or {"translations": [...]})."""
    from ..backends.translation import load_translator
    from ..decode.config import Decoding
    from ..utils import set_threads

    check_text("TEXT", texts)
    decoding = Decoding(max_new_tokens=max_new_tokens, num_beams=num_beams, length_penalty=length_penalty,
                        do_sample=do_sample, temperature=temperature, top_p=top_p, seed=seed)
    n_threads = set_threads(threads)
    translator = load_translator(model, dtype)
    with run_directory("translate", {"model": model, "texts": list(texts), "decoding": decoding.to_dict(),
                                     "dtype": dtype}, seed,
                       root=out_dir, threads=n_threads) as run_dir:
        translations = translator.translate(list(texts), decoding)
        result = {"translations": translations, "decoding": decoding.signature(), "model": model}
        write_json(run_dir / "results.json", result)
    if as_json:
        print_json({"translations": translations})
    else:
        for line in translations:
            out.print(line)
    err.print(f"run directory: {run_dir}")


def evaluate_translation(model: str, sources: Path, references: Path, decodings: list[str], max_sentences: int,
                         max_new_tokens: int, n_bootstrap: int, seed: int, threads: int, out_dir: str,
                         as_json: bool, dtype: str = "fp32") -> None:
    """``fissure eval MODEL --sources S --references R``: BLEU and chrF of each decoding against the
    references (with the copy-the-source baseline), written to the run directory and printed."""
    from ..backends.translation import load_translator
    from ..metrics.translation import compare_decodings, format_table
    from ..text.parallel import read_aligned
    from ..utils import set_threads

    pairs = read_aligned(sources, references)
    if max_sentences:
        pairs = pairs[:max_sentences]
    chosen = decodings_by_name(decodings or list(DECODINGS), max_new_tokens, seed)
    if n_bootstrap < 0:
        raise DataError(f"--bootstrap must be 0 or more, not {n_bootstrap}")
    n_threads = set_threads(threads)
    translator = load_translator(model, dtype)
    config = {"model": model, "dtype": dtype, "sources": str(sources), "references": str(references),
              "sentences": len(pairs),
              "decodings": {n: d.to_dict() for n, d in chosen.items()}, "bootstrap": n_bootstrap}
    with run_directory("eval", config, seed, root=out_dir, threads=n_threads) as run_dir:
        rows, outputs = compare_decodings(translator.translate, [p.source for p in pairs], [p.target for p in pairs],
                                          chosen, n_bootstrap=n_bootstrap, seed=seed)
        result = {"task": "translation", "model": model, "sentences": len(pairs), "table": rows,
                  "run_dir": str(run_dir)}
        write_json(run_dir / "results.json", result)
        from ..runs import append_jsonl

        append_jsonl(run_dir / "samples.jsonl", [{"source": p.source, "reference": p.target,
                                                  **{n: outputs[n][i] for n in outputs}} for i, p in enumerate(pairs)])
    if as_json:
        print_json(result)
    else:
        out.print(format_table(rows))
        out.print(f"BLEU signature: {rows[-1]['bleu']['signature']}")
        out.print(f"chrF signature: {rows[-1]['chrf']['signature']}")
    err.print(f"run directory: {run_dir}")


def train_translation_run(raw: dict, resume: Path | None, out_dir: str | None, as_json: bool) -> None:
    """``fissure train CONFIG`` with ``task = "translation"``: train, then score the test split
    (greedy and beam 4, against the copy-the-source baseline)."""
    from ..backends.translation import NativeTextCodec, Translator
    from ..config import to_dict
    from ..metrics.translation import compare_decodings, format_table
    from ..train.translation import check_resume, load_translation_config, read_splits, train_translation

    cfg = load_translation_config(raw)
    if resume:
        check_resume(resume)
    splits = read_splits(cfg)  # bad data is a one-line error before the run directory exists
    with run_directory("train", to_dict(cfg), cfg.seed, root=out_dir or cfg.out_dir,
                       threads=cfg.train.threads) as run_dir:
        err.print(f"run directory: {run_dir}")
        model, tokenizer, splits, summary = train_translation(cfg, run_dir, resume=resume, splits=splits)
        translator = Translator(model, NativeTextCodec(tokenizer), str(run_dir / "checkpoint"))
        test = splits.test
        longest = max(len(ids) for ids in tokenizer.encode_batch([p.target for p in test]))
        max_new = min(cfg.model.block_size - 1, longest + 8)  # room for every reference, not for endless loops
        rows, _ = compare_decodings(translator.translate, [p.source for p in test], [p.target for p in test],
                                    decodings_by_name(["greedy", "beam4"], max_new, cfg.seed),
                                    n_bootstrap=1000, seed=cfg.seed)
        summary.update(test=rows, run_dir=str(run_dir))
        write_json(run_dir / "results.json", summary)
    if as_json:
        print_json(summary)
    else:
        out.print(f"trained {summary['steps']} steps, val loss {summary['val_loss_before']:.3f} -> "
                  f"{summary['val_loss']:.3f}; checkpoint: {summary['checkpoint']}")
        out.print(format_table(rows))
        out.print(f"BLEU signature: {rows[-1]['bleu']['signature']}")
