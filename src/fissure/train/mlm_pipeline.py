"""From a TOML config with ``task = "mlm"`` to a trained BERT checkpoint: read text, fit a WordPiece
tokenizer, build sentence pairs, train with :class:`~fissure.train.mlm.MaskedLM` through the shared
:class:`~fissure.train.trainer.Trainer`. The causal-LM counterpart is :mod:`.pipeline`, whose
``[data]`` table this one shares."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from ..config import check_range, from_dict, to_dict
from ..errors import CheckpointError, ConfigError
from ..models.bert import Bert, BertConfig
from ..models.limits import LIMITS, build
from ..runs import write_json
from ..utils import check_seed, seed_everything, set_threads
from .mlm import MaskedLM, PretrainingPairs, build_pairs, split_sentences
from .pipeline import DataConfig, read_corpus
from .trainer import Trainer, TrainConfig


@dataclass
class WordPieceConfig:
    vocab_size: int = 8000
    min_frequency: int = 2
    lowercase: bool = True  # BERT "uncased": lower case, accents stripped
    path: str = ""  # reuse a saved WordPiece tokenizer.json (or checkpoint directory) instead of fitting one

    def __post_init__(self) -> None:
        check_range("tokenizer.vocab_size", self.vocab_size, 16, LIMITS["vocab_size"], integer=True)
        check_range("tokenizer.min_frequency", self.min_frequency, 1, 2**31, integer=True)


@dataclass
class MLMConfig:
    mask_prob: float = 0.15
    whole_word: bool = False  # mask every piece of a word or none (word starts: pieces without "##")
    nsp: bool = True  # next-sentence prediction on [CLS] A [SEP] B [SEP] pairs

    def __post_init__(self) -> None:
        check_range("mlm.mask_prob", self.mask_prob, 0, 1, lo_open=True, hi_open=True)


def _bert_defaults() -> BertConfig:  # small enough to train on a laptop; BERT-base is BertConfig()
    return BertConfig(vocab_size=8000, block_size=128, n_layer=4, n_head=4, n_embd=256, intermediate_size=1024)


@dataclass
class MLMRunConfig:
    task: str = "mlm"
    seed: int = 0
    out_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: WordPieceConfig = field(default_factory=WordPieceConfig)
    model: BertConfig = field(default_factory=_bert_defaults)  # vocab_size and pad_token_id come from the tokenizer
    mlm: MLMConfig = field(default_factory=MLMConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(objective="mlm"))

    def __post_init__(self) -> None:
        check_seed(self.seed)
        if self.task != "mlm":
            raise ValueError(f"task must be 'mlm' here, not {self.task!r}")
        if not self.out_dir:
            raise ValueError("out_dir must name a folder")
        if self.train.objective != "mlm":
            raise ValueError(f"task = 'mlm' trains with train.objective = 'mlm', not {self.train.objective!r}")


def load_config(raw: dict) -> MLMRunConfig:
    raw = {**raw, "train": {"objective": "mlm", **raw.get("train", {})}}
    cfg = from_dict(MLMRunConfig, raw)
    if not cfg.data.paths and not cfg.data.builtin:
        raise ConfigError("config needs data.paths (files or folders of text) or data.builtin (e.g. 'stdlib-docs')")
    return cfg


def check_resume(cfg: MLMRunConfig, resume: str | Path) -> None:
    """Before anything is written: ``resume`` is a BERT checkpoint of this config's shape with steps left."""
    from .checkpoint import load_checkpoint, load_trainer_state, read_model_config
    from .trainer import make_optimizer

    data = read_model_config(resume)
    if data["family"] != "bert":
        raise CheckpointError(f"{resume} holds a {data['family']} model; task = 'mlm' continues BERT checkpoints")
    ours = {k: v for k, v in to_dict(cfg.model).items() if k not in ("vocab_size", "pad_token_id")}
    differ = [k for k in ours if ours[k] != data["config"].get(k)]
    if differ:
        k = differ[0]
        raise ConfigError(f"--resume: {resume} has model.{k} = {data['config'].get(k)!r}, this config {ours[k]!r}; "
                          "resume with the config that trained it")
    model, _ = load_checkpoint(resume)
    state, _ = load_trainer_state(resume, make_optimizer(model, cfg.train))
    if state.get("train_config", {}).get("max_steps") not in (None, cfg.train.max_steps):
        raise ConfigError("resume needs the same train.max_steps as the original run, or the schedule would differ")
    if state["step"] >= cfg.train.max_steps:
        raise ConfigError(f"{resume} finished all {cfg.train.max_steps} steps already: there is nothing to resume")


def build_tokenizer(cfg: WordPieceConfig, train_docs):
    from ..text.tokenizers import WordPieceTokenizer, load_tokenizer, train_wordpiece

    if cfg.path:
        tokenizer = load_tokenizer(cfg.path)
        if not isinstance(tokenizer, WordPieceTokenizer):
            raise ConfigError(f"tokenizer.path {cfg.path} holds a {tokenizer.name} tokenizer; BERT needs WordPiece "
                              "with [PAD] [UNK] [CLS] [SEP] [MASK]")
        return tokenizer
    return train_wordpiece((d.text for d in train_docs), vocab_size=cfg.vocab_size,
                           min_frequency=cfg.min_frequency, lowercase=cfg.lowercase)


def make_pairs(docs, tokenizer, cfg: MLMRunConfig, seed: int, label: str) -> PretrainingPairs:
    """Each document's sentences, tokenized in order, packed into BERT rows."""
    sentences = [split_sentences(d.text) for d in docs]
    flat = tokenizer.encode_batch([s for doc in sentences for s in doc])
    documents, start = [], 0
    for doc in sentences:
        documents.append(flat[start:start + len(doc)])
        start += len(doc)
    pairs = build_pairs(documents, cfg.model.block_size, tokenizer.cls_id, tokenizer.sep_id, cfg.mlm.nsp,
                        random.Random(seed))
    return PretrainingPairs(pairs, tokenizer, cfg.mlm.nsp, label=label)


def train(cfg: MLMRunConfig, run_dir: Path, resume: str | Path | None = None) -> dict:
    """Prepare data, build the BERT and train; the checkpoint lands in ``run_dir/checkpoint``."""
    threads = set_threads(cfg.train.threads)
    seed_everything(cfg.seed)
    if resume:
        cfg.tokenizer.path = str(resume)
    train_docs, val_docs, stats = read_corpus(cfg.data, cfg.seed)
    tokenizer = build_tokenizer(cfg.tokenizer, train_docs)
    train_data = make_pairs(train_docs, tokenizer, cfg, cfg.seed, "training pairs")
    val_data = make_pairs(val_docs, tokenizer, cfg, cfg.seed + 1, "validation pairs")
    stats.update(vocab_size=tokenizer.vocab_size, train_pairs=len(train_data), val_pairs=len(val_data))
    tokenizer.save(run_dir / "data")
    write_json(run_dir / "data" / "stats.json", stats)
    model_cfg = from_dict(BertConfig, {**to_dict(cfg.model), "vocab_size": tokenizer.vocab_size,
                                       "pad_token_id": tokenizer.pad_id}, prefix="model.")
    model = build(Bert, model_cfg)
    if resume:
        from .checkpoint import load_model_from_checkpoint

        check_resume(cfg, resume)
        model.load_state_dict(load_model_from_checkpoint(resume).state_dict())
    objective = MaskedLM(mask_prob=cfg.mlm.mask_prob, whole_word=cfg.mlm.whole_word, eval_seed=cfg.seed)
    trainer = Trainer(model, cfg.train, train_data, val_data, tokenizer=tokenizer, seed=cfg.seed,
                      checkpoint_dir=run_dir / "checkpoint", objective=objective, block_size=cfg.model.block_size)
    if resume:
        trainer.resume(resume)
    before = trainer.evaluate()
    result = trainer.train()
    last = result.history[-1] if result.history else {}
    summary = {"task": "mlm", "data": stats, "threads": threads, "params": model.num_params(),
               "val_loss_before": before, "steps": result.steps, "train_loss": result.train_loss,
               "val_loss": result.val_loss, "best_val_loss": result.best_val_loss,
               "train_mlm_loss": last.get("train_mlm_loss"), "train_nsp_accuracy": last.get("train_nsp_accuracy"),
               "stopped_early": result.stopped_early, "tokens_per_second": result.tokens_per_second,
               "checkpoint": str(run_dir / "checkpoint")}
    summary = {k: v for k, v in summary.items() if v is not None}
    write_json(run_dir / "results.json", summary)
    return summary
