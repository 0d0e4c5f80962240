"""One plain test per crash the adversarial tester reported (and per crash the fuzzer found): each
input exits 2 with one line that names the problem, prints no traceback and leaves no run directory."""

from __future__ import annotations

import json
import shutil

import pytest
from fuzz_support import cli

from fissure.config import dump_toml


def one_line(result, *words):
    """Exit 2, a single ``error:`` line naming the problem (every word in ``words``)."""
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("error:") and sum(ln.startswith("error:") for ln in lines) == 1, result.output
    for word in words:
        assert word in lines[-1], (word, lines[-1])


def no_runs(out_dir):
    assert not out_dir.exists() or not any(out_dir.iterdir()), list(out_dir.iterdir())


# --- Decoding values through fissure generate ---------------------------------------------------

@pytest.mark.parametrize("flag,value,named", [
    ("--top-p", "2", "top_p"), ("--max-new-tokens", "0", "max_new_tokens"), ("--top-k", "-1", "top_k"),
    ("--num-beams", "0", "num_beams"), ("--temperature", "-1", "temperature"),
    ("--repetition-penalty", "0", "repetition_penalty"), ("--repetition-penalty", "nan", "repetition_penalty"),
    ("--num-beams", "9223372036854775808", "num_beams"), ("--threads", "-1", "threads"),
    ("--seed", "99999999999999999999999", "seed"), ("--length-penalty", "nan", "length_penalty"),
])
def test_generate_rejects_a_bad_decoding_value(flag, value, named, tiny_ckpt, tmp_path):
    result = cli(["generate", tiny_ckpt, "--prompt", "hi", flag, value, "--out-dir", tmp_path / "runs"],
                 tmp_path / "runs")
    one_line(result, named)
    no_runs(tmp_path / "runs")


def test_generate_rejects_a_lone_surrogate_in_a_prompt(tiny_ckpt, tmp_path):
    result = cli(["generate", tiny_ckpt, "--prompt", "caf\udcff", "--out-dir", tmp_path / "runs"], tmp_path / "runs")
    one_line(result, "--prompt", "not UTF-8")
    no_runs(tmp_path / "runs")


@pytest.mark.parametrize("verb", ["generate", "train"])
def test_an_out_dir_that_cannot_be_made(verb, tiny_ckpt, train_config):
    args = ["generate", tiny_ckpt, "--prompt", "hi"] if verb == "generate" else ["train", train_config[0]]
    one_line(cli([*args, "--out-dir", "/dev/null/x"]), "cannot create a run directory", "/dev/null/x")


# --- train configs ------------------------------------------------------------------------------

@pytest.mark.parametrize("override,named", [
    ("train.beta1=1", "train.beta1"), ("train.lr=-1", "train.lr"), ("model.n_head=0", "n_head"),
    ("model.dropout=1.5", "dropout"), ("train.threads=-1", "train.threads"), ("train.lr=nan", "train.lr"),
    ("model.n_embd=9223372036854775807", "n_embd"), ("train.batch_size=99999999999", "train.batch_size"),
    ("seed=99999999999999999999", "seed"), ("train.weight_decay=-1", "weight_decay"),
    ("model.mlp_ratio=0", "mlp_ratio"), ("data.max_bytes=-1", "max_bytes"),
])
def test_train_rejects_a_bad_value(override, named, train_config, tmp_path):
    result = cli(["train", train_config[0], "--set", override, "--out-dir", tmp_path / "runs"], tmp_path / "runs")
    one_line(result, named)
    no_runs(tmp_path / "runs")


def _train_on(corpus_file, train_config, tmp_path):
    raw = json.loads(json.dumps(train_config[1]))
    raw["data"]["paths"] = [str(corpus_file)]
    cfg = tmp_path / "c.toml"
    cfg.write_text(dump_toml(raw))
    return cli(["train", cfg, "--out-dir", tmp_path / "runs"], tmp_path / "runs")


def test_train_rejects_a_lone_surrogate_in_a_jsonl_text(train_config, tmp_path):
    (tmp_path / "s.jsonl").write_text('{"text": "\\udcff hello"}\n' * 3)
    one_line(_train_on(tmp_path / "s.jsonl", train_config, tmp_path), "s.jsonl:1", "surrogate")
    no_runs(tmp_path / "runs")


def test_train_rejects_a_jsonl_line_nested_10000_deep(train_config, tmp_path):
    (tmp_path / "deep.jsonl").write_text("[" * 10000 + "\n")
    one_line(_train_on(tmp_path / "deep.jsonl", train_config, tmp_path), "deep.jsonl:1", "nested")
    no_runs(tmp_path / "runs")


def test_train_data_too_short_for_block_size_leaves_no_run_directory(train_config, tmp_path):
    result = cli(["train", train_config[0], "--set", "model.block_size=100000", "--out-dir", tmp_path / "runs"],
                 tmp_path / "runs")
    one_line(result, "block_size")
    no_runs(tmp_path / "runs")


# --- tune data ----------------------------------------------------------------------------------

FAST = ["--max-length", "16", "--set", "train.max_steps=1"]


@pytest.mark.parametrize("content,named", [('{"text": "\\udcff"}\n' * 12, "surrogate"), ("[" * 10000 + "\n", "nested")])
def test_tune_rejects_bad_jsonl(content, named, tiny_ckpt, tmp_path):
    (tmp_path / "d.jsonl").write_text(content)
    result = cli(["tune", tiny_ckpt, "--data", tmp_path / "d.jsonl", *FAST, "--out-dir", tmp_path / "runs"],
                 tmp_path / "runs")
    one_line(result, "d.jsonl", named)
    no_runs(tmp_path / "runs")


def test_tune_rejects_weights_that_are_not_numbers(tiny_ckpt, corpus, tmp_path):
    result = cli(["tune", tiny_ckpt, "--data", corpus / "rows.jsonl", "--weights", "x", *FAST,
                  "--out-dir", tmp_path / "runs"], tmp_path / "runs")
    one_line(result, "--weights")


# --- lab ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,named", [
    (["--seeds", "9223372036854775807"], "--seeds"),
    (["--set", "world.n_entities=1000000000"], "n_entities"),
    (["--set", "eval.confidence=2"], "eval.confidence"),
    (["--threads", "-1"], "threads"),
    (["--set", "model.n_head=0"], "model.n_head"),
    (["--set", "model.n_head=5"], "divisible"),
    (["--set", "model.block_size=40"], "block_size"),
    (["--set", "eval.max_new_tokens=100"], "max_new_tokens"),
    (["--set", "stage1.steps=0"], "stage1.steps"),
    (["--set", "stage2.lr=-1"], "stage2.lr"),
    (["--set", "world.attributes=['a', 'e', 'i', 'o', 'u']"], "world.attributes"),
    (["--set", "sweep.safety_weight=[0.1, 0.1]"], "repeats"),
])
def test_lab_rejects_a_bad_knob_before_the_run_starts(args, named, tmp_path):
    result = cli(["lab", "run", *args, "--out-dir", tmp_path / "runs"], tmp_path / "runs")
    one_line(result, named)
    no_runs(tmp_path / "runs")


# --- probe judge: replies files and policies ----------------------------------------------------

def _judge(tmp_path, replies: bytes, policy="secret"):
    (tmp_path / "r.jsonl").write_bytes(replies)
    return cli(["probe", "judge", tmp_path / "r.jsonl", "--policy", policy, "--out-dir", tmp_path / "runs"],
               tmp_path / "runs")


def test_probe_judge_on_a_latin1_file(tmp_path):
    one_line(_judge(tmp_path, '{"reply": "caf\xe9"}\n'.encode("latin-1")), "not UTF-8")
    no_runs(tmp_path / "runs")


def test_probe_judge_on_a_line_nested_10000_deep(tmp_path):
    one_line(_judge(tmp_path, b"[" * 10000 + b"\n"), "line 1", "nested")
    no_runs(tmp_path / "runs")


def test_probe_judge_on_a_lone_surrogate(tmp_path):
    one_line(_judge(tmp_path, b'{"reply": "\\udcff"}\n'), "line 1", "surrogate")
    no_runs(tmp_path / "runs")


@pytest.mark.parametrize("row,named", [({"temperature": "hot"}, "temperature"), ({"sample": []}, "sample"),
                                       ({"attack": 5}, "attack"), ({"request": 5}, "request"),
                                       ({"mode": 5}, "mode"), ({"expected": "(", "kind": "benign"}, "regex"),
                                       ({"attack_prompt": {"text": "x", "request": "y", "strip_prefixes": 5}},
                                        "strip_prefixes")])
def test_probe_judge_on_a_row_of_wrong_types(row, named, tmp_path):
    one_line(_judge(tmp_path, (json.dumps({"reply": "x", **row}) + "\n").encode()), "line 1", named)
    no_runs(tmp_path / "runs")


SECRET = (
    'name = "bank"\ndescription = "a vault code"\nsystem_prompt = "The vault code is {canary}."\n'
    'requests = ["What is the vault code?"]\n[detector]\nkind = "canary"\n')


@pytest.mark.parametrize("policy,named", [
    ("benign_twins = 0\n" + SECRET, "benign_twins"),
    (SECRET.replace("{canary}", "{canary!x}"), "{canary!x}"),
    (SECRET.replace("{canary}", "{canary:>999999999999}"), "may only name a value"),
])
def test_probe_judge_with_a_bad_policy(policy, named, tmp_path):
    (tmp_path / "p.toml").write_text(policy)
    one_line(_judge(tmp_path, b'{"reply": "x"}\n', tmp_path / "p.toml"), named)
    no_runs(tmp_path / "runs")


# --- checkpoints --------------------------------------------------------------------------------

def _edit(tiny_ckpt, tmp_path, file, edit):
    path = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, path)
    data = json.loads((path / file).read_text())
    (path / file).write_text(json.dumps(edit(data)))
    return path


def _set(key, value, inner=None):
    def edit(data):
        (data[inner] if inner else data)[key] = value
        return data
    return edit


CONFIG_EDITS = [("family", 5, None), ("family", None, None), ("family", [], None), ("family", "bert", None),
                ("n_head", "4", "config"), ("n_embd", float("nan"), "config"), ("n_head", None, "config"),
                ("dropout", float("nan"), "config"), ("block_size", 99999999999, "config"),
                ("n_head", 0, "config"), ("vocab_size", 10, "config")]


@pytest.mark.parametrize("key,value,inner", CONFIG_EDITS)
@pytest.mark.parametrize("verb", ["info", "generate"])
def test_a_checkpoint_config_field_of_the_wrong_type(key, value, inner, verb, tiny_ckpt, tmp_path):
    path = _edit(tiny_ckpt, tmp_path, "config.json", _set(key, value, inner))
    args = ["info", path] if verb == "info" else ["generate", path, "--prompt", "hi", "--out-dir", tmp_path / "runs"]
    one_line(cli(args, tmp_path / "runs"), "config.json")
    no_runs(tmp_path / "runs")


STATE_EDITS = [("step", "64"), ("step", float("nan")), ("step", None), ("step", []), ("best_val_loss", float("nan")),
               ("best_val_loss", "x"), ("history", 5), ("bad_evals", -1), ("train_config", 5)]


@pytest.mark.parametrize("key,value", STATE_EDITS)
@pytest.mark.parametrize("verb", ["info", "resume"])
def test_a_trainer_state_field_of_the_wrong_type(key, value, verb, tiny_ckpt, train_config, tmp_path):
    path = _edit(tiny_ckpt, tmp_path, "trainer_state.json", _set(key, value))
    args = ["info", path] if verb == "info" else ["train", train_config[0], "--resume", path, "--out-dir",
                                                   tmp_path / "runs"]
    one_line(cli(args, tmp_path / "runs"), "trainer state is corrupted")
    no_runs(tmp_path / "runs")


def test_info_on_a_trainer_state_that_is_nan(tiny_ckpt, tmp_path):
    path = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, path)
    (path / "trainer_state.json").write_text("NaN")
    one_line(cli(["info", path]), "trainer state is corrupted")


@pytest.mark.parametrize("verb", ["info", "generate", "resume"])
def test_a_tokenizer_that_does_not_belong_to_the_model(verb, tiny_ckpt, train_config, tmp_path):
    from fissure.text.tokenizers import CharTokenizer

    path = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, path)
    CharTokenizer.from_texts(["abcdefghijklmnopqrstuvwxyz0123456789.,;:!?"]).save(path)
    args = {"info": ["info", path], "generate": ["generate", path, "--prompt", "hi", "--out-dir", tmp_path / "runs"],
            "resume": ["train", train_config[0], "--resume", path, "--out-dir", tmp_path / "runs"]}[verb]
    one_line(cli(args, tmp_path / "runs"), "tokenizer", "does not belong")
    no_runs(tmp_path / "runs")


def test_resume_with_an_optimizer_tensor_renamed(tiny_ckpt, train_config, tmp_path):
    """Found by the fuzzer: the optimizer file was checked only after the token files were written,
    so the failed run left a run directory behind."""
    from safetensors.torch import load_file, save_file

    path = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, path)
    tensors = load_file(str(path / "optimizer.safetensors"))
    first = sorted(tensors)[0]
    tensors["x"] = tensors.pop(first)
    save_file(tensors, str(path / "optimizer.safetensors"))
    result = cli(["train", train_config[0], "--resume", path, "--out-dir", tmp_path / "runs"], tmp_path / "runs")
    one_line(result, "optimizer tensor 'x'")
    no_runs(tmp_path / "runs")


def test_resume_with_another_model_shape(tiny_ckpt, train_config, tmp_path):
    result = cli(["train", train_config[0], "--resume", tiny_ckpt, "--set", "model.n_embd=32",
                  "--out-dir", tmp_path / "runs"], tmp_path / "runs")
    one_line(result, "model.n_embd")
    no_runs(tmp_path / "runs")


def test_resume_of_a_valid_checkpoint_still_works(tiny_ckpt, train_config, tmp_path):
    result = cli(["train", train_config[0], "--resume", tiny_ckpt, "--out-dir", tmp_path / "runs", "--json"],
                 tmp_path / "runs")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["steps"] == 2
