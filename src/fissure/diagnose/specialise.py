"""Generality against specialisation: tune a model on one domain and watch what it forgets.

For every setting of the sweep (a method: full fine-tuning or LoRA at a rank; and a share of
general text replayed into the batches) the base model is tuned on the domain's training
documents, and every ``eval_every`` steps it is measured on held-out documents:

- **gain**: bits per byte on the domain (lower is better);
- **forgetting**: bits per byte on each general domain, and a fixed check of general knowledge
  (:mod:`.knowledge`: short factual and arithmetic questions scored by log-likelihood).

Bits per byte come with bootstrap intervals over documents. The base model is measured once
(step 0, shared by every setting). Each finished setting is saved before the next starts, so an
interrupted sweep resumes where it stopped. The known result to check, not to assume: Biderman
et al. 2024 ("LoRA Learns Less and Forgets Less") found LoRA gains less on the target domain and
forgets less of general ability than full fine-tuning.
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..backends import TorchLM, load
from ..config import check_range
from ..errors import ConfigError
from ..metrics.lm import ratio_interval, summarise_scores
from ..metrics.pareto import pareto_front
from ..runs import write_json
from ..text.catalogue import load_domain
from ..train import TrainConfig, Trainer
from ..train.batches import Mixture
from ..train.lora import LoraSpec, apply_lora
from ..tune.data import split
from ..utils import check_seed, check_threads, resolve_dtype, seed_everything, set_threads
from .knowledge import general_knowledge

Log = Callable[[str], None]
METHOD = re.compile(r"full|lora(\d+)")


@dataclass
class SpecialiseConfig:
    model: str = "smollm2"
    domain: str = "legal"  # a text domain of `fissure data list`
    general: list[str] = field(default_factory=lambda: ["code", "news", "chat"])
    methods: list[str] = field(default_factory=lambda: ["full", "lora4", "lora16", "lora64"])
    replay: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.3])  # share of general text per batch
    steps: int = 20
    eval_every: int = 10
    block_size: int = 64  # tokens per training window
    batch_size: int = 8
    lr_full: float = 1e-4
    lr_lora: float = 1e-3  # LoRA usually wants a learning rate about ten times higher
    eval_documents: int = 8  # held-out documents per domain
    eval_chars: int = 400  # each held-out document is scored on its first this many characters
    train_documents: int = 300  # at most this many documents per domain to train on
    seed: int = 0
    threads: int = 2
    dtype: str = "auto"

    def __post_init__(self) -> None:
        for m in self.methods:
            if not METHOD.fullmatch(m):
                raise ValueError(f"method '{m}' must be 'full' or 'lora<rank>' (e.g. lora16)")
        if not self.methods or not self.replay or not self.general:
            raise ValueError("methods, replay and general need at least one value each")
        if any(not 0 <= r < 1 for r in self.replay):
            raise ValueError(f"replay shares must be in [0, 1), not {self.replay}")
        if self.domain in self.general:
            raise ValueError(f"the domain '{self.domain}' is also listed as general text")
        if self.steps < 1 or not 1 <= self.eval_every <= self.steps:
            raise ValueError("steps must be >= 1 and eval_every between 1 and steps")
        for m in self.methods:
            if m != "full":
                check_range(f"the LoRA rank of method '{m}'", int(METHOD.fullmatch(m).group(1)), 1, 4096, integer=True)
        check_range("steps", self.steps, 1, 10**6, integer=True)
        for name, most in (("block_size", 2**16), ("batch_size", 4096), ("eval_documents", 10**5),
                           ("eval_chars", 10**7), ("train_documents", 10**6)):
            check_range(name, getattr(self, name), 1, most, integer=True)
        check_range("lr_full", self.lr_full, 0, lo_open=True)
        check_range("lr_lora", self.lr_lora, 0, lo_open=True)
        check_seed(self.seed)
        check_threads(self.threads)
        if self.dtype not in ("fp32", "bf16", "auto"):
            raise ValueError(f"dtype must be 'fp32', 'bf16' or 'auto', not {self.dtype!r}")

    def settings(self) -> list[tuple[str, float]]:
        return [(m, r) for m in self.methods for r in self.replay]


@dataclass
class Corpus:
    """Training token files and held-out texts of one domain."""

    name: str
    train: object  # TokenFile
    held_out: list[str]


def prepare_corpora(config: SpecialiseConfig, lm: TorchLM, work_dir: Path) -> dict[str, Corpus]:
    from ..text.dataset import TokenFile, write_tokens

    corpora = {}
    for name in [config.domain, *config.general]:
        docs = load_domain(name, max_documents=config.train_documents + 4 * config.eval_documents)
        train, held = split(docs, 0.2, config.seed)
        held = [d.text[:config.eval_chars] for d in held if d.text.strip()][:config.eval_documents]
        tokens = write_tokens(train, lm.tokenizer, work_dir / "data" / f"{name}.bin")
        if len(tokens) <= config.block_size:
            raise ConfigError(f"domain '{name}' has too little text to train on ({len(tokens)} tokens)")
        corpora[name] = Corpus(name, TokenFile(tokens.path, label=f"domain {name}"), held)
    return corpora


def measure(lm: TorchLM, corpora: dict[str, Corpus], config: SpecialiseConfig) -> dict:
    """Bits per byte (with intervals) on every domain's held-out text, and general knowledge (in the
    run's dtype, the base model included, so every point is measured alike)."""
    bpb = {}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=resolve_dtype(config.dtype) == "bf16"):
        for name, corpus in corpora.items():
            scores = lm.loglikelihood_rolling(corpus.held_out)
            result = summarise_scores(scores, prefix_token=lm.start_token, tokenizer="model")
            bpb[name] = {"bits_per_byte": result["bits_per_byte"], "ci": result["bits_per_byte_ci"],
                         "documents": [[s.loglikelihood, s.bytes] for s in scores]}
        knowledge = general_knowledge(lm)
    return {"domain_bpb": bpb[config.domain]["bits_per_byte"], "domain_ci": bpb[config.domain]["ci"],
            "general_bpb": {g: bpb[g]["bits_per_byte"] for g in config.general},
            "general_ci": {g: bpb[g]["ci"] for g in config.general}, "knowledge": knowledge,
            "documents": {name: b["documents"] for name, b in bpb.items()}}


def paired_change(base: list, now: list) -> dict:
    """The fall in bits per byte from ``base`` to ``now`` on the same held-out documents, with a
    paired bootstrap interval over documents (far tighter than comparing two unpaired intervals)."""
    base_ll, now_ll = [b[0] for b in base], [n[0] for n in now]
    nbytes = [b[1] * math.log(2) for b in base]
    return ratio_interval([n - b for b, n in zip(base_ll, now_ll)], nbytes).as_dict()


def _point(method: str, replay: float, step: int, measured: dict) -> dict:
    m = METHOD.fullmatch(method)
    return {"method": "full" if method == "full" else "lora", "rank": int(m.group(1)) if m.group(1) else None,
            "setting": method, "replay": replay, "step": step, **measured,
            "mean_general_bpb": sum(measured["general_bpb"].values()) / len(measured["general_bpb"])}


def tune_setting(base_state: dict, lm: TorchLM, corpora: dict[str, Corpus], config: SpecialiseConfig,
                 method: str, replay: float, log: Log) -> list[dict]:
    """Train one setting from the base weights; its measured points (steps eval_every, 2*eval_every, ...)."""
    model = lm.model
    model.load_state_dict(base_state)
    seed_everything(config.seed)
    rank = METHOD.fullmatch(method).group(1)
    if rank:
        apply_lora(model, LoraSpec(rank=int(rank), alpha=2.0 * int(rank), dropout=0.0))
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    general = [corpora[g].train for g in config.general]
    data = Mixture([corpora[config.domain].train, *general],
                   [1 - replay, *([replay / len(general)] * len(general))])
    train = TrainConfig(max_steps=config.steps, batch_size=config.batch_size, lr=config.lr_lora if rank else config.lr_full,
                        min_lr=(config.lr_lora if rank else config.lr_full) / 10, warmup_steps=max(1, config.steps // 10),
                        weight_decay=0.0, eval_every=config.steps, dtype=config.dtype, progress=False)
    trainer = Trainer(model, train, data, block_size=config.block_size, seed=config.seed)
    points = []
    for until in range(config.eval_every, config.steps + 1, config.eval_every):
        t = time.perf_counter()
        result = trainer.train(until=until)
        measured = measure(TorchLM(model, lm.tokenizer, name=lm.capabilities.name, batch_size=8), corpora, config)
        points.append({**_point(method, replay, until, measured), "train_loss": result.train_loss,
                       "tokens_per_second": result.tokens_per_second})
        log(f"{method} replay {replay:g} step {until}: {config.domain} {measured['domain_bpb']:.3f} bpb, general "
            f"{points[-1]['mean_general_bpb']:.3f} bpb ({time.perf_counter() - t:.0f} s)")
    if rank:  # back to the plain base for the next setting
        from ..train.lora import merge_lora

        merge_lora(model)
    return points


def pareto(points: list[dict]) -> list[str]:
    """Settings whose last point no other last point beats on both domain and mean general bpb."""
    last = {p["setting_id"]: p for p in points}
    ids = list(last)
    front = pareto_front([(last[s]["domain_bpb"], last[s]["mean_general_bpb"]) for s in ids], maximise=[False, False])
    return [ids[i] for i in front]


def summarise_sweep(config: SpecialiseConfig, base: dict, points: list[dict]) -> dict:
    """Gain and forgetting of each setting's last point against the base, the Pareto set, and what
    the numbers say about LoRA against full fine-tuning (Biderman et al. 2024)."""
    last = {p["setting_id"]: p for p in points}
    rows = []
    for sid, p in last.items():
        gain = paired_change(base["documents"][config.domain], p["documents"][config.domain])
        forgetting = {g: paired_change(p["documents"][g], base["documents"][g]) for g in config.general}
        rows.append({"setting": sid, "method": p["method"], "rank": p["rank"], "replay": p["replay"],
                     "gain": gain["estimate"], "gain_ci": gain,
                     "forgetting": sum(f["estimate"] for f in forgetting.values()) / len(forgetting),
                     "forgetting_ci": forgetting,
                     "knowledge_change": p["knowledge"]["accuracy"]["estimate"]
                     - base["knowledge"]["accuracy"]["estimate"]})
    front = pareto([{**p, "setting_id": s} for s, p in last.items()])
    lines, checks = [], []
    for r in rows:
        g = r["gain_ci"]
        forgot = [name for name, f in r["forgetting_ci"].items() if f["low"] > 0]
        lines.append(f"{r['setting']}: {config.domain} bits per byte {'down' if r['gain'] > 0 else 'up'} by "
                     f"{abs(r['gain']):.3f} [{g['low']:.3f}, {g['high']:.3f}]; general text "
                     f"{'up' if r['forgetting'] > 0 else 'down'} by {abs(r['forgetting']):.3f} on average "
                     f"(worse beyond its interval on: {', '.join(forgot) or 'none'}); general-knowledge accuracy "
                     f"{r['knowledge_change']:+.2f}")
    for replay in config.replay:
        full = next((r for r in rows if r["method"] == "full" and r["replay"] == replay), None)
        for r in rows:
            if full and r["method"] == "lora" and r["replay"] == replay:
                checks.append({"setting": r["setting"], "replay": replay, "gain": r["gain"], "full_gain": full["gain"],
                               "forgetting": r["forgetting"], "full_forgetting": full["forgetting"],
                               "learns_less": r["gain"] < full["gain"],
                               "forgets_less": r["forgetting"] < full["forgetting"],
                               "testable": full["forgetting"] > 0})
    for c in checks:
        verdict = ("not testable here: full fine-tuning did not forget" if not c["testable"] else
                   "agrees" if c["learns_less"] and c["forgets_less"] else "does not agree")
        lines.append(f"LoRA learns less and forgets less (Biderman et al. 2024)? {c['setting']} at replay "
                     f"{c['replay']:g}: gain {c['gain']:.3f} vs full {c['full_gain']:.3f}, forgetting "
                     f"{c['forgetting']:.3f} vs full {c['full_forgetting']:.3f}: {verdict}.")
    return {"rows": rows, "pareto": front, "biderman": checks, "summary": lines}


def run_specialise(config: SpecialiseConfig, run_dir: Path, log: Log = lambda m: None) -> dict:
    """Run (or finish) the sweep in ``run_dir``; writes and returns ``results.json``."""
    threads = set_threads(config.threads)
    t0 = time.perf_counter()
    lm = load(config.model, batch_size=8, fuse=False)
    if not isinstance(lm, TorchLM):
        raise ConfigError(f"{config.model} is not a local model: it cannot be tuned")
    corpora = prepare_corpora(config, lm, run_dir)
    base_state = copy.deepcopy(lm.model.state_dict())
    done_dir = run_dir / "settings"
    done_dir.mkdir(parents=True, exist_ok=True)
    base_file = done_dir / "base.json"
    if base_file.is_file():
        base = json.loads(base_file.read_text())
    else:
        base = _point("full", 0.0, 0, measure(lm, corpora, config)) | {"setting": "base", "method": "base"}
        write_json(base_file, base)
    points = []
    for method, replay in config.settings():
        path = done_dir / f"{method}-replay{replay:g}.json"
        if path.is_file():
            points += json.loads(path.read_text())
            log(f"{method} replay {replay:g}: already done")
            continue
        new = tune_setting(base_state, lm, corpora, config, method, replay, log)
        write_json(path, new)
        points += new
    for p in points:
        p["setting_id"] = f"{p['setting']}@replay{p['replay']:g}"
    results = {"model": config.model, "domain": config.domain, "general": config.general, "base": base,
               "points": points, **summarise_sweep(config, base, points), "dtype": resolve_dtype(config.dtype),
               "threads": threads, "wall_seconds": time.perf_counter() - t0}
    write_json(run_dir / "results.json", results)
    return results
