"""One Trainer for every objective: AdamW, warmup + cosine, clipping, accumulation,
optional bf16 autocast and torch.compile, periodic evaluation, early stopping, checkpoints
and exact resume."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import check_range
from ..errors import ConfigError
from ..utils import check_threads, resolve_dtype
from .checkpoint import load_trainer_state, save_checkpoint
from .distributed import FullStateTwin, World, check_batch, shard_model
from .objectives import OBJECTIVES


MAX_STEPS = 10**9  # far beyond any run, small enough for every counter and schedule
MAX_BATCH = 2**16  # sequences per micro-batch (grad_accum multiplies it): more would not fit in memory


@dataclass
class TrainConfig:
    objective: str = "causal_lm"
    max_steps: int = 1000
    batch_size: int = 16
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    dtype: str = "fp32"  # "fp32" | "bf16" (autocast) | "auto" (bf16 where the CPU computes it natively)
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more time
    compile: bool = False  # torch.compile the model
    parallel: str = "ddp"  # under torchrun: "ddp" (a replica per process) | "fsdp" (weights, gradients, moments sharded)
    eval_every: int = 100
    eval_batches: int = 20
    early_stopping_patience: int = 0  # evaluations without improvement before stopping; 0 = off
    save_every: int = 0  # 0 = only at the end
    threads: int = 0  # torch threads; 0 = free cores
    progress: bool = True

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective '{self.objective}' (known: {', '.join(OBJECTIVES)})")
        if self.dtype not in ("fp32", "bf16", "auto"):
            raise ValueError(f"dtype must be 'fp32', 'bf16' or 'auto', not '{self.dtype}'")
        if self.parallel not in ("ddp", "fsdp"):
            raise ValueError(f"train.parallel must be 'ddp' or 'fsdp', not {self.parallel!r}")
        for name, most in (("max_steps", MAX_STEPS), ("batch_size", MAX_BATCH), ("grad_accum", MAX_BATCH),
                           ("eval_every", MAX_STEPS), ("eval_batches", MAX_STEPS)):
            check_range(f"train.{name}", getattr(self, name), 1, most, integer=True)
        for name in ("warmup_steps", "early_stopping_patience", "save_every"):
            check_range(f"train.{name}", getattr(self, name), 0, MAX_STEPS, integer=True)
        check_range("train.lr", self.lr, 0)  # what AdamW accepts; 0 keeps the weights (a baseline)
        check_range("train.min_lr", self.min_lr, 0)
        check_range("train.beta1", self.beta1, 0, 1, hi_open=True)
        check_range("train.beta2", self.beta2, 0, 1, hi_open=True)
        check_range("train.weight_decay", self.weight_decay, 0)
        check_range("train.grad_clip", self.grad_clip, 0)
        check_threads(self.threads, "train.threads")


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``min_lr`` at ``max_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if step >= cfg.max_steps:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings only (not on biases and norms)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def set_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Turn on activation checkpointing in every fissure model inside ``model`` (and HF ones)."""
    found = False
    for module in model.modules():
        if hasattr(type(module), "gradient_checkpointing") and hasattr(module, "blocks"):
            module.gradient_checkpointing, found = True, True
        elif hasattr(module, "gradient_checkpointing_enable"):
            module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            found = True
    if not found:
        raise ConfigError("train.gradient_checkpointing: this model has no blocks to checkpoint")


@dataclass
class TrainResult:
    steps: int
    train_loss: float
    val_loss: float | None
    best_val_loss: float | None
    stopped_early: bool
    tokens_per_second: float
    history: list[dict] = field(default_factory=list)


class Trainer:
    """Trains ``model`` on ``train_data`` (and evaluates on ``val_data``) under ``cfg``.

    Exact resume: the batch sampler draws only from ``self.batch_rng``, whose state is saved
    with the optimizer's and torch's global RNG (dropout) in every checkpoint.
    """

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, train_data, val_data=None, *,
                 tokenizer=None, block_size: int | None = None, seed: int = 0,
                 checkpoint_dir: str | Path | None = None, extra_state: dict | None = None,
                 objective=None, writer: Callable[[Path], None] | None = None, world: World | None = None):
        self.world = world or World()
        check_batch(cfg.batch_size, self.world)
        self.model, self.cfg = model, cfg
        self.train_data, self.val_data = train_data, val_data
        self.tokenizer, self.checkpoint_dir = tokenizer, Path(checkpoint_dir) if checkpoint_dir else None
        self.writer = writer  # writes the model into a checkpoint (default: a fissure model + tokenizer)
        self.block_size = block_size or model.max_positions
        self.objective = objective or OBJECTIVES[cfg.objective]()
        self.dtype = resolve_dtype(cfg.dtype)
        if cfg.gradient_checkpointing:
            set_gradient_checkpointing(model)
        self.twin = None  # FSDP: rank 0's unsharded copy, through which checkpoints are written and read
        if self.world.size > 1 and cfg.parallel == "fsdp":
            self.twin = FullStateTwin(model, lambda m: make_optimizer(m, cfg), self.world)
            shard_model(model)
        self.optimizer = make_optimizer(model, cfg)
        self.batch_rng = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.seed = seed
        self.extra_state = extra_state or {}
        self.step = 0
        self.history: list[dict] = []
        self.best_val_loss: float | None = None
        self.bad_evals = 0
        self.forward_model = model
        if self.world.size > 1 and self.twin is None:  # DDP: gradients averaged over the processes
            from torch.nn.parallel import DistributedDataParallel

            self.forward_model = DistributedDataParallel(model)
        if cfg.compile:
            self.forward_model = torch.compile(self.forward_model)

    # -- state ---------------------------------------------------------------------------
    def resume(self, checkpoint: str | Path) -> None:
        """Continue from a checkpoint written by this trainer: weights must already be loaded (before
        the trainer was made, under FSDP)."""
        if self.twin is None:
            state, rng = load_trainer_state(checkpoint, self.optimizer)
        else:  # rank 0 reads and checks the moments into its full copy, then hands each rank its shard
            state, rng = load_trainer_state(checkpoint, self.twin.optimizer if self.world.is_main else None)
            self.twin.push(self.model, self.optimizer)
        if state.get("train_config", {}).get("max_steps") not in (None, self.cfg.max_steps):
            raise ConfigError("resume needs the same train.max_steps as the original run "
                              f"({state['train_config']['max_steps']}), or the schedule would differ")
        if state["step"] >= self.cfg.max_steps:
            raise ConfigError(f"{checkpoint} finished all {self.cfg.max_steps} steps already: there is nothing to "
                              "resume (evaluate or sample it, or start a new run from it)")
        self.step = state["step"]
        self.history = state.get("history", [])
        self.best_val_loss = state.get("best_val_loss")
        self.bad_evals = state.get("bad_evals", 0)
        if "batch" in rng:
            self.batch_rng.set_state(rng["batch"])
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])

    def save(self, path: str | Path | None = None) -> Path:
        """Write a checkpoint (rank 0 only under torchrun; the others wait for it)."""
        path = Path(path or self.checkpoint_dir)
        model, optimizer = self.model, self.optimizer
        if self.twin is not None:  # every rank hands its shards to rank 0's full copy
            model, optimizer = self.twin.pull(self.model, self.optimizer)
        if not self.world.is_main:
            self.world.barrier()
            return path
        state = {"step": self.step, "history": self.history, "best_val_loss": self.best_val_loss,
                 "bad_evals": self.bad_evals, "seed": self.seed, "train_config": asdict(self.cfg),
                 **self.extra_state}
        path = save_checkpoint(path, model, self.tokenizer, writer=self.writer, trainer_state=state,
                               optimizer=optimizer,
                               rng_states={"batch": self.batch_rng.get_state(), "torch": torch.get_rng_state()})
        self.world.barrier()
        return path

    # -- loop ----------------------------------------------------------------------------
    def _autocast(self):
        if self.dtype == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    @torch.no_grad()
    def evaluate(self, data=None) -> float:
        """Mean loss over up to ``eval_batches`` sequential batches (deterministic)."""
        data = data if data is not None else self.val_data
        self.model.eval()
        losses = []
        with self._autocast():
            for batch in self.objective.eval_batches(data, self.cfg.batch_size, self.block_size, self.cfg.eval_batches):
                losses.append(self.objective.loss(self.forward_model, batch).item())
        self.model.train()
        return sum(losses) / len(losses)

    def train(self, until: int | None = None) -> TrainResult:
        """Train to ``cfg.max_steps`` (or stop after step ``until``, keeping the schedule of max_steps)."""
        cfg, model = self.cfg, self.model
        last = min(until or cfg.max_steps, cfg.max_steps)
        model.train()
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", unit="step", file=sys.stderr,
                   disable=not cfg.progress or not self.world.is_main, dynamic_ncols=True)
        tokens, t0 = 0, time.perf_counter()
        loss_value, val_loss, stopped_early = float("nan"), None, False
        while self.step < last:
            lr = learning_rate(self.step, cfg)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            loss_value = 0.0
            for _ in range(cfg.grad_accum):
                batch = self.objective.sample_batch(self.train_data, cfg.batch_size, self.block_size, self.batch_rng)
                batch = self.world.shard(batch)  # this process's rows of the global batch
                with self._autocast():
                    loss = self.objective.loss(self.forward_model, batch) / cfg.grad_accum
                loss.backward()
                loss_value += loss.item()
                tokens += self.objective.tokens_in(batch) * self.world.size
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            loss_value = self.world.all_mean(loss_value)
            record = {"step": self.step, "lr": lr, "train_loss": loss_value,
                      **{f"train_{k}": v for k, v in getattr(self.objective, "last", {}).items()}}  # e.g. DPO rewards
            if self.val_data is not None and (self.step % cfg.eval_every == 0 or self.step == cfg.max_steps):
                val_loss = self.evaluate()
                record.update(val_loss=val_loss, val_perplexity=math.exp(min(val_loss, 50)))
                if hasattr(self.objective, "diagnostics"):  # per-task losses, gradient cosines
                    record.update(self.objective.diagnostics(self))
                if self.best_val_loss is None or val_loss < self.best_val_loss:
                    self.best_val_loss, self.bad_evals = val_loss, 0
                else:
                    self.bad_evals += 1
                stopped_early = 0 < cfg.early_stopping_patience <= self.bad_evals
            self.history.append(record)
            elapsed = time.perf_counter() - t0
            bar.set_postfix(loss=f"{loss_value:.3f}", val=f"{val_loss:.3f}" if val_loss is not None else "-",
                            tok_s=f"{tokens / elapsed:,.0f}", refresh=False)
            bar.update(1)
            if self.checkpoint_dir and cfg.save_every and self.step % cfg.save_every == 0:
                self.save()
            if stopped_early:
                break
        bar.close()
        if self.checkpoint_dir:
            self.save()
        elapsed = time.perf_counter() - t0
        return TrainResult(steps=self.step, train_loss=loss_value, val_loss=val_loss, best_val_loss=self.best_val_loss,
                           stopped_early=stopped_early, tokens_per_second=tokens / elapsed if elapsed else 0.0,
                           history=self.history)
