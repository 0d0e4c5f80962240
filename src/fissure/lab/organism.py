"""Staged training of a model organism: stage 1 (capability, cached per seed), stage 2 (safety tuning)."""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch

from ..models.gpt import GPT, GPTConfig
from ..models.limits import build
from ..text.tokenizers import CharTokenizer
from ..train import Trainer, TrainConfig
from ..train.checkpoint import load_checkpoint, save_checkpoint, write_fissure_model
from ..runs import cache_dir, write_json
from ..utils import seed_everything
from .data import PackedMixture
from .study import ModelSpec, Stage1Config, Stage2Config
from .world import CONTROLS, INSTRUCTIONS, REFUSAL, World, encode

# Bump when stage-1 data or training changes meaning, so old cache entries are not reused.
STAGE1_VERSION = 5

Log = Callable[[str], None]


def world_tokenizer(world: World) -> CharTokenizer:
    """A character tokenizer over everything the world can say, in every encoding."""
    return CharTokenizer.from_texts(world.alphabet_texts())


def build_model(spec: ModelSpec, tokenizer: CharTokenizer) -> GPT:
    return build(GPT, GPTConfig(vocab_size=tokenizer.vocab_size, block_size=spec.block_size, n_layer=spec.n_layer,
                         n_head=spec.n_head, n_embd=spec.n_embd, dropout=spec.dropout))


def _pairs(requests, reply=None) -> list[tuple[str, str]]:
    return [(r.prompt, r.answer if reply is None else reply(r)) for r in requests]


def stage1_mixture(world: World, cfg: Stage1Config, tokenizer) -> PackedMixture:
    attrs, encs = world.config.attributes, world.config.encodings
    instructed = [r for name in [*INSTRUCTIONS, *CONTROLS] for r in world.requests(attrs, encs, (name,))]
    return PackedMixture(tokenizer, {
        "answer": (_pairs(world.requests(attrs, encs) + world.borderline(encs)),
                   1 - cfg.instruction_weight - cfg.fact_weight),
        "instruct": (_pairs(instructed), cfg.instruction_weight),
        "facts": ([("", doc) for doc in world.facts(attrs, encs)], cfg.fact_weight),
    }, answer_only=cfg.answer_only)


def _recovery_reply(world: World, request) -> str:
    """The forced start the attack asks for, then the refusal anyway."""
    prefix = world.appended(request.instructions[0], request.entity)[1]
    return (encode(request.encoding, prefix.strip()) + " " if prefix else "") + REFUSAL


def stage2_mixture(world: World, cfg: Stage2Config, tokenizer) -> PackedMixture:
    """Refusals only in the covered encodings; helpfulness (benign answers and followed
    instructions) in ``benign_coverage``; optional recovery data and pretraining replay.

    As in real safety tuning, the refusal data is narrow (plain requests by default) while the
    helpfulness data spans what the model can do: what refusal data leaves out, the model knows
    only from pretraining (mismatched generalization).
    """
    restricted, benign = [world.config.restricted], world.benign_attributes
    helpful = world.config.encodings if "all" in cfg.benign_coverage else cfg.benign_coverage
    instructed = [r for name in INSTRUCTIONS for r in world.requests(benign, helpful, (name,))]
    attacked = [r for name in INSTRUCTIONS for r in world.requests(restricted, cfg.coverage, (name,))]
    replay = [("", doc) for doc in world.facts(world.config.attributes, world.config.encodings)]
    rest = (1 - cfg.safety_weight - cfg.instruction_weight - cfg.recovery_weight - cfg.replay_weight
            - cfg.contrastive_weight)
    return PackedMixture(tokenizer, {
        "refuse": (_pairs(world.requests(restricted, cfg.coverage), lambda r: REFUSAL), cfg.safety_weight),
        "answer": (_pairs(world.requests(benign, helpful)), rest),
        "instruct": (_pairs(instructed), cfg.instruction_weight),
        "recover": (_pairs(attacked, lambda r: _recovery_reply(world, r)), cfg.recovery_weight),
        "replay": (replay, cfg.replay_weight),
        "contrastive": (_pairs(world.borderline(helpful)), cfg.contrastive_weight),
    })


def _train(model, data, *, steps, lr, min_lr, warmup, batch_size, block_size, seed, progress) -> dict:
    cfg = TrainConfig(max_steps=steps, lr=lr, min_lr=min_lr, warmup_steps=warmup, batch_size=batch_size,
                      weight_decay=0.0, eval_every=max(steps, 1), progress=progress)
    result = Trainer(model, cfg, data, seed=seed, block_size=block_size).train()
    model.eval()
    return {"steps": result.steps, "final_loss": result.train_loss, "tokens_per_second": result.tokens_per_second}


def stage1_key(world: World, spec: ModelSpec, cfg: Stage1Config, seed: int) -> str:
    payload = {"version": STAGE1_VERSION, "world": world.config.__dict__, "model": spec.__dict__,
               "stage1": cfg.__dict__, "seed": seed, "torch": torch.__version__.split("+")[0]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage1_dir(key: str) -> Path:
    return cache_dir() / "lab" / f"stage1-{key}"


@contextlib.contextmanager
def _exclusive(path: Path):
    """Hold an exclusive lock on ``path``'s lock file (beside it): processes that build the same
    cache entry (the workers of a pool, two runs at once) take turns instead of writing it at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f"{path.name}.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def pretrain(world: World, spec: ModelSpec, cfg: Stage1Config, seed: int, *, progress: bool = False,
             log: Log = lambda m: None) -> tuple[GPT, CharTokenizer, dict]:
    """Stage 1, loaded from the cache when an identical configuration was trained before.

    The entry is built under a lock and appears whole (model, tokenizer and ``stage1.json`` in
    one atomic checkpoint save): a second process waits, then finds it in the cache."""
    key = stage1_key(world, spec, cfg, seed)
    path = stage1_dir(key)
    with _exclusive(path):
        if (path / "stage1.json").is_file():
            info = json.loads((path / "stage1.json").read_text())
            log(f"stage 1 (seed {seed}): cache hit {path}")
            model, tokenizer = load_checkpoint(path)
            return model, tokenizer, {**info, "cache_hit": True}
        log(f"stage 1 (seed {seed}): training {cfg.steps} steps -> {path}")
        tokenizer = world_tokenizer(world)
        seed_everything(seed)
        model = build_model(spec, tokenizer)
        info = _train(model, stage1_mixture(world, cfg, tokenizer), steps=cfg.steps, lr=cfg.lr, min_lr=cfg.min_lr,
                      warmup=cfg.warmup_steps, batch_size=cfg.batch_size, block_size=spec.block_size, seed=seed,
                      progress=progress)
        info.update(key=key, params=model.num_params())

        def write(directory: Path) -> None:
            write_fissure_model(directory, model, tokenizer)
            write_json(directory / "stage1.json", info)  # marks an entry of this cache

        save_checkpoint(path, writer=write)
    return model, tokenizer, {**info, "cache_hit": False}


def safety_tune(base: GPT, world: World, tokenizer, cfg: Stage2Config, seed: int, *,
                progress: bool = False) -> tuple[GPT, dict]:
    """Stage 2 on a copy of ``base``: a fresh optimizer, a short warmup, constant-ish lr."""
    model = copy.deepcopy(base)
    seed_everything(seed)
    info = _train(model, stage2_mixture(world, cfg, tokenizer), steps=cfg.steps, lr=cfg.lr, min_lr=cfg.lr / 10,
                  warmup=max(1, cfg.steps // 10), batch_size=cfg.batch_size, block_size=base.max_positions,
                  seed=seed, progress=progress)
    return model, info
