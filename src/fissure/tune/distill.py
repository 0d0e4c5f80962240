"""Knowledge distillation: train a small GPT on a teacher's soft next-token distributions and
measure what the teacher bought.

A run trains the same student twice, with the same seed, data and steps: once with the teacher
(the ``distill`` objective, :func:`~fissure.train.objectives.distillation_loss`) and once without
it (plain next-token cross-entropy, the baseline), then scores both students and the teacher on
the same held-out text in bits per byte, with bootstrap intervals and a paired interval of the
difference distilled - baseline.

The teacher is any local model fissure runs (a name such as ``smollm2``, a fissure checkpoint, an
HF Llama directory, a GGUF file): its logits over the token ids the student reads. So the student
is our GPT with the teacher's vocabulary, trained on text tokenized with the teacher's tokenizer,
and its checkpoint carries that tokenizer (any verb loads it).

Layout of the run directory: ``data/`` (tokenizer and token files), ``distilled/`` and
``baseline/`` (checkpoints with trainer state), ``results.json``. Rerunning on the same directory
(``fissure distill --resume RUN_DIR``) continues each arm from its checkpoint and skips finished arms.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..backends import TorchLM, load
from ..config import check_range, from_dict, to_dict
from ..errors import ConfigError, DataError
from ..metrics.lm import summarise_scores
from ..metrics.stats import bootstrap_interval
from ..models import GPT, GPTConfig
from ..models.limits import build
from ..runs import write_json
from ..text.corpus import Document
from ..train import Trainer
from ..train.objectives import CausalLM, Distill
from ..train.trainer import TrainConfig
from ..utils import check_seed, seed_everything, set_threads

Log = Callable[[str], None]
ARMS = ("distilled", "baseline")


@dataclass
class DistillSettings:
    teacher: str = ""  # a local model spec
    data: str = ""  # a domain of `fissure data list`, or a text file / folder
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the soft (teacher) term; 1 - alpha on the hard labels
    baseline: bool = True  # also train the same student without the teacher
    teacher_dtype: str = "fp32"  # "bf16" runs the teacher ~3x faster where the CPU has AVX-512 BF16 (soft targets rounded)
    max_bytes: int = 1_000_000  # cap on a named domain
    val_fraction: float = 0.1
    eval_bytes: int = 40_000  # held-out bytes every model is scored on
    passage_chars: int = 2000  # held-out documents are cut into passages of about this size (bootstrap units)

    def __post_init__(self) -> None:
        if not self.teacher:
            raise ValueError("distill.teacher must name a local model")
        if not self.data:
            raise ValueError("distill.data must name a domain of `fissure data list` or a text file / folder")
        if self.teacher_dtype not in ("fp32", "bf16"):
            raise ValueError(f"distill.teacher_dtype must be 'fp32' or 'bf16', not {self.teacher_dtype!r}")
        check_range("distill.temperature", self.temperature, 0, lo_open=True)
        check_range("distill.alpha", self.alpha, 0, 1)
        check_range("distill.max_bytes", self.max_bytes, 1, 2**40, integer=True)
        check_range("distill.val_fraction", self.val_fraction, 0, 1, lo_open=True, hi_open=True)
        check_range("distill.eval_bytes", self.eval_bytes, 1, 2**40, integer=True)
        check_range("distill.passage_chars", self.passage_chars, 100, 2**30, integer=True)


@dataclass
class DistillConfig:
    seed: int = 0
    out_dir: str = "runs"
    distill: DistillSettings = field(default_factory=DistillSettings)
    model: GPTConfig = field(default_factory=GPTConfig)  # vocab_size is the teacher's
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        check_seed(self.seed)
        if not self.out_dir:
            raise ValueError("out_dir must name a folder")


# What a `fissure train` config holds that a student does not use: the data come from --data, the
# tokenizer is the teacher's.
REPLACED = ("data", "tokenizer")


def load_distill_config(raw: dict) -> DistillConfig:
    """A student config (a ``fissure train`` TOML: its [model] and [train]) plus a [distill] table.
    Its [data] and its [tokenizer] kind are replaced (by --data and the teacher's tokenizer); a
    tokenizer file or a vocabulary size it names would be ignored, so it is an error."""
    raw = dict(raw)
    tokenizer = raw.get("tokenizer", {})
    if isinstance(tokenizer, dict) and tokenizer.get("path"):
        raise ConfigError("the student config sets tokenizer.path: a distilled student uses the teacher's tokenizer "
                          "(remove it)")
    model = raw.get("model", {})
    if isinstance(model, dict) and "vocab_size" in model:
        raise ConfigError("the student config sets model.vocab_size: a distilled student takes the teacher's "
                          "vocabulary (remove it)")
    for name in REPLACED:
        raw.pop(name, None)
    raw.setdefault("model", {})["vocab_size"] = 256  # a placeholder checked by GPTConfig; the teacher's replaces it
    cfg = from_dict(DistillConfig, raw)
    spec = cfg.distill.teacher
    if spec.startswith(("http://", "https://")):
        raise ConfigError(f"teacher {spec}: only a local model can teach (its logits over the whole vocabulary are "
                          "needed at every step); a served model gives at most a few log-probabilities")
    return cfg


def load_teacher(cfg: DistillConfig) -> TorchLM:
    spec = cfg.distill.teacher
    lm = load(spec, fuse=False, batch_size=cfg.train.batch_size, dtype=cfg.distill.teacher_dtype)
    if not isinstance(lm, TorchLM):
        raise ConfigError(f"teacher {spec} is served by the {lm.capabilities.backend} backend: only a model fissure "
                          "runs natively can teach")
    if cfg.model.block_size > lm.model.max_positions:
        raise ConfigError(f"model.block_size {cfg.model.block_size} exceeds the teacher's context of "
                          f"{lm.model.max_positions} tokens")
    student_tokenizer(lm)  # one that a student checkpoint can carry
    return lm


def read_data(name: str, max_bytes: int) -> list[Document]:
    """A named domain of the catalogue (capped at ``max_bytes``), or else a text file / folder (a
    folder named like a domain is read as ``./docs``)."""
    from ..text.catalogue import DOMAINS, get_domain, load_domain
    from ..text.corpus import read_documents

    if name in DOMAINS or not Path(name).exists():
        get_domain(name)  # a one-line error naming the known domains
        docs = load_domain(name, max_bytes=max_bytes)
    else:
        docs = read_documents([name])
    if len(docs) < 2 and sum(len(d.text) for d in docs) < 1000:
        raise DataError(f"--data {name}: too little text to train and evaluate on")
    return docs


def student_tokenizer(lm: TorchLM):
    """The teacher's tokenizer as a fissure tokenizer, which a student checkpoint can carry."""
    from tokenizers import Tokenizer as HFTokenizer

    from ..text.tokenizers import EOS_TOKEN, BPETokenizer, Tokenizer

    tokenizer = lm.tokenizer
    if isinstance(tokenizer, Tokenizer):  # a fissure checkpoint's own tokenizer
        return tokenizer
    backend = getattr(getattr(tokenizer, "hf", None), "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(f"teacher {lm.capabilities.name}: its tokenizer is not a fast (tokenizers) tokenizer, which a "
                          "student checkpoint could carry")
    copy = HFTokenizer.from_str(backend.to_str())  # BPETokenizer sets options on it: keep the teacher's untouched
    if copy.token_to_id(EOS_TOKEN) is None:
        raise ConfigError(f"teacher {lm.capabilities.name}: its tokenizer has no {EOS_TOKEN} token to separate documents")
    ours = BPETokenizer(copy)
    probe = "def f(x):\n    return x  # ok"
    if ours.encode(probe) != list(tokenizer.encode(probe)):
        raise ConfigError(f"teacher {lm.capabilities.name}: its tokenizer encodes differently outside transformers")
    return ours


def vocab_size_of(model: torch.nn.Module) -> int:
    """Width of the teacher's logits (its config's vocabulary, padding included)."""
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    if not size:
        raise ConfigError(f"{type(model).__name__} does not say its vocabulary size")
    return int(size)


def held_out_passages(val_docs: list[Document], passage_chars: int, eval_bytes: int) -> list[str]:
    """The first ``eval_bytes`` of the held-out documents, as passages (the bootstrap's units)."""
    from .data import passages

    out, total = [], 0
    for doc in val_docs:
        for passage in passages(doc, passage_chars):
            size = len(passage.text.encode("utf-8"))
            if total + size > eval_bytes and out:
                return out
            out.append(passage.text)
            total += size
    return out


def prepare(cfg: DistillConfig, lm: TorchLM, docs: list[Document], run_dir: Path):
    from ..text.corpus import split_documents
    from ..text.dataset import write_tokens

    tokenizer = student_tokenizer(lm)
    train_docs, val_docs = split_documents(docs, val_fraction=cfg.distill.val_fraction, seed=cfg.seed)
    data_dir = run_dir / "data"
    train = write_tokens(train_docs, tokenizer, data_dir / "train.bin")
    val = write_tokens(val_docs, tokenizer, data_dir / "val.bin")
    tokenizer.save(data_dir)
    for name, f in (("training", train), ("validation", val)):
        if len(f) <= cfg.model.block_size:
            raise DataError(f"the {name} set has {len(f)} tokens; it needs more than model.block_size="
                            f"{cfg.model.block_size} (more --data or a smaller block_size)")
    texts = held_out_passages(val_docs, cfg.distill.passage_chars, cfg.distill.eval_bytes)
    stats = {"documents": len(docs), "train_documents": len(train_docs), "val_documents": len(val_docs),
             "train_tokens": len(train), "val_tokens": len(val), "eval_passages": len(texts),
             "eval_bytes": sum(len(t.encode("utf-8")) for t in texts)}
    return tokenizer, train, val, texts, stats


def train_arm(arm: str, cfg: DistillConfig, teacher: TorchLM, tokenizer, train, val, run_dir: Path,
              log: Log) -> tuple[GPT, dict]:
    """One student: with the teacher (``distilled``) or without it (``baseline``); continues from
    its checkpoint in ``run_dir`` when there is one."""
    from ..train.checkpoint import load_model_from_checkpoint

    seed_everything(cfg.seed)
    model_cfg = from_dict(GPTConfig, {**to_dict(cfg.model), "vocab_size": vocab_size_of(teacher.model)},
                          prefix="model.")
    model = build(GPT, model_cfg)
    objective = Distill(teacher.model, cfg.distill.temperature, cfg.distill.alpha) if arm == "distilled" else CausalLM()
    checkpoint = run_dir / arm
    state_file = checkpoint / "trainer_state.json"
    done = json.loads(state_file.read_text())["step"] if state_file.is_file() else 0
    if done:
        model.load_state_dict(load_model_from_checkpoint(checkpoint).state_dict())
    trainer = Trainer(model, cfg.train, train, val, tokenizer=tokenizer, seed=cfg.seed, checkpoint_dir=checkpoint,
                      objective=objective)
    if done >= cfg.train.max_steps:
        log(f"{arm}: finished in an earlier run ({done} steps)")
        state = json.loads(state_file.read_text())
        return model.eval(), {"steps": done, "seconds": None, "history": state.get("history", [])}
    if done:
        trainer.resume(checkpoint)
        log(f"{arm}: resuming at step {done}")
    t0 = time.perf_counter()
    result = trainer.train()
    return model.eval(), {"steps": result.steps, "seconds": time.perf_counter() - t0,
                          "tokens_per_second": result.tokens_per_second, "train_loss": result.train_loss,
                          "val_loss": result.val_loss, "history": result.history}


def score(lm: TorchLM, texts: list[str], window: int, label: str) -> tuple[dict, np.ndarray, np.ndarray]:
    """Bits per byte of ``texts`` (windows of ``window`` tokens), and each passage's nats and bytes."""
    scores = lm.loglikelihood_rolling(texts, window=window)
    summary = summarise_scores(scores, prefix_token=lm.start_token, tokenizer=label)
    nats = np.asarray([-s.loglikelihood for s in scores])
    nbytes = np.asarray([s.bytes for s in scores], dtype=np.float64)
    return summary, nats, nbytes


def paired_difference(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> dict | None:
    """Bits per byte of ``a`` minus ``b`` on the same passages, with a paired bootstrap interval
    (passages resampled together for both models)."""
    (nats_a, bytes_a), (nats_b, _) = a, b
    if nats_a.size < 2:
        return None

    def statistic(index: np.ndarray) -> float:
        rows = index.astype(np.intp)
        return float((nats_a[rows].sum() - nats_b[rows].sum()) / (bytes_a[rows].sum() * math.log(2)))

    return bootstrap_interval(np.arange(nats_a.size), statistic).as_dict()


def run_distill(cfg: DistillConfig, teacher: TorchLM, docs: list[Document], run_dir: Path, log: Log) -> dict:
    threads = set_threads(cfg.train.threads)
    tokenizer, train, val, texts, stats = prepare(cfg, teacher, docs, run_dir)
    arms = ARMS if cfg.distill.baseline else ARMS[:1]
    window = cfg.model.block_size  # every model reads the same context
    name = f"{Path(cfg.distill.teacher).name}|vocab={tokenizer.vocab_size}"
    results: dict = {"teacher": cfg.distill.teacher, "data": cfg.distill.data, "data_stats": stats,
                     "threads": threads, "seed": cfg.seed, "window": window,
                     "temperature": cfg.distill.temperature, "alpha": cfg.distill.alpha,
                     "teacher_dtype": cfg.distill.teacher_dtype, "arms": {}}
    per_passage = {}
    for arm in arms:
        log(f"training the {arm} student")
        model, summary = train_arm(arm, cfg, teacher, tokenizer, train, val, run_dir, log)
        student = TorchLM(model, tokenizer, name=arm, batch_size=cfg.train.batch_size)
        scored, *per_passage[arm] = score(student, texts, window, name)
        results["arms"][arm] = {"params": model.num_params(), "checkpoint": str(run_dir / arm), **scored,
                                **{k: v for k, v in summary.items() if k != "history"}}
    log("scoring the teacher")
    teacher_scored, *per_passage["teacher"] = score(teacher, texts, window, name)
    results["teacher_scores"] = teacher_scored
    results["teacher_params"] = sum(p.numel() for p in teacher.model.parameters())
    if "baseline" in per_passage:
        results["distilled_minus_baseline_bpb"] = paired_difference(per_passage["distilled"], per_passage["baseline"])
    write_json(run_dir / "results.json", results)
    return results
