"""Baselines on one corpus: byte n-grams, a small LSTM and a small GPT trained on the same training
documents and scored on the same held-out documents, in bits per byte with bootstrap intervals.

Every model is scored through the :class:`~fissure.backends.base.LanguageModel` seam
(``loglikelihood_rolling``), so every row counts the same bytes: each held-out text's UTF-8 bytes,
each token scored once (after ``<|endoftext|>``). A model spec given by the user is scored the same
way and never trained. Intervals resample held-out documents (:func:`fissure.metrics.lm.summarise_scores`);
the held-out set is each held-out document's head (whole lines, at most 1/16 of ``max_eval_bytes``)
so that it holds many documents even where single files are large.

The neural baselines are trained by the same pipeline as ``fissure train`` (character tokenizer
with a byte fallback), on the training documents written to ``data/train.jsonl`` in the run
directory; the pipeline holds out ``val_fraction`` of those for its own validation loss. The
held-out documents are never seen by any model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

NGRAM_ORDERS = (1, 2, 3, 4, 5)


@dataclass
class BaselinesConfig:
    data: str = "code"  # a domain of fissure.text.catalogue
    max_bytes: int = 1_000_000  # cap on the corpus read (train + held-out)
    eval_fraction: float = 0.1  # documents held out for scoring
    max_eval_bytes: int = 100_000  # cap on the held-out text scored
    orders: list[int] = field(default_factory=lambda: list(NGRAM_ORDERS))
    discount: float = 0.75
    lstm_steps: int = 200  # 0: no LSTM
    gpt_steps: int = 200  # 0: no GPT
    block_size: int = 128
    batch_size: int = 16
    models: list[str] = field(default_factory=list)  # specs scored only
    seed: int = 0
    threads: int = 0

    def __post_init__(self) -> None:
        bad = [o for o in self.orders if not isinstance(o, int) or isinstance(o, bool) or not 1 <= o <= 16]
        if bad:
            raise ConfigError(f"n-gram orders must be integers from 1 to 16, not {bad[0]!r}")
        if len(set(self.orders)) != len(self.orders):
            raise ConfigError(f"n-gram orders repeat: {self.orders}")
        for name in ("max_bytes", "max_eval_bytes", "block_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        for name in ("lstm_steps", "gpt_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name.replace('_', '-')} must be 0 (skip) or more, not {getattr(self, name)}")
        if not 0 < self.eval_fraction < 1:
            raise ConfigError(f"eval-fraction must lie between 0 and 1, not {self.eval_fraction}")
        if not 0 <= self.discount <= 1:
            raise ConfigError(f"discount must lie in [0, 1], not {self.discount}")


def check_inputs(cfg: BaselinesConfig) -> None:
    """Before anything is written: the domain is known and installed, every model spec loadable by some backend."""
    from ..backends import ModelSpec, resolve
    from ..text.catalogue import get_domain

    get_domain(cfg.data).locate()
    for spec in cfg.models:
        resolve(ModelSpec.parse(spec))


def split(cfg: BaselinesConfig):
    """``(train_docs, eval_docs)``: the domain read (capped), split by document with the seed."""
    from ..text.catalogue import load_domain
    from ..text.corpus import Document, _truncate_bytes, split_documents

    docs = load_domain(cfg.data, max_bytes=cfg.max_bytes)
    if len(docs) < 2:
        raise ConfigError(f"data domain '{cfg.data}' gave {len(docs)} document within {cfg.max_bytes} bytes; "
                          "baselines need at least two (raise --max-bytes)")
    train, held_out = split_documents(docs, val_fraction=cfg.eval_fraction, seed=cfg.seed)
    # Each held-out document's head, at most 1/16 of the cap (whole lines), so that the cap holds
    # many documents (the bootstrap's units) even where single files are large.
    per_doc = max(cfg.max_eval_bytes // 16, 1)
    kept, total = [], 0
    for doc in held_out:
        text = doc.text if len(doc.text.encode("utf-8")) <= per_doc else _truncate_bytes(doc.text, per_doc).strip()
        size = len(text.encode("utf-8"))
        if not text or total + size > cfg.max_eval_bytes:
            continue
        kept.append(Document(text, doc.source, doc.label))
        total += size
    if not kept:
        raise ConfigError(f"no held-out text fits in --max-eval-bytes {cfg.max_eval_bytes}")
    return train, kept


def _row(name: str, kind: str, scores, seconds: float, train_seconds: float, path: str | None, **extra) -> dict:
    from ..metrics.lm import summarise_scores

    s = summarise_scores(scores)
    ci = s["bits_per_byte_ci"] or {"low": s["bits_per_byte"], "high": s["bits_per_byte"]}
    return {"model": name, "kind": kind,
            "bits_per_byte": {"estimate": s["bits_per_byte"], "low": ci["low"], "high": ci["high"]},
            "seconds": seconds, "train_seconds": train_seconds, "tokens": s["tokens"], "bytes": s["bytes"],
            "documents": s["documents"], "path": path, **extra}


def _neural_config(cfg: BaselinesConfig, family: str, steps: int, train_file: Path) -> dict:
    model = {"family": family, "block_size": cfg.block_size, "n_layer": 2, "n_embd": 128, "dropout": 0.0}
    if family == "gpt":
        model["n_head"] = 4
    return {"seed": cfg.seed,
            "data": {"paths": [str(train_file)], "val_fraction": 0.05, "normalize": "none", "dedup": False},
            "tokenizer": {"kind": "char"},
            "model": model,
            "train": {"max_steps": steps, "batch_size": cfg.batch_size, "lr": 1e-2 if family == "lstm" else 3e-3,
                      "min_lr": 3e-4,
                      "warmup_steps": min(50, steps // 10), "eval_every": steps, "eval_batches": 4,
                      "weight_decay": 0.0 if family == "lstm" else 0.1, "threads": cfg.threads, "progress": False}}


def run_baselines(cfg: BaselinesConfig, run_dir: Path, log: Callable[[str], None] = lambda _: None) -> dict:
    """Train and score every baseline into ``run_dir``; the rows in the order they ran."""
    from ..backends import load
    from ..backends.ngram import NgramLM
    from ..train.pipeline import load_run_config, train_from_config

    train_docs, eval_docs = split(cfg)
    eval_texts = [d.text for d in eval_docs]
    train_texts = [d.text for d in train_docs]
    data_dir = run_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    train_file = data_dir / "train.jsonl"
    train_file.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in train_texts))
    (data_dir / "eval.jsonl").write_text("".join(json.dumps({"source": d.source, "text": d.text},
                                                            ensure_ascii=False) + "\n" for d in eval_docs))
    rows = []

    def score(name: str, kind: str, lm, started: float, trained: float, path: str | None, **extra) -> None:
        scores = lm.loglikelihood_rolling(eval_texts)
        row = _row(name, kind, scores, time.perf_counter() - started, trained, path, **extra)
        rows.append(row)
        log(f"{name}: {row['bits_per_byte']['estimate']:.3f} bits/byte ({row['seconds']:.1f} s)")

    for order in cfg.orders:
        started = time.perf_counter()
        lm = NgramLM.train(train_texts, order=order, discount=cfg.discount)
        trained = time.perf_counter() - started
        path = lm.save(run_dir / f"ngram-{order}")
        score(f"ngram-{order}", "ngram", load(path), started, trained, str(path), order=order)
    for family, steps in (("lstm", cfg.lstm_steps), ("gpt", cfg.gpt_steps)):
        if not steps:
            continue
        started = time.perf_counter()
        where = run_dir / family
        _, summary = train_from_config(load_run_config(_neural_config(cfg, family, steps, train_file)), where)
        trained = time.perf_counter() - started
        score(family, family, load(summary["checkpoint"], batch_size=cfg.batch_size), started, trained,
              summary["checkpoint"], steps=summary["steps"], params=summary["params"])
    for spec in cfg.models:
        started = time.perf_counter()
        score(spec, "given", load(spec, batch_size=cfg.batch_size), started, 0.0, spec)
    return {"data": cfg.data, "train_documents": len(train_docs), "eval_documents": len(eval_docs),
            "train_bytes": sum(len(t.encode("utf-8")) for t in train_texts),
            "eval_bytes": sum(len(t.encode("utf-8")) for t in eval_texts), "rows": rows}
