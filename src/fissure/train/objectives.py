"""Training objectives. An objective samples a batch from its data and returns a scalar loss.

Registered by name (``train.objective``):

- ``causal_lm``: next-token cross-entropy; targets marked ``IGNORE`` carry no loss, so the same
  objective trains on windows of text (continued pretraining) and on supervised examples;
- ``sft``: the same loss, named for supervised fine-tuning (loss on completions / assistant turns);
- ``dpo``: Direct Preference Optimization (Rafailov et al. 2023), as the paper writes it;
- ``classify``: cross-entropy of a sequence classifier's logits;
- ``multitask``: a weighted mixture of the above over shared weights (:class:`MultiTask`);
- ``mlm``: BERT's masked-LM (+ next-sentence) pretraining (:class:`~fissure.train.mlm.MaskedLM`);
- ``distill``: knowledge distillation from a teacher's logits (Hinton et al. 2015, :class:`Distill`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .batches import IGNORE
from .cross_entropy import cross_entropy
from .mlm import MaskedLM


class Objective(Protocol):
    name: str

    def sample_batch(self, data, batch_size: int, block_size: int, generator: torch.Generator) -> tuple: ...

    def eval_batches(self, data, batch_size: int, block_size: int, max_batches: int): ...

    def loss(self, model: torch.nn.Module, batch: tuple) -> torch.Tensor: ...

    def tokens_in(self, batch: tuple) -> int: ...


class CausalLM:
    """Next-token prediction: cross-entropy of ``y[t]`` given ``x[:t+1]`` (``IGNORE`` targets skipped)."""

    name = "causal_lm"

    def sample_batch(self, data, batch_size, block_size, generator):
        return data.sample_batch(batch_size, block_size, generator)

    def eval_batches(self, data, batch_size, block_size, max_batches):
        for i, batch in enumerate(data.iter_batches(batch_size, block_size)):
            if i >= max_batches:
                break
            yield batch

    def loss(self, model, batch):
        x, y = batch[0], batch[1]
        logits = model(x)
        return cross_entropy(logits, y, ignore_index=IGNORE)

    def tokens_in(self, batch):
        return batch[0].numel()


class SFT(CausalLM):
    """Supervised fine-tuning: next-token loss on the completion (or assistant) tokens only."""

    name = "sft"


def sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of each row's non-``IGNORE`` targets, in float32."""
    logprobs = logits.float().log_softmax(-1)
    keep = targets != IGNORE
    picked = logprobs.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return (picked * keep).sum(-1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict]:
    """The DPO loss, -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), averaged over pairs, and
    the implicit rewards beta * (pi - ref) of chosen and rejected completions."""
    chosen_reward = beta * (policy_chosen - reference_chosen)
    rejected_reward = beta * (policy_rejected - reference_rejected)
    loss = -F.logsigmoid(chosen_reward - rejected_reward).mean()
    margin = (chosen_reward - rejected_reward).detach()
    return loss, {"reward_chosen": chosen_reward.detach().mean().item(),
                  "reward_rejected": rejected_reward.detach().mean().item(),
                  "reward_margin": margin.mean().item(), "reward_accuracy": (margin > 0).float().mean().item()}


class DPO(CausalLM):
    """DPO on :class:`~fissure.train.batches.PreferencePairs` whose reference log-probabilities
    (the model before tuning) were computed first: no second model is held in memory."""

    name = "dpo"

    def __init__(self, beta: float = 0.1):
        if beta <= 0:
            raise ValueError(f"dpo beta must be positive, not {beta}")
        self.beta = beta
        self.last: dict = {}

    def loss(self, model, batch):
        x, y, reference = batch
        if reference is None:
            raise RuntimeError("DPO needs the reference log-probabilities: compute them before training")
        logps = sequence_logprobs(model(x), y)
        n = x.shape[0] // 2
        ref = reference.to(logps.dtype)
        loss, self.last = dpo_loss(logps[:n], logps[n:], ref[:n], ref[n:], self.beta)
        return loss


class Classify(CausalLM):
    """Cross-entropy of a sequence classifier's logits (``model(ids, attention_mask) -> (B, classes)``)."""

    name = "classify"

    def loss(self, model, batch):
        ids, mask, labels = batch
        return cross_entropy(model(ids, attention_mask=mask), labels)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                      temperature: float, alpha: float) -> tuple[torch.Tensor, dict]:
    """Hinton et al. (2015), per token over the non-``IGNORE`` targets:
    ``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, targets)``.

    The KL is summed over the vocabulary and averaged over tokens, like the cross-entropy; ``T^2``
    keeps the soft targets' gradient on the scale of the hard ones' as ``T`` grows."""
    keep = targets != IGNORE
    student = student_logits.float()[keep]
    teacher = teacher_logits.float()[keep]
    if student.shape != teacher.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ: teacher and student must share a vocabulary")
    if student.shape[0] == 0:  # nothing to learn from in this batch
        zero = student_logits.sum() * 0.0
        return zero, {"kd": 0.0, "ce": 0.0}
    log_p_student = F.log_softmax(student / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher / temperature, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1).mean()
    ce = cross_entropy(student, targets[keep])
    loss = alpha * temperature**2 * kl + (1 - alpha) * ce
    return loss, {"kd": kl.item(), "ce": ce.item()}


class Distill(CausalLM):
    """Knowledge distillation: the student learns from the teacher's soft next-token distribution
    on the same batch (mixed with the hard labels, :func:`distillation_loss`). The teacher runs
    frozen, in eval mode and under ``no_grad``, on every training batch: a forward pass of the
    teacher per step is the cost. Evaluation (any loss computed without gradients, as the Trainer
    evaluates) gives the student's plain cross-entropy on the hard labels: comparable with a run
    without a teacher, and free of the teacher's pass."""

    name = "distill"

    def __init__(self, teacher: torch.nn.Module | None = None, temperature: float = 2.0, alpha: float = 0.5):
        if not temperature > 0:
            raise ValueError(f"distill temperature must be positive, not {temperature}")
        if not 0 <= alpha <= 1:
            raise ValueError(f"distill alpha must lie in [0, 1], not {alpha}")
        self.teacher = teacher.eval().requires_grad_(False) if teacher is not None else None
        self.temperature, self.alpha = temperature, alpha
        self.last: dict = {}

    def loss(self, model, batch):
        if not torch.is_grad_enabled():
            return super().loss(model, batch)
        if self.teacher is None:
            raise ConfigError("train.objective 'distill' needs a teacher: run it with `fissure distill TEACHER`")
        x, y = batch[0], batch[1]
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        loss, self.last = distillation_loss(model(x), teacher_logits, y, self.temperature, self.alpha)
        return loss


@dataclass
class Task:
    """One task of a multi-task run: its objective, the module its loss runs (the shared base, or a
    classifier over it) and its share of the batches."""

    name: str
    objective: CausalLM
    module: torch.nn.Module
    weight: float


class MultiTask:
    """A weighted mixture of tasks over shared weights: each step's batch comes from one task, drawn
    by weight. Every evaluation also logs each task's validation loss and the cosine between the
    tasks' gradients (negative: the tasks pull the shared weights apart, conflicting objectives)."""

    name = "multitask"

    def __init__(self, tasks: list[Task]):
        if len(tasks) < 2 or min(t.weight for t in tasks) < 0 or sum(t.weight for t in tasks) <= 0:
            raise ValueError("a multi-task run needs two or more tasks with non-negative weights, not all zero")
        self.tasks = tasks
        self.weights = torch.tensor([t.weight for t in tasks], dtype=torch.float64)

    def sample_batch(self, data, batch_size, block_size, generator):
        i = int(torch.multinomial(self.weights, 1, generator=generator))
        return i, self.tasks[i].objective.sample_batch(data[i], batch_size, block_size, generator)

    def eval_batches(self, data, batch_size, block_size, max_batches):
        for i, task in enumerate(self.tasks):
            for batch in task.objective.eval_batches(data[i], batch_size, block_size, max_batches):
                yield i, batch

    def loss(self, model, batch):
        i, inner = batch
        return self.tasks[i].objective.loss(self.tasks[i].module, inner)

    def tokens_in(self, batch):
        return self.tasks[batch[0]].objective.tokens_in(batch[1])

    def diagnostics(self, trainer) -> dict:
        """Per-task validation loss and pairwise cosines of the tasks' gradients (on one training batch
        each, drawn from a generator seeded by the step alone, so training draws the same batches
        either way and two tasks with the same data get the same batch)."""
        cfg = trainer.cfg
        val = {}
        trainer.model.eval()
        with torch.no_grad(), trainer._autocast():
            for i, task in enumerate(self.tasks):
                losses = [task.objective.loss(task.module, b).item() for b in
                          task.objective.eval_batches(trainer.val_data[i], cfg.batch_size, trainer.block_size,
                                                      cfg.eval_batches)]
                val[task.name] = sum(losses) / len(losses)
        params = [p for p in trainer.model.parameters() if p.requires_grad]
        grads = []
        with trainer._autocast():
            for i, task in enumerate(self.tasks):
                batch = task.objective.sample_batch(trainer.train_data[i], cfg.batch_size, trainer.block_size,
                                                    torch.Generator().manual_seed(trainer.step))
                g = torch.autograd.grad(task.objective.loss(task.module, batch), params, allow_unused=True)
                grads.append(torch.cat([(x if x is not None else torch.zeros_like(p)).flatten().float()
                                        for x, p in zip(g, params)]))
        trainer.model.train()
        cosines = {f"{a.name}|{b.name}": float(F.cosine_similarity(grads[i], grads[j], dim=0))
                   for i, a in enumerate(self.tasks) for j, b in enumerate(self.tasks) if i < j}
        return {"task_val_loss": val, "gradient_cosine": cosines}


class Seq2SeqLM(CausalLM):
    """Teacher-forced cross-entropy of an encoder-decoder model: batches ``(src, src_mask, tgt_in, labels)``
    (decoder inputs start with the decoder start token; ``labels`` are them shifted left, ``IGNORE`` at
    padding), with optional label smoothing (Szegedy et al. 2016, as the original Transformer)."""

    name = "seq2seq"

    def __init__(self, label_smoothing: float = 0.0):
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), not {label_smoothing}")
        self.label_smoothing = label_smoothing

    def loss(self, model, batch):
        src, src_mask, tgt_in, labels = batch
        logits = model(src, tgt_in, src_mask)
        return cross_entropy(logits, labels, ignore_index=IGNORE, label_smoothing=self.label_smoothing)

    def tokens_in(self, batch):
        return int((batch[3] != IGNORE).sum())


OBJECTIVES: dict[str, type] = {cls.name: cls for cls in (CausalLM, SFT, DPO, Classify, MultiTask, MaskedLM,
                                                         Seq2SeqLM, Distill)}
