"""Checkpoints with one file mutated (config.json and trainer_state.json fields of any type, optimizer
and RNG tensors renamed, reshaped, retyped or poisoned, truncated or random files): loading, resuming,
``fissure info``, ``generate`` and ``train --resume`` load it or fail with one line."""

from __future__ import annotations

import json
import shutil

import torch
from fuzz_support import cli, fuzz, json_values, junk, library
from hypothesis import example, given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from fissure.train.checkpoint import load_checkpoint, load_trainer_state
from fissure.train.pipeline import build_model, load_run_config
from fissure.train.trainer import make_optimizer

JSON_FILES = {"config.json": ["family", "config", "config.vocab_size", "config.block_size", "config.n_layer",
                              "config.n_head", "config.n_embd", "config.dropout", "config.bias", "config.pos_encoding",
                              "config.layer_norm_eps", "config.mlp_ratio", "config.tie_weights", "config.extra"],
              "trainer_state.json": ["step", "history", "best_val_loss", "bad_evals", "seed", "train_config",
                                     "train_config.max_steps", "optimizer", "optimizer.param_groups",
                                     "optimizer.scalars"],
              "tokenizer.json": ["type", "chars", "n_byte_tokens", "model", "version"]}
TENSOR_FILES = ["optimizer.safetensors", "rng_state.safetensors", "model.safetensors"]


@st.composite
def json_mutation(draw):
    file = draw(st.sampled_from(sorted(JSON_FILES)))
    how = draw(st.sampled_from(["set", "set", "set", "delete", "whole", "truncate", "bytes"]))
    return file, how, draw(st.sampled_from(JSON_FILES[file])), draw(junk()), draw(st.integers(0, 400)), \
        draw(st.binary(max_size=40))


def mutate_json(path, how, field, value, cut, raw):
    text = path.read_text()
    if how == "truncate":
        path.write_text(text[:cut])
        return
    if how == "bytes":
        path.write_bytes(raw)
        return
    data = json.loads(text)
    if how == "whole":
        path.write_text(json.dumps(value))
        return
    *parents, last = field.split(".")
    node = data
    for p in parents:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    if how == "delete":
        node.pop(last, None)
    else:
        node[last] = value
    path.write_text(json.dumps(data))


@st.composite
def tensor_mutation(draw):
    return (draw(st.sampled_from(TENSOR_FILES)),
            draw(st.sampled_from(["rename", "reshape", "dtype", "nan", "negative", "extra", "drop", "truncate",
                                  "bytes", "empty"])),
            draw(st.integers(0, 1000)), draw(st.sampled_from([torch.int64, torch.uint8, torch.float16, torch.bool,
                                                               torch.float64])),
            draw(st.text(max_size=8)), draw(st.binary(max_size=40)))


def mutate_tensors(path, how, pick, dtype, name, raw):
    if not path.is_file():
        return
    if how == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[:pick % max(len(data), 1)])
        return
    if how == "bytes":
        path.write_bytes(raw)
        return
    tensors = load_file(str(path))
    if how == "empty":
        tensors = {}
    elif tensors:
        key = sorted(tensors)[pick % len(tensors)]
        t = tensors[key]
        if how == "rename":
            tensors[name or "x"] = tensors.pop(key)
        elif how == "reshape":
            tensors[key] = t.reshape(-1)[: max(t.numel() - 1, 0)].clone() if t.numel() else torch.zeros(3)
        elif how == "dtype":
            tensors[key] = t.to(dtype)
        elif how == "nan" and t.is_floating_point():
            tensors[key] = t.clone().fill_(float("nan"))
        elif how == "negative" and t.is_floating_point():
            tensors[key] = -t.abs() - 1
        elif how == "extra":
            tensors[f"{name}.extra"] = torch.zeros(2)
        elif how == "drop":
            tensors.pop(key)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def mutated_copy(tiny_ckpt, root, mutation):
    target = root / "checkpoint"
    shutil.copytree(tiny_ckpt, target)
    kind, args = mutation
    if kind == "json":
        mutate_json(target / args[0], *args[1:])
    else:
        mutate_tensors(target / args[0], *args[1:])
    return target


MUTATION = st.one_of(json_mutation().map(lambda m: ("json", m)), tensor_mutation().map(lambda m: ("tensor", m)))


@fuzz(4)
@given(mutation=MUTATION)
@example(mutation=("json", ("trainer_state.json", "whole", "step", float("nan"), 0, b"")))
@example(mutation=("json", ("trainer_state.json", "set", "step", "64", 0, b"")))
@example(mutation=("json", ("config.json", "set", "family", 5, 0, b"")))
@example(mutation=("json", ("config.json", "set", "config.n_head", 0, 0, b"")))
@example(mutation=("json", ("trainer_state.json", "set", "optimizer.param_groups", [{"params": 5}], 0, b"")))
def test_loading_a_mutated_checkpoint_raises_only_user_errors(mutation, tiny_ckpt, train_config, tmp_path_factory):
    path = mutated_copy(tiny_ckpt, tmp_path_factory.mktemp("ckpt-fuzz"), mutation)
    library(load_checkpoint, path)
    cfg = load_run_config(train_config[1])
    optimizer = make_optimizer(build_model(cfg, _vocab(tiny_ckpt)), cfg.train)
    library(load_trainer_state, path, optimizer)


def _vocab(ckpt) -> int:
    return json.loads((ckpt / "config.json").read_text())["config"]["vocab_size"]


@fuzz(1.5)
@given(mutation=MUTATION, verb=st.sampled_from(["info", "info", "generate", "resume"]))
@example(mutation=("json", ("trainer_state.json", "whole", "step", float("nan"), 0, b"")), verb="info")
def test_cli_on_a_mutated_checkpoint_exits_0_or_2(mutation, verb, tiny_ckpt, train_config, tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt-cli")
    path = mutated_copy(tiny_ckpt, root, mutation)
    runs = root / "runs"
    if verb == "info":
        cli(["info", path])
        cli(["info", path, "--json"])
    elif verb == "generate":
        cli(["generate", path, "--prompt", "the cat", "--max-new-tokens", "2", "--out-dir", runs], runs)
    else:
        cli(["train", train_config[0], "--resume", path, "--out-dir", runs], runs)


@fuzz(0.5)
@given(value=json_values)
def test_a_checkpoint_config_that_is_any_json(value, tiny_ckpt, tmp_path_factory):
    path = mutated_copy(tiny_ckpt, tmp_path_factory.mktemp("ckpt-json"),
                        ("json", ("config.json", "whole", "family", value, 0, b"")))
    library(load_checkpoint, path)
