"""Translation quality: corpus BLEU and chrF (sacrebleu, with signatures and bootstrap intervals over
sentences), a copy-the-source baseline, and a table of decoding strategies.

Computed from texts only: :func:`compare_decodings` takes the translating function as an argument
(for example :meth:`fissure.backends.translation.Translator.translate`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from ..errors import DataError
from .text import bleu, chrf


def score_translations(hypotheses: Sequence[str], references: Sequence[str], *, n_bootstrap: int = 1000,
                       seed: int = 0) -> dict:
    """BLEU and chrF of ``hypotheses`` against one reference each, with 95% percentile bootstrap
    intervals over sentences and sacrebleu's signatures."""
    if len(hypotheses) != len(references):
        raise DataError(f"{len(hypotheses)} translations for {len(references)} references")
    refs = [list(references)]
    return {"bleu": bleu(hypotheses, refs, n_bootstrap=n_bootstrap, seed=seed).to_dict(),
            "chrf": chrf(hypotheses, refs, n_bootstrap=n_bootstrap, seed=seed).to_dict(),
            "sentences": len(hypotheses)}


def compare_decodings(translate: Callable[[list[str], object], list[str]], sources: Sequence[str],
                      references: Sequence[str], decodings: dict[str, object], *, n_bootstrap: int = 1000,
                      seed: int = 0) -> tuple[list[dict], dict[str, list[str]]]:
    """One row per decoding (name, its signature, BLEU, chrF, sentences per second), the copy-the-source
    baseline first; and each decoding's translations."""
    rows = [{"decoding": "copy source", "signature": "copy", "sentences_per_second": None,
             **score_translations(list(sources), references, n_bootstrap=n_bootstrap, seed=seed)}]
    outputs = {}
    for name, decoding in decodings.items():
        start = time.perf_counter()
        outputs[name] = translate(list(sources), decoding)
        elapsed = time.perf_counter() - start
        rows.append({"decoding": name, "signature": decoding.signature(),
                     "sentences_per_second": len(sources) / elapsed if elapsed > 0 else None,
                     **score_translations(outputs[name], references, n_bootstrap=n_bootstrap, seed=seed)})
    return rows, outputs


def format_table(rows: list[dict]) -> str:
    """A plain-text table: decoding, BLEU [interval], chrF [interval], sentences/s."""

    def cell(score: dict) -> str:
        iv = score.get("interval")
        return f"{score['score']:6.2f} [{iv['low']:.2f}, {iv['high']:.2f}]" if iv else f"{score['score']:6.2f}"

    lines = [f"{'decoding':<16} {'BLEU [95% CI]':<24} {'chrF [95% CI]':<24} sent/s"]
    for r in rows:
        speed = f"{r['sentences_per_second']:.1f}" if r["sentences_per_second"] else "-"
        lines.append(f"{r['decoding']:<16} {cell(r['bleu']):<24} {cell(r['chrf']):<24} {speed}")
    return "\n".join(lines)
