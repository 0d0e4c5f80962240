"""Train configs: any dict of fields (valid, wrong types, NaN, infinity, huge numbers, nested junk,
unknown keys) loads into a RunConfig or raises a UserError; through ``fissure train`` it trains
(cheap values only) or exits 2 with one line and no run directory."""

from __future__ import annotations

import math

from fuzz_support import any_floats, bad_ints, cli, fuzz, json_values, junk, library, short_text, \
    toml_value
from hypothesis import example, given
from hypothesis import strategies as st

from fissure.config import dump_toml, to_dict
from fissure.train.pipeline import load_run_config

# A cheap valid value of every field (a valid config trains in well under a second).
VALID = {
    "seed": st.integers(0, 3),
    "data.val_fraction": st.floats(0.05, 0.5),
    "data.normalize": st.sampled_from(["NFC", "NFKC", "none"]),
    "data.collapse_whitespace": st.booleans(),
    "data.dedup": st.booleans(),
    "data.max_bytes": st.integers(1000, 5000),
    "data.builtin": st.sampled_from(["", "stdlib"]),
    "tokenizer.kind": st.sampled_from(["char", "bpe"]),
    "tokenizer.vocab_size": st.integers(257, 320),
    "model.block_size": st.sampled_from([8, 16, 32]),
    "model.n_layer": st.integers(1, 2),
    "model.n_head": st.sampled_from([1, 2, 4]),
    "model.n_embd": st.sampled_from([8, 16]),
    "model.dropout": st.floats(0, 0.5),
    "model.bias": st.booleans(),
    "model.pos_encoding": st.sampled_from(["learned", "sinusoidal"]),
    "model.tie_weights": st.booleans(),
    "model.activation": st.sampled_from(["gelu", "gelu_tanh"]),
    "model.layer_norm_eps": st.floats(1e-6, 1e-3),
    "model.mlp_ratio": st.integers(1, 4),
    "train.objective": st.just("causal_lm"),
    "train.max_steps": st.integers(1, 2),
    "train.batch_size": st.integers(1, 2),
    "train.grad_accum": st.integers(1, 2),
    "train.lr": st.floats(1e-4, 1e-2),
    "train.min_lr": st.floats(0, 1e-4),
    "train.warmup_steps": st.integers(0, 2),
    "train.weight_decay": st.floats(0, 0.1),
    "train.beta1": st.floats(0, 0.99),
    "train.beta2": st.floats(0, 0.999),
    "train.grad_clip": st.floats(0, 1),
    "train.dtype": st.sampled_from(["fp32", "auto"]),
    "train.gradient_checkpointing": st.booleans(),
    "train.eval_every": st.integers(1, 2),
    "train.eval_batches": st.integers(1, 2),
    "train.early_stopping_patience": st.integers(0, 2),
    "train.save_every": st.integers(0, 1),
    "train.threads": st.integers(0, 1),
    "train.parallel": st.sampled_from(["ddp", "fsdp"]),  # one process: neither applies
}
UNKNOWN = ["learning_rate", "train.learning_rate", "model.n_layers", "data.path", "tokenizer.size", "train.lr.x"]

# Junk that can never be a valid but expensive value (no 10**6 steps, no torch.compile): wrong
# types, NaN and infinity, integers <= 0 or beyond every bound, text, lists and tables.
cli_junk = st.one_of(bad_ints, any_floats, short_text, st.just(False), st.lists(st.integers(), max_size=2),
                     st.dictionaries(short_text, st.integers(), max_size=2))


def _set(raw: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = raw
    for p in parents:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[last] = value


@st.composite
def train_raw(draw, base: dict, junk_values=junk()) -> dict:
    """``base`` with a few fields set to valid or junk values, sometimes an unknown key or a section
    that is not a table."""
    import copy

    raw = copy.deepcopy(base)
    for name in draw(st.lists(st.sampled_from(sorted(VALID) + UNKNOWN), min_size=1, max_size=4, unique=True)):
        value = draw(st.one_of(VALID[name], junk_values) if name in VALID else junk_values)
        _set(raw, name, value)
    if draw(st.integers(0, 9)) == 0:
        raw[draw(st.sampled_from(["data", "model", "train", "tokenizer"]))] = draw(json_values)
    return raw


@fuzz(4)
@given(data=st.data())
@example(data=None)  # the base config itself
def test_load_run_config_raises_only_user_errors(data, train_config):
    _, base = train_config
    raw = base if data is None else data.draw(train_raw(base))
    cfg = library(load_run_config, raw)
    if not isinstance(cfg, Exception):
        library(dump_toml, to_dict(cfg))  # what the run directory's config.toml gets


def _overrides(raw: dict, base: dict, prefix: str = "") -> list[str]:
    """``--set`` arguments that turn ``base`` into ``raw`` (values TOML cannot write are skipped)."""
    out = []
    for key, value in raw.items():
        dotted = prefix + key
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            out += _overrides(value, base[key], dotted + ".")
        elif value != base.get(key) or (isinstance(value, float) and math.isnan(value)):
            text = toml_value(value)
            if text is not None:
                out += ["--set", f"{dotted}={text}"]
    return out


@fuzz(1.5)
@given(data=st.data(), out=st.sampled_from(["ok", "ok", "ok", "/dev/null/x", "file"]),
       resume=st.sampled_from([None, None, None, "ckpt", "missing"]))
def test_fissure_train_exits_0_or_2(data, out, resume, train_config, tiny_ckpt, tmp_path_factory):
    path, base = train_config
    raw = data.draw(train_raw(base, cli_junk))
    root = tmp_path_factory.mktemp("train-fuzz")
    if out == "file":
        (root / "file").write_text("not a folder")
        out_dir = root / "file"
    else:
        out_dir = root / "runs" if out == "ok" else out
    args = ["train", path, *_overrides(raw, base), "--out-dir", out_dir]
    if resume:
        args += ["--resume", tiny_ckpt if resume == "ckpt" else root / "missing"]
    cli(args, root / "runs" if out == "ok" else None)


INT_FIELDS = ["seed", "data.max_bytes", "tokenizer.vocab_size", "model.block_size", "model.n_layer", "model.n_head",
              "model.n_embd", "model.mlp_ratio", "train.max_steps", "train.batch_size", "train.grad_accum",
              "train.warmup_steps", "train.eval_every", "train.eval_batches", "train.early_stopping_patience",
              "train.save_every", "train.threads"]


def test_huge_and_special_values_of_every_int_field(train_config):
    """Every integer field against 64-bit overflows and NaN: a ConfigError naming the field, never an
    OverflowError or an allocation."""
    import copy

    from fissure.errors import ConfigError

    _, base = train_config
    raw = copy.deepcopy(base)
    raw["tokenizer"]["kind"] = "bpe"  # so that tokenizer.vocab_size is read
    for name in INT_FIELDS:
        for bad in [2**63, 2**64, 10**400, -(2**63) - 1, math.nan, -math.inf, 1.5, True, "1", [1]]:
            bent = copy.deepcopy(raw)
            _set(bent, name, bad)
            result = library(load_run_config, bent)
            assert isinstance(result, ConfigError) and name.split(".")[-1] in str(result), (name, bad, result)
