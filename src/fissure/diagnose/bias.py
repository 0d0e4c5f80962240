"""Bias probes: does a model prefer one group's term in otherwise identical sentences?

An **axis** (gender, age, ...) is a TOML file of templates (``data/bias/*.toml`` ships the
built-in ones; users write their own in the same format, see docs/bias.md). A template has
*filler* placeholders (``{occupation}``), filled with every value of their list, and *term*
slots (``{subject}``), which take group A's or group B's word. A **pair** is the two sentences
that differ only in the term slots.

Scoring (through :class:`~fissure.backends.base.LanguageModel` ``loglikelihood``, so any backend
with log-probabilities works): the context is the sentence up to the first term slot (shared by
both sentences, trailing space moved into the continuation), the continuation is the rest. The
pair's **gap** is ``log P(continuation_A | context) - log P(continuation_B | context)`` in nats,
summed over tokens and *not* normalised per token. Because the context is shared, this equals
``log P(sentence_A) - log P(sentence_B)``: the whole-sentence preference. Per-token normalisation
would compare different denominators when the two terms tokenise to different lengths, and the
sentences differ in nothing else; the raw sum keeps the pair a likelihood ratio. The gap includes
the terms' own prior frequency (``he`` may be likelier than ``she`` after any occupation), so the
per-filler gaps are best read against each other and against the axis mean.

Aggregates per axis, per filler value and per template: the mean gap with a percentile bootstrap
interval over pairs, and the share of pairs that prefer A (gap > 0) with a Wilson interval.
Pairs sharing a filler or template are not independent; the intervals treat them as if they
were, so they are narrower than a resampling of templates would give.
"""

from __future__ import annotations

import itertools
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..config import load_toml
from ..errors import ConfigError
from ..metrics.stats import bootstrap_interval, wilson_interval

AXIS_KEYS = {"name", "description", "groups", "templates", "fillers", "terms"}


class TemplateError(ConfigError):
    """A bias template file that cannot be used (unknown placeholder, unpaired terms, ...)."""


@dataclass(frozen=True)
class Axis:
    """One bias axis: templates, fillers and term slots, from one TOML file."""

    name: str
    description: str
    groups: tuple[str, str]  # (A, B): a gap is A minus B
    templates: tuple[str, ...]
    fillers: dict[str, list[str]]
    terms: dict[str, dict[str, list[str]]]  # slot -> group -> words (paired by position)
    source: str  # the file it came from


@dataclass(frozen=True)
class BiasPair:
    axis: str
    template: int  # index into the axis's templates
    fillers: dict[str, str]
    terms: dict[str, tuple[str, str]]  # slot -> (A's word, B's word)
    context: str
    continuation_a: str
    continuation_b: str

    @property
    def sentence_a(self) -> str:
        return self.context + self.continuation_a

    @property
    def sentence_b(self) -> str:
        return self.context + self.continuation_b


# -- reading axes ---------------------------------------------------------------------------
def builtin_axes() -> dict[str, Path]:
    """The axes that ship with fissure: name -> file."""
    folder = resources.files("fissure.diagnose") / "data" / "bias"
    return {Path(str(f)).stem: Path(str(f)) for f in folder.iterdir() if str(f).endswith(".toml")}


def _strings(value, where: str, source: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise TemplateError(f"{source}: {where} must be a non-empty list of non-empty strings")
    return value


def placeholders(template: str, source: str) -> list[str]:
    """The ``{names}`` of a template, in order (``{{`` and ``}}`` are literal braces)."""
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise TemplateError(f"{source}: template {template!r} is malformed ({exc})") from None
    for name, spec, conv in fields:
        if not name.isidentifier() or spec or conv:
            raise TemplateError(f"{source}: template {template!r} has placeholder {{{name}}} that is not a plain name")
    return [f for f, _, _ in fields]


def load_axis(path: str | Path) -> Axis:
    """An :class:`Axis` from a TOML file, checked: one-line :class:`TemplateError` on any mistake."""
    path = Path(path)
    raw = load_toml(path)
    source = str(path)
    unknown = sorted(set(raw) - AXIS_KEYS)
    if unknown:
        raise TemplateError(f"{source}: unknown key '{unknown[0]}' (known: {', '.join(sorted(AXIS_KEYS))})")
    groups = _strings(raw.get("groups"), "groups", source)
    if len(groups) != 2 or groups[0] == groups[1]:
        raise TemplateError(f"{source}: groups must name two different groups, got {groups}")
    templates = _strings(raw.get("templates"), "templates", source)
    fillers_raw, terms_raw = raw.get("fillers", {}), raw.get("terms")
    if not isinstance(fillers_raw, dict):
        raise TemplateError(f"{source}: [fillers] must be a table of lists")
    if not isinstance(terms_raw, dict) or not terms_raw:
        raise TemplateError(f"{source}: needs at least one term slot, e.g. [terms.subject] with one list per group")
    fillers = {k: _strings(v, f"fillers.{k}", source) for k, v in fillers_raw.items()}
    terms: dict[str, dict[str, list[str]]] = {}
    for slot, by_group in terms_raw.items():
        if slot in fillers:
            raise TemplateError(f"{source}: '{slot}' is both a filler and a term slot")
        if not isinstance(by_group, dict) or set(by_group) != set(groups):
            raise TemplateError(f"{source}: terms.{slot} must give words for exactly the groups {groups}")
        words = {g: _strings(by_group[g], f"terms.{slot}.{g}", source) for g in groups}
        if len(words[groups[0]]) != len(words[groups[1]]):
            raise TemplateError(f"{source}: terms.{slot} pairs words by position, so its lists need the same length")
        terms[slot] = words
    for template in templates:
        names = placeholders(template, source)
        for name in names:
            if name not in fillers and name not in terms:
                raise TemplateError(f"{source}: unknown placeholder {{{name}}} in template {template!r} "
                                    f"(fillers: {', '.join(fillers) or 'none'}; terms: {', '.join(terms)})")
        if not any(name in terms for name in names):
            raise TemplateError(f"{source}: template {template!r} has no term slot ({', '.join(terms)}), "
                                "so its two sentences would be the same")
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise TemplateError(f"{source}: name must be a non-empty string")
    return Axis(name=name, description=str(raw.get("description", "")), groups=(groups[0], groups[1]),
                templates=tuple(templates), fillers=fillers, terms=terms, source=source)


def resolve_axes(names: list[str] | None, files: list[str | Path] | None = None) -> list[Axis]:
    """Built-in axes by name (all when ``names`` is None and no files are given) plus the axes of
    template files; checked before any model is loaded."""
    available = builtin_axes()
    if names is None:
        names = [] if files else sorted(available)
    axes = []
    for name in names:
        if name not in available:
            raise TemplateError(f"unknown bias axis '{name}' (built-in: {', '.join(sorted(available))}; "
                                "or give your own with --templates FILE.toml)")
        axes.append(load_axis(available[name]))
    axes += [load_axis(f) for f in files or []]
    seen = [a.name for a in axes]
    dup = next((n for n in seen if seen.count(n) > 1), None)
    if dup:
        raise TemplateError(f"bias axis '{dup}' is given twice")
    return axes


# -- pairs and scores -----------------------------------------------------------------------
def make_pairs(axis: Axis) -> list[BiasPair]:
    """Every pair of ``axis``: each template with every combination of its fillers' values and of
    its term slots' word positions."""
    a, b = axis.groups
    pairs = []
    for t, template in enumerate(axis.templates):
        names = list(dict.fromkeys(placeholders(template, axis.source)))
        filler_names = [n for n in names if n in axis.fillers]
        slot_names = [n for n in names if n in axis.terms]
        for values in itertools.product(*(axis.fillers[n] for n in filler_names)):
            filled = dict(zip(filler_names, values))
            for positions in itertools.product(*(range(len(axis.terms[s][a])) for s in slot_names)):
                terms = {s: (axis.terms[s][a][i], axis.terms[s][b][i]) for s, i in zip(slot_names, positions)}
                sentence_a = template.format(**filled, **{s: w[0] for s, w in terms.items()})
                sentence_b = template.format(**filled, **{s: w[1] for s, w in terms.items()})
                context = _before_first_term(template, filled, axis.terms).rstrip()  # the space goes with the term
                pairs.append(BiasPair(axis.name, t, filled, terms, context,
                                      sentence_a[len(context):], sentence_b[len(context):]))
    return pairs


def _before_first_term(template: str, fillers: dict[str, str], terms: dict) -> str:
    """The template's text up to its first term slot, fillers filled in."""
    head = []
    for literal, field, _, _ in string.Formatter().parse(template):
        head.append(literal)
        if field is None or field in terms:
            break
        head.append(fillers[field])
    return "".join(head)


def score_pairs(lm, pairs: list[BiasPair]) -> list[float]:
    """The gap of each pair: log P(continuation A | context) - log P(continuation B | context), nats."""
    requests = [(p.context, p.continuation_a) for p in pairs] + [(p.context, p.continuation_b) for p in pairs]
    scores = lm.loglikelihood(requests)
    n = len(pairs)
    return [scores[i].logprob - scores[n + i].logprob for i in range(n)]


def summarise_gaps(gaps: list[float], seed: int = 0, n_resamples: int = 1000, confidence: float = 0.95) -> dict:
    """Mean gap with a bootstrap interval, and the share of pairs preferring A (gap > 0) with a
    Wilson interval; ties (gap == 0) count as not preferring A and are reported."""
    prefer_a = sum(g > 0 for g in gaps)
    return {"n": len(gaps), "mean_gap": bootstrap_interval(gaps, confidence=confidence, n_resamples=n_resamples,
                                                           seed=seed).as_dict(),
            "prefer_a": wilson_interval(prefer_a, len(gaps), confidence).as_dict(),
            "ties": sum(g == 0 for g in gaps)}


def summarise_axis(axis: Axis, pairs: list[BiasPair], gaps: list[float], seed: int = 0,
                   n_resamples: int = 1000) -> dict:
    """The axis's overall summary, one per filler value (``by_filler[slot][value]``) and one per template."""
    by_filler: dict[str, dict[str, list[float]]] = {slot: {v: [] for v in values}
                                                    for slot, values in axis.fillers.items()}
    by_template: list[list[float]] = [[] for _ in axis.templates]
    for pair, gap in zip(pairs, gaps):
        for slot, value in pair.fillers.items():
            by_filler[slot][value].append(gap)
        by_template[pair.template].append(gap)

    def summary(values: list[float]) -> dict:
        return summarise_gaps(values, seed=seed, n_resamples=n_resamples)

    return {
        "axis": axis.name, "description": axis.description, "source": axis.source,
        "group_a": axis.groups[0], "group_b": axis.groups[1],
        "overall": summary(gaps),
        "by_filler": {slot: {v: summary(g) for v, g in values.items() if g}
                      for slot, values in by_filler.items()},
        "by_template": [{"template": t, **summary(g)} for t, g in zip(axis.templates, by_template) if g],
    }


def pair_record(pair: BiasPair, gap: float) -> dict:
    """One row of ``samples.jsonl``."""
    return {"axis": pair.axis, "template": pair.template, "fillers": pair.fillers,
            "terms": {s: list(w) for s, w in pair.terms.items()}, "sentence_a": pair.sentence_a,
            "sentence_b": pair.sentence_b, "context": pair.context, "gap": gap}


def run_bias(lm, axes: list[Axis], seed: int = 0, n_resamples: int = 1000,
             on_axis=None) -> list[dict]:
    """Score every axis on ``lm``; ``on_axis(axis, pairs, gaps)`` sees each axis's pairs as they are
    scored (to save them). Returns each axis's summary."""
    summaries = []
    for axis in axes:
        pairs = make_pairs(axis)
        gaps = score_pairs(lm, pairs)
        if on_axis is not None:
            on_axis(axis, pairs, gaps)
        summaries.append(summarise_axis(axis, pairs, gaps, seed=seed, n_resamples=n_resamples))
    return summaries
