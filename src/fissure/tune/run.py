"""A fine-tuning run: load the base through the backends, adapt it (LoRA or full), train it with
the one Trainer, and write a checkpoint every verb can load.

What is written where:

- LoRA: an *adapter checkpoint* (``adapter_model.safetensors``, ``adapter_config.json`` and
  ``fissure.json`` with the base spec and the SHA-256 of its weights); ``fissure.load`` on it
  loads the base, checks the hash, and merges the adapter;
- full fine-tuning of a Llama (SmolLM2 included): an HF ``LlamaForCausalLM`` directory that
  ``transformers`` loads with ``from_pretrained``; of our GPT: a fissure checkpoint; of a model
  run through transformers: ``save_pretrained``;
- a classifier also writes its head (``head.safetensors``) and its label set;
- every checkpoint carries what resuming needs (optimizer, RNG, step), so ``--resume`` continues
  exactly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..backends import TorchLM, load
from ..errors import ConfigError, DataError
from ..metrics.classify import classification_report
from ..models.classifier import SequenceClassifier
from ..runs import write_json
from ..train import Trainer
from ..train.batches import LabelledSequences, PreferencePairs, SupervisedExamples
from ..train.checkpoint import (read_adapter, read_tuned_meta, weights_sha256, write_adapter, write_model_files,
                                write_tuned_meta)
from ..train.lora import apply_lora, load_adapter_state, resolve_targets
from ..train.objectives import DPO, OBJECTIVES, MultiTask, Task, sequence_logprobs
from ..utils import bf16_verdict, seed_everything, set_threads
from .config import TuneConfig
from .data import KIND_OBJECTIVE, TuningData, split
from .examples import build_examples, labelled_rows

Log = Callable[[str], None]
# which objectives each kind of data can train
FITS = {"text": ("causal_lm",), "chat": ("sft", "causal_lm"), "pairs": ("sft", "causal_lm"),
        "preferences": ("dpo",), "labelled": ("classify",)}


def objective_for(requested: str, data: TuningData) -> str:
    name = KIND_OBJECTIVE[data.kind] if requested == "auto" else requested
    if name not in FITS[data.kind]:
        raise ConfigError(f"objective '{name}' does not fit {data.kind} data ({data.source}); "
                          f"it fits: {', '.join(FITS[data.kind])}")
    return name


def base_spec(spec: str) -> str:
    """The spec to store in a checkpoint: registered names as they are, paths made absolute."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def load_base(config: TuneConfig) -> TorchLM:
    lm = load(config.model, backend=config.backend, batch_size=config.train.batch_size, fuse=False)
    if not isinstance(lm, TorchLM):
        raise ConfigError(f"{config.model} is served by the {lm.capabilities.backend} backend: only local "
                          "models can be fine-tuned")
    if config.max_length > lm.model.max_positions:
        raise ConfigError(f"max_length {config.max_length} exceeds the model's context of {lm.model.max_positions} "
                          "tokens: lower --max-length")
    return lm


def _hidden_size(model: torch.nn.Module) -> int:
    size = getattr(model.config, "n_embd", None)
    if not size:
        raise ConfigError(f"{type(model).__name__} does not say its hidden size: it cannot carry a classifier")
    return size


def adapt_base(lm: TorchLM, config: TuneConfig) -> None:
    """LoRA on the base's projections (only the adapter trains), or every weight trainable."""
    base = lm.model
    if config.method == "lora":
        config.lora.targets = resolve_targets(base, config.lora.targets)
        apply_lora(base, config.lora)
    else:
        for p in base.parameters():
            p.requires_grad_(True)


@dataclass
class TaskRun:
    """One task of the run: its data, objective, the module its loss runs, and its splits."""

    name: str
    data: TuningData
    objective: str
    module: torch.nn.Module
    weight: float = 1.0
    train: object = None
    val: object = None

    @property
    def classifier(self) -> SequenceClassifier | None:
        return self.module if isinstance(self.module, SequenceClassifier) else None


def build_datasets(lm: TorchLM, config: TuneConfig, data: TuningData, work_dir: Path, log: Log):
    """Training and validation data in the Trainer's batch protocol, split by document or row."""
    pad = lm.tokenizer.eos_id
    if data.kind == "text":
        from ..text.dataset import TokenFile, write_tokens

        train_docs, val_docs = split(data.documents, config.val_fraction, config.seed)
        out = []
        for name, docs in (("train", train_docs), ("val", val_docs)):
            tokens = write_tokens(docs, lm.tokenizer, work_dir / "data" / f"{name}.bin")
            if len(tokens) <= config.max_length:
                raise DataError(f"the {name} split has {len(tokens)} tokens; it needs more than max_length="
                                f"{config.max_length} (add text, or lower --max-length)")
            out.append(TokenFile(tokens.path, label=f"{name} split"))
        return out[0], out[1]
    train_rows, val_rows = split(data.rows, config.val_fraction, config.seed)
    sets = []
    for name, rows in (("train", train_rows), ("val", val_rows)):
        if data.kind == "labelled":
            encoded, note = labelled_rows(lm, rows, config.text_column, config.label_column, data.labels,
                                          config.max_length)
            sets.append(LabelledSequences(encoded, pad, label=f"{name} split"))
        else:
            examples, note = build_examples(lm, data.kind, rows, config.max_length)
            cls = PreferencePairs if data.kind == "preferences" else SupervisedExamples
            sets.append(cls(examples, pad, label=f"{name} split"))
        if note:
            log(f"{name} split: {note}")
    return sets[0], sets[1]


@torch.no_grad()
def reference_logprobs(model: torch.nn.Module, pairs: PreferencePairs, batch_size: int) -> None:
    """Log-probabilities of every chosen and rejected completion under the model before tuning (the
    DPO reference: the base, as a LoRA adapter starts at zero)."""
    model.eval()
    reference = []
    for start in range(0, len(pairs), batch_size):
        index = range(start, min(start + batch_size, len(pairs)))
        x, y, _ = pairs.batch(index)
        logps = sequence_logprobs(model(x), y).double()
        n = len(index)
        reference += list(zip(logps[:n].tolist(), logps[n:].tolist()))
    pairs.reference = reference
    model.train()


def writer_for(lm: TorchLM, tasks: list[TaskRun], config: TuneConfig, meta: dict) -> Callable[[Path], None]:
    """What goes into every checkpoint of this run (see the module docstring)."""
    from safetensors.torch import save_file

    def write(directory: Path) -> None:
        if config.method == "lora":
            write_adapter(directory, lm.model)
        else:
            write_model_files(directory, lm.model, lm.tokenizer)
        for task in tasks:
            if task.classifier is not None:
                save_file({k: v.contiguous() for k, v in task.classifier.head.state_dict().items()},
                          str(directory / _head_file(task, tasks)))
        write_tuned_meta(directory, meta)

    return write


def _head_file(task: TaskRun, tasks: list[TaskRun]) -> str:
    return "head.safetensors" if len(tasks) == 1 else f"head-{task.name}.safetensors"


def _resume_weights(lm: TorchLM, tasks: list[TaskRun], config: TuneConfig, checkpoint: Path, base_sha: str) -> None:
    meta = read_tuned_meta(checkpoint)
    if meta is None:
        raise ConfigError(f"{checkpoint} is not a checkpoint of fissure tune (no fissure.json)")
    if meta.get("base_sha256") != base_sha or meta.get("method") != config.method:
        raise ConfigError(f"{checkpoint} was tuned from another base or with another method: resume it with "
                          "its own config")
    if config.method == "lora":
        load_adapter_state(lm.model, read_adapter(checkpoint)[1])
    else:
        weights = load(str(checkpoint), fuse=False).model.state_dict()
        lm.model.load_state_dict(weights)
    for task in tasks:
        if task.classifier is not None:
            from safetensors.torch import load_file

            task.classifier.head.load_state_dict(load_file(str(checkpoint / _head_file(task, tasks))))


@torch.no_grad()
def classifier_metrics(model: SequenceClassifier, data: LabelledSequences, labels: list[str],
                       batch_size: int) -> dict:
    model.eval()
    probs, gold = [], []
    for ids, mask, y in data.iter_batches(batch_size, 0):
        probs.append(model(ids, attention_mask=mask).float().softmax(-1))
        gold += y.tolist()
    model.train()
    return classification_report(gold, torch.cat(probs).double().numpy(), labels)


def _task_name(data: TuningData, taken: set[str]) -> str:
    name = re.sub(r"\W+", "-", Path(data.source.removeprefix("data:")).stem).strip("-") or "task"
    while name in taken:
        name += "-2"
    return name


def run_tune(config: TuneConfig, data: TuningData | list[TuningData], run_dir: Path, *,
             resume: Path | None = None, log: Log = lambda m: None) -> dict:
    """Fine-tune ``config.model`` on ``data`` (one task, or several as a weighted mixture: weights from
    ``config.weights``); the checkpoint lands in ``run_dir/checkpoint``."""
    threads = set_threads(config.train.threads)
    seed_everything(config.seed)
    datas = data if isinstance(data, list) else [data]
    weights = config.weights or [1.0] * len(datas)
    if len(weights) != len(datas):
        raise ConfigError(f"{len(weights)} weights for {len(datas)} data sources")
    objectives = [objective_for(config.objective if len(datas) == 1 else "auto", d) for d in datas]
    config.train.objective = objectives[0] if len(datas) == 1 else "multitask"
    lm = load_base(config)
    base_sha = weights_sha256(lm.model)
    adapt_base(lm, config)
    tasks, taken = [], set()
    for d, objective, weight in zip(datas, objectives, weights):
        module = (SequenceClassifier(lm.model, len(d.labels), _hidden_size(lm.model), pooling=config.pooling)
                  if objective == "classify" else lm.model)
        task = TaskRun(_task_name(d, taken), d, objective, module, weight)
        taken.add(task.name)
        work = run_dir if len(datas) == 1 else run_dir / "tasks" / task.name
        task.train, task.val = build_datasets(lm, config, d, work, log)
        if objective == "dpo":
            for pairs in (task.train, task.val):
                reference_logprobs(lm.model, pairs, config.train.batch_size)
        tasks.append(task)

    def loss_of(task: TaskRun):
        return DPO(config.beta) if task.objective == "dpo" else OBJECTIVES[task.objective]()

    if len(tasks) == 1:
        model, loss = tasks[0].module, loss_of(tasks[0])
        train_data, val_data = tasks[0].train, tasks[0].val
    else:
        model = torch.nn.ModuleList([lm.model, *(t.classifier for t in tasks if t.classifier is not None)])
        loss = MultiTask([Task(t.name, loss_of(t), t.module, t.weight) for t in tasks])
        train_data, val_data = [t.train for t in tasks], [t.val for t in tasks]
    meta = {"kind": "adapter" if config.method == "lora" else "full", "base": base_spec(config.model),
            "base_sha256": base_sha, "method": config.method, "objective": config.train.objective,
            "lora": asdict(config.lora) if config.method == "lora" else None,
            "tasks": [{"name": t.name, "objective": t.objective, "weight": t.weight, "source": t.data.source,
                       "classes": t.data.labels or None, "head": _head_file(t, tasks) if t.classifier else None}
                      for t in tasks],
            "pooling": config.pooling if "classify" in objectives else None, "max_length": config.max_length}
    trainer = Trainer(model, config.train, train_data, val_data, block_size=config.max_length, seed=config.seed,
                      checkpoint_dir=run_dir / "checkpoint", objective=loss, writer=writer_for(lm, tasks, config, meta))
    if resume is not None:
        _resume_weights(lm, tasks, config, Path(resume), base_sha)
        trainer.resume(resume)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    for t in tasks:
        log(f"{t.name}: {t.objective} on {t.data.kind} data ({len(t.train)} train, {len(t.val)} val), weight "
            f"{t.weight:g}")
    why = f" (auto: {bf16_verdict()[1]})" if config.train.dtype == "auto" else ""
    log(f"{config.method}: {trainable:,} of {sum(p.numel() for p in model.parameters()):,} parameters train; "
        f"dtype {trainer.dtype}{why}")
    before = trainer.evaluate()
    result = trainer.train()
    summary = {
        "model": config.model, "base_sha256": base_sha, "method": config.method,
        "objective": config.train.objective,
        "data": _data_summary(tasks[0]) if len(tasks) == 1 else None,
        "tasks": [{"name": t.name, "weight": t.weight, "objective": t.objective, **_data_summary(t)} for t in tasks],
        "trainable_parameters": trainable, "dtype": trainer.dtype, "threads": threads,
        "steps": result.steps, "train_loss": result.train_loss, "val_loss_before": before,
        "val_loss": result.val_loss, "best_val_loss": result.best_val_loss, "stopped_early": result.stopped_early,
        "tokens_per_second": result.tokens_per_second, "checkpoint": str(run_dir / "checkpoint"),
        "history": result.history,
    }
    for t in tasks:
        if t.classifier is not None:
            report = classifier_metrics(t.classifier, t.val, t.data.labels, config.train.batch_size)
            summary["classification" if len(tasks) == 1 else f"classification_{t.name}"] = report
        if t.objective == "dpo":
            summary["dpo" if len(tasks) == 1 else f"dpo_{t.name}"] = {
                "val": _dpo_val(lm.model, t.val, DPO(config.beta), config.train.batch_size)}
    if len(tasks) == 1 and result.val_loss is not None and math.isfinite(result.val_loss) \
            and tasks[0].objective in ("causal_lm", "sft"):
        summary["val_perplexity"] = math.exp(min(result.val_loss, 50))
    write_json(run_dir / "results.json", summary)
    return summary


def _data_summary(task: TaskRun) -> dict:
    return {"source": task.data.source, "kind": task.data.kind, "train": len(task.train), "val": len(task.val),
            "unit": "tokens" if task.data.kind == "text" else "examples", "labels": task.data.labels or None}


@torch.no_grad()
def _dpo_val(model, pairs: PreferencePairs, objective: DPO, batch_size: int) -> dict:
    model.eval()
    totals: dict[str, float] = {}
    batches = 0
    for batch in pairs.iter_batches(batch_size, 0):
        objective.loss(model, batch)
        for k, v in objective.last.items():
            totals[k] = totals.get(k, 0.0) + v
        batches += 1
    model.train()
    return {k: v / batches for k, v in totals.items()}
