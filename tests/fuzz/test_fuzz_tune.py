"""Tune configs and ``fissure tune``: any [tune] table loads or raises a UserError; through the CLI
(on the tiny GPT checkpoint, with cheap training settings) exit 0 or 2, one line, no run directory."""

from __future__ import annotations

import json

from fuzz_support import arg_text, bad_ints, cli, deep_json, fuzz, json_values, junk, library
from hypothesis import example, given
from hypothesis import strategies as st

from fissure.tune import load_tune_config, read_tuning_data

VALID = {
    "model": st.sampled_from(["smollm2", "./ckpt"]),
    "data": st.sampled_from(["notes.txt", "rows.jsonl"]),
    "method": st.sampled_from(["lora", "full"]),
    "objective": st.sampled_from(["auto", "causal_lm", "sft", "dpo", "classify"]),
    "backend": st.sampled_from(["auto", "native"]),
    "seed": st.integers(0, 5),
    "val_fraction": st.floats(0.05, 0.5),
    "max_length": st.integers(8, 64),
    "text_column": st.sampled_from(["text", "body"]),
    "label_column": st.sampled_from(["label", "y"]),
    "labels": st.lists(st.sampled_from(["a", "b", "c"]), max_size=3),
    "pooling": st.sampled_from(["last", "mean"]),
    "beta": st.floats(0.01, 1),
    "extra_data": st.lists(st.just("rows.jsonl"), max_size=2),
    "weights": st.lists(st.floats(0, 2), max_size=3),
    "lora.rank": st.integers(1, 8),
    "lora.alpha": st.floats(1, 64),
    "lora.dropout": st.floats(0, 0.5),
    "lora.targets": st.lists(st.sampled_from(["attention", "mlp", "qkv"]), max_size=2),
    "train.max_steps": st.integers(1, 3),
    "train.lr": st.floats(1e-5, 1e-2),
    "train.batch_size": st.integers(1, 4),
}


@st.composite
def tune_raw(draw) -> dict:
    section: dict = {"model": "smollm2", "data": "notes.txt"}
    for name in draw(st.lists(st.sampled_from([*VALID, "rank", "train.learning_rate", "lora.r"]), min_size=1,
                              max_size=5, unique=True)):
        value = draw(st.one_of(VALID[name], junk()) if name in VALID else junk())
        if "." in name:
            table, key = name.split(".")
            if not isinstance(section.get(table), dict):
                section[table] = {}
            section[table][key] = value
        else:
            section[name] = value
    if draw(st.integers(0, 9)) == 0:
        section[draw(st.sampled_from(["lora", "train"]))] = draw(json_values)
    return {"tune": section} if draw(st.booleans()) else section


@fuzz(4)
@given(raw=st.one_of(tune_raw(), json_values.map(lambda v: {"tune": v})))
@example(raw={"tune": {"data": "x", "train": 5}})
@example(raw={"tune": {"data": "x", "weights": [1e400]}})
def test_load_tune_config_raises_only_user_errors(raw):
    library(load_tune_config, raw)


ROW = st.one_of(json_values,
                st.fixed_dictionaries({"text": st.one_of(st.text(max_size=20), json_values)}),
                st.fixed_dictionaries({"messages": json_values}),
                st.fixed_dictionaries({"prompt": json_values, "completion": json_values}),
                st.fixed_dictionaries({"prompt": st.text(max_size=5), "chosen": json_values, "rejected": json_values}),
                st.fixed_dictionaries({"text": st.text(max_size=8), "label": json_values}))
LINE = st.one_of(ROW.map(json.dumps), deep_json(), st.text(max_size=20))


@fuzz(1.5)
@given(lines=st.lists(LINE, min_size=1, max_size=5), suffix=st.sampled_from([".jsonl", ".csv", ".txt"]),
       raw_bytes=st.one_of(st.none(), st.binary(max_size=40)))
@example(lines=['{"text": "\\udcff hello"}'], suffix=".jsonl", raw_bytes=None)
@example(lines=["[" * 10000], suffix=".jsonl", raw_bytes=None)
def test_tuning_data_raises_only_user_errors(lines, suffix, raw_bytes, tmp_path_factory):
    path = tmp_path_factory.mktemp("tune-data") / f"data{suffix}"
    if raw_bytes is not None:
        path.write_bytes(raw_bytes)
    else:
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8", errors="surrogatepass")
    library(read_tuning_data, str(path))


FAST = ["--set", "train.max_steps=1", "--set", "train.eval_every=1", "--set", "train.batch_size=2",
        "--set", "train.eval_batches=1", "--set", "train.dtype='fp32'", "--set", "train.progress=false"]


def maybe(strategy, absent: float = 0.5):
    return st.one_of(st.none(), strategy) if absent else strategy


@fuzz(1)
@given(method=maybe(st.one_of(st.sampled_from(["lora", "full"]), arg_text)),
       objective=maybe(st.one_of(st.sampled_from(["auto", "causal_lm", "sft", "dpo", "classify"]), arg_text)),
       rank=maybe(st.one_of(st.integers(1, 4), bad_ints).map(str)),
       alpha=maybe(st.sampled_from(["8", "0", "-1", "nan", "inf", "1e400", "x"])),
       targets=maybe(st.one_of(st.sampled_from(["attention", "mlp", "attention,mlp", "qkv", ",", "zz"]), arg_text)),
       max_length=maybe(st.one_of(st.integers(8, 24), bad_ints).map(str)),
       seed=maybe(st.one_of(st.integers(0, 3), bad_ints).map(str)),
       weights=maybe(st.sampled_from(["1", "1,1", "0", "-1", "nan", "x", "1e400", ","])),
       data=st.sampled_from(["rows", "rows", "text", "missing", "deep", "surrogate", "latin1"]),
       extra=st.lists(st.sampled_from(["--set", "rank=2", "--set", "nonsense=1", "--set", "lora.rank=0",
                                       "--threads", "-1", "--threads", "1", "--set", "train.lr=nan"]), max_size=2),
       out=st.sampled_from(["ok", "ok", "/dev/null/x"]))
def test_fissure_tune_exits_0_or_2(method, objective, rank, alpha, targets, max_length, seed, weights, data, extra,
                                   out, tiny_ckpt, corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("tune-fuzz")
    files = {"rows": corpus / "rows.jsonl", "text": corpus / "text", "missing": root / "missing.jsonl"}
    if data == "deep":
        files[data] = root / "deep.jsonl"
        files[data].write_text("[" * 10000 + "\n")
    elif data == "surrogate":
        files[data] = root / "s.jsonl"
        files[data].write_text('{"text": "\\udcff"}\n' * 12)
    elif data == "latin1":
        files[data] = root / "l.jsonl"
        files[data].write_bytes('{"text": "caf\xe9"}\n'.encode("latin-1") * 12)
    args = ["tune", tiny_ckpt, "--data", files[data]]
    for flag, value in [("--method", method), ("--objective", objective), ("--rank", rank), ("--alpha", alpha),
                        ("--targets", targets), ("--max-length", max_length), ("--seed", seed),
                        ("--weights", weights)]:
        if value is not None:
            args += [flag, value]
    if max_length is None:
        args += ["--max-length", "16"]
    args += [*extra, *FAST, "--out-dir", root / "runs" if out == "ok" else out]
    cli(args, root / "runs" if out == "ok" else None)
