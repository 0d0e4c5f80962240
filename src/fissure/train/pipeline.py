"""From a TOML config to a trained checkpoint: read text, fit a tokenizer, write memory-mapped
token files, build the model, train. Used by ``fissure train`` and ``fissure quickstart``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config import check_range, from_dict, to_dict
from ..errors import ConfigError, DataError
from ..models import GPT, LSTM, GPTConfig, LSTMConfig
from ..models.limits import LIMITS, build
from ..runs import write_json
from ..text.corpus import BUILTIN_CORPORA
from ..text.tokenizers import MIN_VOCAB
from ..utils import check_seed, seed_everything, set_threads
from .distributed import World
from .trainer import Trainer, TrainConfig, TrainResult


@dataclass
class DataConfig:
    paths: list[str] = field(default_factory=list)  # .txt / .jsonl files or folders
    builtin: str = ""  # "stdlib" (Python sources) | "stdlib-docs" (docstrings); used when paths is empty
    max_bytes: int = 2_000_000  # cap on the builtin corpus
    val_fraction: float = 0.1
    normalize: str = "NFC"  # "NFC" | "NFKC" | "none"
    collapse_whitespace: bool = False
    dedup: bool = True
    jsonl_field: str = "text"

    def __post_init__(self) -> None:
        if self.builtin not in ("", *BUILTIN_CORPORA):
            raise ValueError(f"data.builtin must be one of {', '.join(BUILTIN_CORPORA)} (or empty), not {self.builtin!r}")
        check_range("data.max_bytes", self.max_bytes, 1, 2**40, integer=True)
        check_range("data.val_fraction", self.val_fraction, 0, 1, lo_open=True, hi_open=True)
        if self.normalize not in ("NFC", "NFKC", "none"):
            raise ValueError(f"data.normalize must be 'NFC', 'NFKC' or 'none', not {self.normalize!r}")
        if not self.jsonl_field:
            raise ValueError("data.jsonl_field must name a field")


@dataclass
class TokenizerConfig:
    kind: str = "bpe"  # "bpe" (byte-level BPE) | "char"
    vocab_size: int = 4096  # for BPE
    path: str = ""  # reuse a saved tokenizer.json (or checkpoint directory) instead of fitting one

    def __post_init__(self) -> None:
        if self.kind not in ("bpe", "char"):
            raise ValueError(f"tokenizer.kind must be 'bpe' or 'char', not {self.kind!r}")
        if self.kind == "bpe" and not self.path:
            check_range("tokenizer.vocab_size", self.vocab_size, MIN_VOCAB, LIMITS["vocab_size"], integer=True)


# The families ``fissure train`` builds, chosen by ``[model] family`` (default "gpt"); the rest of
# the [model] table is that family's config.
TRAINABLE: dict[str, tuple[type, type]] = {"gpt": (GPT, GPTConfig), "lstm": (LSTM, LSTMConfig)}


@dataclass
class RunConfig:
    seed: int = 0
    out_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: GPTConfig | LSTMConfig = field(default_factory=GPTConfig)  # vocab_size is taken from the tokenizer
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        check_seed(self.seed)
        if not self.out_dir:
            raise ValueError("out_dir must name a folder")


def model_family(cfg: RunConfig) -> str:
    return next(name for name, (_, config_cls) in TRAINABLE.items() if isinstance(cfg.model, config_cls))


def run_config_dict(cfg: RunConfig) -> dict:
    """The config as a dict that :func:`load_run_config` reads back (``model.family`` included)."""
    data = to_dict(cfg)
    data["model"] = {"family": model_family(cfg), **data["model"]}
    return data


def load_run_config(raw: dict) -> RunConfig:
    model = raw.get("model", {})
    if not isinstance(model, dict):
        raise ConfigError(f"config 'model' must be a table, got {type(model).__name__}")
    model = dict(model)
    family = model.pop("family", "gpt")  # [model] family picks the config class of the rest of the table
    if family not in TRAINABLE:
        raise ConfigError(f"model.family must be one of {', '.join(TRAINABLE)}, not {family!r}")
    cfg = from_dict(RunConfig, {k: v for k, v in raw.items() if k != "model"})
    cfg.model = from_dict(TRAINABLE[family][1], model, prefix="model.")
    if not cfg.data.paths and not cfg.data.builtin:
        raise ConfigError("config needs data.paths (files or folders of text) or data.builtin (e.g. 'stdlib')")
    return cfg


def check_resume(cfg: RunConfig, resume: str | Path) -> None:
    """Before anything is written: ``resume`` is a checkpoint this config can continue (a model of the
    same shape whose weights, tokenizer, optimizer moments and RNG states all load, with a trainer
    state that has steps left under the same schedule)."""
    from ..errors import CheckpointError
    from .checkpoint import load_checkpoint, load_trainer_state, read_model_config
    from .trainer import make_optimizer

    data = read_model_config(resume)
    if data["family"] != model_family(cfg):
        raise CheckpointError(f"{resume} holds a {data['family']} model; this config trains a {model_family(cfg)}")
    ours = {k: v for k, v in to_dict(cfg.model).items() if k != "vocab_size"}
    theirs = {k: data["config"].get(k) for k in ours}
    differ = [k for k in ours if ours[k] != theirs[k]]
    if differ:
        k = differ[0]
        raise ConfigError(f"--resume: {resume} has model.{k} = {theirs[k]!r}, this config {ours[k]!r}; resume with "
                          "the config that trained it")
    model, _ = load_checkpoint(resume)  # weights, config and tokenizer, checked together
    state, _ = load_trainer_state(resume, make_optimizer(model, cfg.train))  # optimizer moments and RNG states too
    saved = state.get("train_config", {}).get("max_steps")
    if saved not in (None, cfg.train.max_steps):
        raise ConfigError(f"resume needs the same train.max_steps as the original run ({saved}), or the schedule "
                          "would differ")
    if state["step"] >= cfg.train.max_steps:
        raise ConfigError(f"{resume} finished all {cfg.train.max_steps} steps already: there is nothing to resume "
                          "(evaluate or sample it, or start a new run from it)")


def read_corpus(cfg: DataConfig, seed: int):
    from ..text.corpus import builtin_corpus, deduplicate, read_documents, split_documents

    if cfg.paths:
        docs = read_documents(cfg.paths, normalize=None if cfg.normalize == "none" else cfg.normalize,
                              collapse_whitespace=cfg.collapse_whitespace, jsonl_field=cfg.jsonl_field)
    else:
        docs = builtin_corpus(cfg.builtin, max_bytes=cfg.max_bytes)
    removed = 0
    if cfg.dedup:
        docs, removed = deduplicate(docs)
    train_docs, val_docs = split_documents(docs, val_fraction=cfg.val_fraction, seed=seed)
    return train_docs, val_docs, {"documents": len(docs), "duplicates_removed": removed,
                                  "train_documents": len(train_docs), "val_documents": len(val_docs)}


def build_tokenizer(cfg: TokenizerConfig, train_docs):
    from ..text.tokenizers import CharTokenizer, load_tokenizer, train_bpe

    if cfg.path:
        return load_tokenizer(cfg.path)
    texts = [d.text for d in train_docs]
    if cfg.kind == "char":
        return CharTokenizer.from_texts(texts)
    return train_bpe(texts, vocab_size=cfg.vocab_size)


def prepare_data(cfg: RunConfig, work_dir: Path, world: World = World()):
    """Tokenizer and train/val token files under ``work_dir/data`` (made by rank 0 under torchrun,
    read by the others)."""
    from ..text.dataset import TokenFile, write_tokens
    from ..text.tokenizers import load_tokenizer

    data_dir = work_dir / "data"
    if not world.is_main:
        world.barrier()
        stats = json.loads((data_dir / "stats.json").read_text())
        return load_tokenizer(data_dir), TokenFile(data_dir / "train.bin"), TokenFile(data_dir / "val.bin"), stats
    train_docs, val_docs, stats = read_corpus(cfg.data, cfg.seed)
    tokenizer = build_tokenizer(cfg.tokenizer, train_docs)
    data_dir.mkdir(parents=True, exist_ok=True)
    train = write_tokens(train_docs, tokenizer, data_dir / "train.bin")
    val = write_tokens(val_docs, tokenizer, data_dir / "val.bin")
    stats.update(train_tokens=len(train), val_tokens=len(val), vocab_size=tokenizer.vocab_size)
    for name, f in (("training", train), ("validation", val)):
        if len(f) <= cfg.model.block_size:
            raise DataError(f"the {name} set has {len(f)} tokens; it needs more than model.block_size="
                            f"{cfg.model.block_size} (add text or lower block_size)")
    tokenizer.save(data_dir)
    write_json(data_dir / "stats.json", stats)
    world.barrier()
    return tokenizer, TokenFile(data_dir / "train.bin"), TokenFile(data_dir / "val.bin"), stats


def build_model(cfg: RunConfig, vocab_size: int) -> GPT | LSTM:
    model_cls, config_cls = TRAINABLE[model_family(cfg)]
    model_cfg = from_dict(config_cls, {**to_dict(cfg.model), "vocab_size": vocab_size}, prefix="model.")
    return build(model_cls, model_cfg)


def train_from_config(cfg: RunConfig, run_dir: Path, resume: str | Path | None = None,
                      world: World = World()) -> tuple[TrainResult, dict]:
    """Prepare data, build the model and train; the checkpoint lands in ``run_dir/checkpoint``.
    Under torchrun every process calls this with the same ``run_dir`` (see :mod:`.distributed`)."""
    threads = set_threads(cfg.train.threads)
    seed_everything(cfg.seed)
    tokenizer, train, val, stats = prepare_data(cfg, run_dir, world)
    model = build_model(cfg, tokenizer.vocab_size)
    if resume:  # the weights before the trainer: FSDP shards them when it is made
        from .checkpoint import load_model_from_checkpoint

        check_resume(cfg, resume)
        model.load_state_dict(load_model_from_checkpoint(resume).state_dict())
    trainer = Trainer(model, cfg.train, train, val, tokenizer=tokenizer, seed=cfg.seed,
                      checkpoint_dir=run_dir / "checkpoint", world=world)
    if resume:
        trainer.resume(resume)
    before = trainer.evaluate()
    result = trainer.train()
    summary = {"data": stats, "threads": threads, "params": model.num_params(), "val_loss_before": before,
               "steps": result.steps, "train_loss": result.train_loss, "val_loss": result.val_loss,
               "best_val_loss": result.best_val_loss, "stopped_early": result.stopped_early,
               "tokens_per_second": result.tokens_per_second, "checkpoint": str(run_dir / "checkpoint"),
               "processes": world.size}
    if world.is_main:
        write_json(run_dir / "results.json", summary)
    return result, summary
