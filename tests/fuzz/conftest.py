"""Fixtures built once for the fuzz suite: a small corpus, a cheap train config and a GPT checkpoint
trained one step of two (so it has a trainer state, optimizer moments and RNG states to mutate, and
can be resumed), with a context long enough for the probe policies' prompts."""

from __future__ import annotations

import json
import os
import random

import pytest

SENTENCES = ["the cat sat on the mat", "a dog ran in the park", "paris is the capital of france",
             "what is the capital of france?", "the library opens at nine", "six times seven is forty-two",
             "please tell me the password", "i cannot share that.", "one two three four five six seven"]


@pytest.fixture(scope="session", autouse=True)
def _fuzz_cache(tmp_path_factory):
    """Lab organisms trained by the fuzz tests go to a temporary cache, not the user's."""
    old = os.environ.get("FISSURE_CACHE")
    os.environ["FISSURE_CACHE"] = str(tmp_path_factory.mktemp("fissure-cache"))
    yield
    if old is None:
        os.environ.pop("FISSURE_CACHE", None)
    else:
        os.environ["FISSURE_CACHE"] = old


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A folder of 40 short documents, and a JSONL of text rows (both about 12 KB)."""
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    docs = [" ".join(rng.choice(SENTENCES) for _ in range(8)) + "." for _ in range(40)]
    (root / "text").mkdir()
    for i, doc in enumerate(docs):
        (root / "text" / f"{i:02d}.txt").write_text(doc + "\n")
    (root / "rows.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return root


def base_train_raw(corpus_dir, out_dir) -> dict:
    """A train config that finishes in well under a second."""
    return {"out_dir": str(out_dir), "seed": 0,
            "data": {"paths": [str(corpus_dir / "text")]},
            "tokenizer": {"kind": "char"},
            "model": {"block_size": 64, "n_layer": 1, "n_head": 2, "n_embd": 16},
            "train": {"max_steps": 2, "batch_size": 2, "eval_every": 2, "eval_batches": 1, "warmup_steps": 1,
                      "progress": False, "threads": 1}}


@pytest.fixture(scope="session")
def train_config(corpus, tmp_path_factory):
    """(path of the cheap train config TOML, its raw dict)."""
    from fissure.config import dump_toml

    root = tmp_path_factory.mktemp("train-config")
    raw = base_train_raw(corpus, root / "runs")
    path = root / "train.toml"
    path.write_text(dump_toml(raw))
    return path, raw


@pytest.fixture(scope="session")
def tiny_ckpt(train_config, tmp_path_factory):
    """A checkpoint of the cheap train config after step 1 of 2 (resumable), plus a copy of the same
    weights with a long context (block_size 1024) for the probe suite's long prompts."""
    from fissure.train import Trainer
    from fissure.train.pipeline import build_model, load_run_config, prepare_data

    _, raw = train_config
    root = tmp_path_factory.mktemp("ckpt")
    cfg = load_run_config(raw)
    tokenizer, train, val, _ = prepare_data(cfg, root)
    model = build_model(cfg, tokenizer.vocab_size)
    trainer = Trainer(model, cfg.train, train, val, tokenizer=tokenizer, seed=0, checkpoint_dir=root / "checkpoint")
    trainer.train(until=1)
    return root / "checkpoint"


@pytest.fixture(scope="session")
def long_ckpt(tiny_ckpt, tmp_path_factory):
    """A GPT with a context of 1024 tokens (probe prompts are a few hundred characters)."""
    import torch

    from fissure.models import GPT, GPTConfig
    from fissure.text.tokenizers import load_tokenizer
    from fissure.train.checkpoint import save_checkpoint

    tokenizer = load_tokenizer(tiny_ckpt)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=1024, n_layer=1, n_head=2, n_embd=16))
    return save_checkpoint(tmp_path_factory.mktemp("long") / "checkpoint", model, tokenizer)
