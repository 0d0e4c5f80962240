"""Accuracy against diversity: the decoding frontier of a model.

Every decoding setting of a sweep (temperature x top-p x top-k x beam width x repetition penalty)
continues the same prompts once each. Per setting:

- **quality**: the log-likelihood per token of the continuations, given their prompts, under a
  reference model (the model itself by default), and BLEU/chrF against human continuations
  where the prompts have them;
- **diversity and degeneration** (:mod:`fissure.metrics.degeneration`): distinct-n, n-gram
  entropy, self-BLEU, repeated n-grams, continuations that end in a loop, Zipf coefficient, length;
- **speed**: generated tokens per second of wall time.

Every number carries an interval over prompts. The settings no other setting beats on both quality
and diversity form the Pareto front; a stated preference (a weight on quality) picks one of them.

The sweep also replays Table 1 of Holtzman et al. 2020 ("The Curious Case of Neural Text
Degeneration"): perplexity of the continuations under the model, self-BLEU, Zipf coefficient and
the share of continuations that end in a loop, for the human continuations and for greedy, beam
search, pure sampling, top-k and nucleus sampling; it says which of the paper's orderings hold here.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..backends.base import LanguageModel
from ..config import _show, check_range, from_dict, load_toml
from ..decode import Decoding
from ..errors import ConfigError, DataError
from ..metrics.degeneration import diversity_summary, ending_loop, units
from ..metrics.lm import ratio_interval
from ..metrics.pareto import pareto_front, weighted_choice
from ..metrics.text import bleu, chrf
from ..runs import append_jsonl, write_json
from ..utils import cpu_features

Log = Callable[[str], None]

# Pareto axes: (where the number is in a setting's results, larger is better?)
QUALITY = {"loglik": ("loglik_per_token", True), "bleu": ("bleu", True), "chrf": ("chrf", True)}
DIVERSITY = {**{f"distinct_{n}": (f"distinct_{n}", True) for n in (1, 2, 3, 4)},
             **{f"entropy_{n}": (f"entropy_{n}", True) for n in (1, 2, 3, 4)},
             "self_bleu": ("self_bleu", False)}


# --------------------------------------------------------------------------- settings and grids

@dataclass
class Setting:
    """One decoding setting. ``temperature = 0`` decodes greedily (beam search with ``num_beams > 1``);
    above 0 it samples, through top-k and top-p where they are set (0 and 1 = off)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    num_beams: int = 1
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        for name, lo, hi, integer in (("temperature", 0, 100, False), ("top_k", 0, 10**6, True),
                                      ("top_p", 0, 1, False), ("num_beams", 1, 64, True),
                                      ("repetition_penalty", 0, 100, False)):
            value = getattr(self, name)
            try:
                check_range(name, value, lo, hi, integer=integer, lo_open=name in ("top_p", "repetition_penalty"))
            except ValueError as exc:
                raise ValueError(f"{name} = {_show(value)} is invalid: {exc}") from None
        if self.temperature == 0 and (self.top_k or self.top_p < 1):
            raise ValueError(f"top_k = {self.top_k} / top_p = {self.top_p:g} need temperature > 0 "
                             "(greedy decoding and beam search do not sample)")
        if self.num_beams > 1 and self.temperature > 0:
            raise ValueError(f"num_beams = {self.num_beams} needs temperature = 0 (beam search does not sample), "
                             f"not {self.temperature:g}")

    def decoding(self, max_new_tokens: int, seed: int) -> Decoding:
        sampling = self.temperature > 0
        return Decoding(max_new_tokens=max_new_tokens, do_sample=sampling, temperature=self.temperature or 1.0,
                        top_k=self.top_k, top_p=self.top_p, num_beams=self.num_beams,
                        repetition_penalty=self.repetition_penalty, seed=seed if sampling else None)

    def label(self) -> str:
        if self.num_beams > 1:
            parts = [f"beam-{self.num_beams}"]
        elif self.temperature == 0:
            parts = ["greedy"]
        else:
            parts = [f"t-{self.temperature:g}" if self.temperature != 1 or not (self.top_k or self.top_p < 1)
                     else "", f"top-k-{self.top_k}" if self.top_k else "", f"top-p-{self.top_p:g}" if self.top_p < 1
                     else ""]
            parts = [p for p in parts if p] or ["pure-sampling"]
            if parts == ["t-1"]:
                parts = ["pure-sampling"]
        if self.repetition_penalty != 1:
            parts.append(f"rep-{self.repetition_penalty:g}")
        return "-".join(parts)

    def role(self) -> str | None:
        """Which decoding method of Holtzman et al.'s Table 1 this is, if any."""
        if self.repetition_penalty != 1:
            return None
        if self.temperature == 0:
            return "greedy" if self.num_beams == 1 else "beam"
        if self.temperature != 1:
            return None
        if self.top_k == 0 and self.top_p == 1:
            return "pure sampling"
        if self.top_k and self.top_p == 1:
            return "top-k"
        if self.top_k == 0:
            return "nucleus"
        return None


DEFAULT_SETTINGS: dict[str, Setting] = {s.label(): s for s in (
    Setting(), Setting(num_beams=4), Setting(temperature=1.0), Setting(temperature=0.7),
    Setting(temperature=1.0, top_k=40), Setting(temperature=1.0, top_p=0.9), Setting(temperature=1.0, top_p=0.95),
    Setting(repetition_penalty=1.2))}


@dataclass
class Grid:
    """A product grid: every combination is a setting (combinations that sample with beams, or set
    top-k/top-p without sampling, are left out; so are duplicates)."""

    temperature: list[float] = field(default_factory=lambda: [0.0])
    top_k: list[int] = field(default_factory=lambda: [0])
    top_p: list[float] = field(default_factory=lambda: [1.0])
    num_beams: list[int] = field(default_factory=lambda: [1])
    repetition_penalty: list[float] = field(default_factory=lambda: [1.0])

    def __post_init__(self) -> None:
        for name in ("temperature", "top_k", "top_p", "num_beams", "repetition_penalty"):
            values = getattr(self, name)
            if not values:
                raise ValueError(f"{name} = [] is invalid: give at least one value")
            for v in values:
                Setting(**{name: v, **({"temperature": 1.0} if name in ("top_k", "top_p") else {})})

    def settings(self) -> dict[str, Setting]:
        out: dict[str, Setting] = {}
        for t, k, p, b, r in itertools.product(self.temperature, self.top_k, self.top_p, self.num_beams,
                                               self.repetition_penalty):
            if (t == 0 and (k or p < 1)) or (b > 1 and t > 0):
                continue
            s = Setting(t, k, p, b, r)
            out.setdefault(s.label(), s)
        return out


@dataclass
class GridFile:
    grid: Grid | None = None
    settings: dict[str, Setting] = field(default_factory=dict)


def load_grid(path: str | Path) -> dict[str, Setting]:
    """Settings from a TOML file: named ``[settings.NAME]`` tables and/or a ``[grid]`` of value lists
    (see docs/frontier.md). A bad key or value is a one-line ConfigError naming both."""
    data = load_toml(path)
    try:
        spec = from_dict(GridFile, data)
    except ConfigError as exc:  # names the key and its value
        raise ConfigError(f"{path}: {exc}") from None
    settings = dict(spec.settings)
    if spec.grid is not None:
        for name, s in spec.grid.settings().items():
            settings.setdefault(name, s)
    if not settings:
        raise ConfigError(f"{path}: no settings: give [settings.NAME] tables or a [grid]")
    return settings


# --------------------------------------------------------------------------- prompts

@dataclass(frozen=True)
class PromptItem:
    prompt: str
    reference: str | None = None  # a human continuation


def load_prompts(path: str | Path) -> list[PromptItem]:
    """Prompts from a text file (one per non-empty line) or a ``.jsonl`` file of
    ``{"prompt": ..., "reference": ...}`` objects (``reference``, a human continuation, optional
    but then on every line)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise DataError(f"prompts file not found: {path}") from None
    except IsADirectoryError:
        raise DataError(f"prompts file {path} is a directory") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"prompts file {path} is not UTF-8 text (bad byte at offset {exc.start})") from None
    except OSError as exc:
        raise DataError(f"cannot read prompts file {path}: {exc.strerror or exc}") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise DataError(f"prompts file {path} holds no prompts (it is empty)")
    if path.suffix != ".jsonl":
        return [PromptItem(line) for _, line in lines]
    items = []
    for n, line in lines:
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            raise DataError(f"{path}: line {n} is not JSON") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise DataError(f"{path}: line {n} needs a non-empty \"prompt\" string")
        ref = row.get("reference")
        if ref is not None and not isinstance(ref, str):
            raise DataError(f"{path}: line {n}: \"reference\" must be a string")
        items.append(PromptItem(row["prompt"], ref))
    with_ref = sum(i.reference is not None for i in items)
    if 0 < with_ref < len(items):
        raise DataError(f"{path}: {with_ref} of {len(items)} prompts have a \"reference\": give one on every line "
                        "or on none")
    return items


def corpus_prompts(domain: str, count: int, prompt_words: int, reference_words: int) -> list[PromptItem]:
    """``count`` prompts from an offline corpus: the first ``prompt_words`` words of a document's body
    (its title left out), with the next ``reference_words`` words, the human continuation, as reference."""
    from ..text.catalogue import get_domain, load_domain

    if get_domain(domain).kind != "text":
        raise DataError(f"'{domain}' is a labelled domain: take prompts from a text domain (fissure data list)")
    items = []
    for doc in load_domain(domain, max_documents=50 * count):
        paragraphs = doc.text.split("\n\n")
        words = " ".join(paragraphs[1:] if len(paragraphs) > 1 else paragraphs).split()
        if len(words) >= prompt_words + reference_words:
            items.append(PromptItem(" ".join(words[:prompt_words]),
                                    " " + " ".join(words[prompt_words:prompt_words + reference_words])))
        if len(items) == count:
            return items
    raise DataError(f"domain '{domain}' has only {len(items)} documents of {prompt_words + reference_words}+ words; "
                    f"{count} prompts were asked for")


# --------------------------------------------------------------------------- the sweep

@dataclass
class FrontierConfig:
    model: str = "smollm2"
    reference: str = ""  # the model that scores quality; "" = the model itself
    prompts: str = ""  # a prompts file; "" = prompts from `domain`
    domain: str = "news"
    n_prompts: int = 24
    prompt_words: int = 30
    max_new_tokens: int = 64
    quality: str = "loglik"  # the Pareto front's quality axis: loglik | bleu | chrf
    diversity: str = "distinct_2"  # its diversity axis: distinct_N | entropy_N | self_bleu
    weights: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])  # weights on quality to recommend for
    seed: int = 0
    threads: int = 0  # 0 = the free cores (2 threads on 2 busy cores run 10x slower than 1)
    batch_size: int = 8
    settings: dict[str, Setting] = field(default_factory=lambda: dict(DEFAULT_SETTINGS))

    def __post_init__(self) -> None:
        if self.quality not in QUALITY:
            raise ValueError(f"quality = {self.quality!r} is invalid: choose {', '.join(QUALITY)}")
        if self.diversity not in DIVERSITY:
            raise ValueError(f"diversity = {self.diversity!r} is invalid: choose {', '.join(DIVERSITY)}")
        for name, hi in (("n_prompts", 10_000), ("prompt_words", 10_000), ("max_new_tokens", 4096),
                         ("batch_size", 4096)):
            try:
                check_range(name, getattr(self, name), 2 if name == "n_prompts" else 1, hi, integer=True)
            except ValueError as exc:
                raise ValueError(f"{name} = {_show(getattr(self, name))} is invalid: {exc}") from None
        for w in self.weights:
            if not isinstance(w, (int, float)) or not 0 <= w <= 1:
                raise ValueError(f"weights = {_show(self.weights)} is invalid: each weight on quality must be in [0, 1]")
        check_range("seed", self.seed, 0, 2**63 - 1, integer=True)
        check_range("threads", self.threads, 0, 1024, integer=True)
        if not self.settings:
            raise ValueError("settings is empty: give at least one decoding setting")

    @property
    def reference_words(self) -> int:
        return max(1, round(0.75 * self.max_new_tokens))  # about as many words as the continuations' tokens


def _scored(scorer: LanguageModel, items: list[PromptItem], texts: list[str]) -> list[tuple[float, int] | None]:
    """(log-likelihood, tokens) of each continuation given its prompt; None for an empty one."""
    todo = [i for i, t in enumerate(texts) if t.strip()]
    results = scorer.loglikelihood([(items[i].prompt, texts[i]) for i in todo])
    out: list[tuple[float, int] | None] = [None] * len(texts)
    for i, r in zip(todo, results):
        out[i] = (r.logprob, r.tokens)
    return out


def measure_texts(texts: list[str], items: list[PromptItem], scores: list[tuple[float, int] | None],
                  seed: int) -> dict:
    """Every statistic of one setting's continuations (or of the human ones), with intervals."""
    ll = [s[0] for s in scores if s]
    tokens = [s[1] for s in scores if s]
    out: dict = {"scored": len(ll), "loglik_per_token": None, "perplexity": None, "bleu": None, "chrf": None}
    if len(ll) >= 2:
        out["loglik_per_token"] = ratio_interval(ll, tokens, seed=seed).as_dict()
        out["perplexity"] = ratio_interval([-x for x in ll], tokens, math.exp, seed=seed).as_dict()
    if items and all(i.reference is not None for i in items):
        refs = [[i.reference for i in items]]
        for name, metric in (("bleu", bleu), ("chrf", chrf)):
            score = metric(texts, refs, n_bootstrap=1000, seed=seed)
            out[name] = {**score.interval.as_dict(), "signature": score.signature}
    out.update(diversity_summary(texts, seed=seed))
    return out


def _count_tokens(lm: LanguageModel, text: str, scored: tuple[float, int] | None) -> int:
    tokenizer = getattr(lm, "tokenizer", None)
    if tokenizer is not None and hasattr(tokenizer, "encode"):
        return len(tokenizer.encode(text)) if text else 0
    return scored[1] if scored else 0


def run_setting(lm: LanguageModel, scorer: LanguageModel, items: list[PromptItem], name: str, setting: Setting,
                config: FrontierConfig) -> tuple[dict, list[dict]]:
    decoding = setting.decoding(config.max_new_tokens, config.seed)
    t0 = time.perf_counter()
    texts = lm.generate([i.prompt for i in items], decoding)
    seconds = time.perf_counter() - t0
    scores = _scored(scorer, items, texts)
    generated = sum(_count_tokens(lm, t, s) for t, s in zip(texts, scores))
    result = {"name": name, "setting": setting.__dict__, "role": setting.role(), "signature": decoding.signature(),
              "seconds": seconds, "tokens": generated, "tokens_per_second": generated / seconds if seconds else None,
              **measure_texts(texts, items, scores, config.seed)}
    rows = [_sample_row(name, i, item, text, score) for i, (item, text, score) in enumerate(zip(items, texts, scores))]
    return result, rows


def _sample_row(name: str, index: int, item: PromptItem, text: str, score) -> dict:
    loop = ending_loop(text)
    return {"setting": name, "index": index, "prompt": item.prompt, "text": text, "reference": item.reference,
            "loglikelihood": score[0] if score else None, "tokens": score[1] if score else None,
            "words": len(units(text)), "loop": " ".join(loop.phrase) if loop else None,
            "loop_times": loop.times if loop else None}


def _axis_value(result: dict, key: str) -> float:
    iv = result.get(key)
    return float(iv["estimate"]) if iv and iv.get("estimate") is not None else math.nan


def frontier_summary(results: list[dict], config: FrontierConfig) -> dict:
    """The Pareto front over (quality, diversity) and the setting each stated preference picks."""
    q_key, q_up = QUALITY[config.quality]
    d_key, d_up = DIVERSITY[config.diversity]
    points = [(_axis_value(r, q_key), _axis_value(r, d_key)) for r in results]
    front = pareto_front(points, maximise=[q_up, d_up])
    signed = [((1 if q_up else -1) * q, (1 if d_up else -1) * d) for q, d in points]
    picks = []
    for w in config.weights:
        if front:
            picks.append({"weight_on_quality": w, "setting": results[weighted_choice(signed, (w, 1 - w), front)]["name"]})
    return {"quality_axis": q_key, "diversity_axis": d_key, "quality_higher_is_better": q_up,
            "diversity_higher_is_better": d_up, "pareto": [results[i]["name"] for i in front], "recommendations": picks}


# --------------------------------------------------------------------------- Holtzman et al. 2020, Table 1

ROLES = ("greedy", "beam", "pure sampling", "top-k", "nucleus")
HOLTZMAN_STATS = {"perplexity": "perplexity", "self_bleu": "self-BLEU", "zipf": "Zipf coefficient",
                  "loops": "share ending in a loop"}


def _pick_roles(results: list[dict]) -> dict[str, dict]:
    """The setting that plays each method of Table 1 (beam: the widest; top-k: k nearest 40; nucleus: p nearest 0.95)."""
    chosen: dict[str, dict] = {}
    rank = {"beam": lambda r: -r["setting"]["num_beams"], "top-k": lambda r: abs(r["setting"]["top_k"] - 40),
            "nucleus": lambda r: abs(r["setting"]["top_p"] - 0.95)}
    for role in ROLES:
        cands = [r for r in results if r["role"] == role]
        if cands:
            chosen[role] = min(cands, key=rank.get(role, lambda r: 0))
    return chosen


def _est(iv: dict | None) -> float:
    return float(iv["estimate"]) if iv and iv.get("estimate") is not None and math.isfinite(iv["estimate"]) \
        else math.nan


def _extreme(rows: dict[str, dict], stat: str, who: list[str], highest: bool) -> dict:
    """Are the methods ``who`` above (``highest``) or below every other method on ``stat``? And is it
    clear: their intervals apart from every other's?"""
    others = [r for r in rows if r not in who]
    vals = {r: _est(rows[r][stat]) for r in rows}
    if not others or any(math.isnan(vals[r]) for r in rows):
        return {"holds": None, "clear": False, "values": vals}
    sign = 1 if highest else -1
    holds = min(sign * vals[w] for w in who) > max(sign * vals[o] for o in others)
    if highest:
        clear = holds and all(rows[w][stat]["low"] > rows[o][stat]["high"] for w in who for o in others)
    else:
        clear = holds and all(rows[w][stat]["high"] < rows[o][stat]["low"] for w in who for o in others)
    return {"holds": holds, "clear": bool(clear), "values": vals}


def holtzman_table(results: list[dict], human: dict | None) -> dict:
    roles = _pick_roles(results)
    table = [{"method": "human", "setting": None, **{k: human[k] for k in HOLTZMAN_STATS}}] if human else []
    table += [{"method": role, "setting": r["name"], **{k: r[k] for k in HOLTZMAN_STATS}} for role, r in roles.items()]
    rows = {role: r for role, r in roles.items()}
    checks = []

    def check(claim: str, needs: list[str], outcome: Callable[[], dict]) -> None:
        missing = [n for n in needs if n not in rows]
        if missing or len(rows) < 2:
            checks.append({"claim": claim, "holds": None, "note": f"not testable: no {', '.join(missing) or 'other'} "
                                                                  "setting in the grid"})
            return
        checks.append({"claim": claim, **outcome()})

    check("greedy and beam search end in loops most often (Repetition %)", ["greedy", "beam"],
          lambda: _extreme(rows, "loops", ["greedy", "beam"], highest=True))
    check("greedy and beam search repeat 4-grams most (seq-rep-4, a finer measure than loops)", ["greedy", "beam"],
          lambda: _extreme(rows, "repetition_4", ["greedy", "beam"], highest=True))
    check("pure sampling is the most diverse (lowest self-BLEU)", ["pure sampling"],
          lambda: _extreme(rows, "self_bleu", ["pure sampling"], highest=False))
    check("pure sampling has the highest perplexity", ["pure sampling"],
          lambda: _extreme(rows, "perplexity", ["pure sampling"], highest=True))
    if human is not None and "nucleus" in rows:
        closest, informative = {}, []
        for stat in HOLTZMAN_STATS:
            h = _est(human[stat])
            dist = {role: abs(math.log(_est(r[stat]) / h)) if stat == "perplexity" else abs(_est(r[stat]) - h)
                    for role, r in rows.items()}
            dist = {k: v for k, v in dist.items() if math.isfinite(v)}
            best = min(dist.values(), default=math.nan)
            closest[stat] = [k for k, v in dist.items() if v <= best + 1e-12]  # ties: every closest method
            if 0 < len(closest[stat]) < len(rows):  # all methods tied says nothing
                informative.append(stat)
        wins = [s for s in informative if "nucleus" in closest[s]]
        checks.append({"claim": "nucleus sampling is closest to the human continuations' statistics",
                       "holds": bool(informative) and len(wins) == len(informative),
                       "partly": 0 < len(wins) < len(informative), "closest": closest,
                       "nucleus_closest_on": wins, "uninformative": [s for s in closest if s not in informative]})
    else:
        checks.append({"claim": "nucleus sampling is closest to the human continuations' statistics", "holds": None,
                       "note": "not testable: " + ("no human continuations" if human is None else "no nucleus setting")})
    return {"table": table, "checks": checks, "lines": [_check_line(c) for c in checks]}


def _check_line(c: dict) -> str:
    if c["holds"] is None:
        return f"{c['claim']}: {c.get('note', 'not testable here')}."
    if "closest" in c:
        detail = "; ".join(f"{HOLTZMAN_STATS[s]}: {' = '.join(roles) or 'n/a'}"
                           + (" (all tied: left out)" if s in c["uninformative"] else "")
                           for s, roles in c["closest"].items())
        verdict = "holds" if c["holds"] else "holds in part" if c["partly"] else "does not hold"
        return f"{c['claim']}: {verdict} (closest to human on {detail})."
    vals = ", ".join(f"{k} {v:.3g}" for k, v in c["values"].items())
    verdict = ("holds, intervals apart" if c["clear"] else "holds on the estimates, intervals overlap") \
        if c["holds"] else "does not hold"
    return f"{c['claim']}: {verdict} ({vals})."


# --------------------------------------------------------------------------- the run

def run_frontier(config: FrontierConfig, items: list[PromptItem], lm: LanguageModel, scorer: LanguageModel,
                 run_dir: Path, log: Log = lambda m: None) -> dict:
    """Sweep every setting over ``items``; writes samples.jsonl as it goes and results.json at the end."""
    t0 = time.perf_counter()
    human = None
    if all(i.reference is not None for i in items):
        refs = [i.reference for i in items]
        scores = _scored(scorer, items, refs)
        human = {"name": "human", **measure_texts(refs, [], scores, config.seed)}
        append_jsonl(run_dir / "samples.jsonl", [_sample_row("human", i, item, item.reference, s)
                                                 for i, (item, s) in enumerate(zip(items, scores))])
    results = []
    for name, setting in config.settings.items():
        result, rows = run_setting(lm, scorer, items, name, setting, config)
        append_jsonl(run_dir / "samples.jsonl", rows)
        results.append(result)
        log(f"{name}: {result['seconds']:.0f} s, log-lik/token {_est(result['loglik_per_token']):.3f}, "
            f"distinct-2 {_est(result['distinct_2']):.3f}, self-BLEU {_est(result['self_bleu']):.1f}, "
            f"loops {_est(result['loops']):.2f}")
    summary = frontier_summary(results, config)
    front = set(summary["pareto"])
    for r in results:
        r["on_front"] = r["name"] in front
    holtzman = holtzman_table(results, human)
    lines = [f"Pareto front ({summary['quality_axis']} against {summary['diversity_axis']}): "
             f"{', '.join(summary['pareto']) or 'none'}."]
    lines += [f"Weight {p['weight_on_quality']:g} on quality, {1 - p['weight_on_quality']:g} on diversity: "
              f"{p['setting']}." for p in summary["recommendations"]]
    lines += [f"Holtzman et al. 2020: {line}" for line in holtzman["lines"]]
    out = {"model": config.model, "reference": config.reference or config.model,
           "prompts": config.prompts or f"domain {config.domain}", "n_prompts": len(items),
           "max_new_tokens": config.max_new_tokens, "seed": config.seed, "settings": results, "human": human,
           **summary, "holtzman": holtzman, "summary": lines, "wall_seconds": time.perf_counter() - t0,
           "threads": torch.get_num_threads(), "cpu": cpu_features(),
           "units": "words (whitespace split) for every n-gram statistic; tokens of the reference model for "
                    "log-likelihoods"}
    write_json(run_dir / "results.json", out)
    return out
