"""Text similarity (BLEU, chrF through sacrebleu, with its signatures) and diversity (distinct-n, self-BLEU).

References use sacrebleu's layout: a list of reference *streams*, each holding one reference
per hypothesis (``references[k][i]`` is the k-th reference of hypothesis ``i``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sacrebleu.metrics import BLEU, CHRF

from ..errors import ConfigError, DataError
from .stats import Interval, bootstrap_interval


@dataclass(frozen=True)
class TextScore:
    name: str
    score: float
    signature: str  # sacrebleu's: enough to reproduce the score
    details: str = ""  # sacrebleu's verbose line (n-gram precisions, brevity penalty, ...)
    interval: Interval | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "score": self.score, "signature": self.signature, "details": self.details,
                "interval": self.interval.as_dict() if self.interval else None}


def _check_corpus(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if not hypotheses:
        raise DataError("no hypotheses to score")
    if isinstance(references, str) or not references or any(isinstance(s, str) for s in references):
        raise DataError("references must be a non-empty list of reference streams (list[list[str]], sacrebleu layout)")
    for k, stream in enumerate(references):
        if len(stream) != len(hypotheses):
            raise DataError(f"reference stream {k} has {len(stream)} segments for {len(hypotheses)} hypotheses")


def _corpus_score(metric, hypotheses: Sequence[str], references: Sequence[Sequence[str]], n_bootstrap: int,
                  confidence: float, seed: int) -> TextScore:
    _check_corpus(hypotheses, references)
    result = metric.corpus_score(list(hypotheses), [list(s) for s in references])
    interval = None
    if n_bootstrap > 0:
        # Percentile bootstrap over segments, recomputing the corpus score from summed sufficient
        # statistics as sacrebleu's own bootstrap (``significance._bootstrap_resample``) does, but
        # at any confidence level. These two methods are private to sacrebleu (stable across 2.x).
        stats = np.asarray(metric._extract_corpus_statistics(list(hypotheses), [list(s) for s in references]),
                           dtype=np.float64)

        def statistic(index: np.ndarray) -> float:
            return metric._compute_score_from_stats(stats[index.astype(np.intp)].sum(0).tolist()).score

        interval = bootstrap_interval(np.arange(len(stats)), statistic, confidence=confidence,
                                      n_resamples=n_bootstrap, seed=seed)
    details = result.format().removeprefix(f"{result.name} = {result.score:.2f}").strip()
    return TextScore(result.name, float(result.score), str(metric.get_signature()), details, interval)


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]], *, n_bootstrap: int = 0,
         confidence: float = 0.95, seed: int = 0, **options) -> TextScore:
    """Corpus BLEU (sacrebleu). ``options`` go to ``sacrebleu.metrics.BLEU`` (``tokenize``,
    ``lowercase``, ``smooth_method`` ...); ``n_bootstrap > 0`` adds a percentile interval."""
    return _corpus_score(BLEU(**options), hypotheses, references, n_bootstrap, confidence, seed)


def chrf(hypotheses: Sequence[str], references: Sequence[Sequence[str]], *, n_bootstrap: int = 0,
         confidence: float = 0.95, seed: int = 0, **options) -> TextScore:
    """Corpus chrF (sacrebleu; ``word_order=2`` in ``options`` gives chrF++)."""
    return _corpus_score(CHRF(**options), hypotheses, references, n_bootstrap, confidence, seed)


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n (Li et al., 2016): unique n-grams over total n-grams, pooled over ``texts``.

    Tokens are whitespace-separated; n-grams do not cross text boundaries. (Li et al. wrote
    "scaled by the total number of generated tokens"; dividing by n-grams, as most code does,
    keeps the value in [0, 1] for every n.) Texts without an n-gram give 0.0.
    """
    if n < 1:
        raise ConfigError(f"n must be at least 1, not {n}")
    if not texts:
        raise DataError("no texts to measure")
    grams = [tuple(words[i:i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def self_bleu(texts: Sequence[str], *, confidence: float = 0.95, seed: int = 0, **options) -> TextScore:
    """Self-BLEU (Zhu et al., 2018): the mean *sentence* BLEU of each text against all the
    others as references. 100 means the texts are identical; lower means more diverse.

    Uses sacrebleu's ``sentence_score`` with ``effective_order=True`` (no zero n-gram orders
    for short texts); the interval is a bootstrap over texts. Costs O(len(texts)^2).
    """
    if len(texts) < 2:
        raise DataError(f"self-BLEU needs at least two texts, got {len(texts)}")
    metric = BLEU(effective_order=True, **options)
    scores = [metric.sentence_score(text, list(texts[:i]) + list(texts[i + 1:])).score
              for i, text in enumerate(texts)]
    interval = bootstrap_interval(scores, confidence=confidence, seed=seed)
    return TextScore("Self-BLEU", float(np.mean(scores)), f"self|{metric.get_signature()}",
                     f"mean sentence BLEU of {len(texts)} texts", interval)
