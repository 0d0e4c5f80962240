"""fissure tune through the command line: flags or a [tune] TOML section, JSON out, every verb on the
checkpoint, merge, and bad input as one line with exit code 2 and no run directory."""

import json
from pathlib import Path

from typer.testing import CliRunner

from fissure.cli import app

runner = CliRunner()
FAST = ["--set", "train.max_steps=2", "--set", "train.eval_every=2", "--set", "train.batch_size=2",
        "--set", "train.dtype='fp32'", "--set", "train.threads=1", "--max-length", "32"]


def last_json(result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


def chats(tmp_path: Path) -> Path:
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"say {w}"},
                                                     {"role": "assistant", "content": w}]}) + "\n"
                            for w in ["cat", "dog", "mat", "park", "hello", "world"]))
    return path


def test_tune_then_every_verb_takes_the_checkpoint(tiny_llama, tmp_path):
    runs = tmp_path / "runs"
    result = runner.invoke(app, ["tune", str(tiny_llama[0]), "--data", str(chats(tmp_path)), *FAST,
                                 "--out-dir", str(runs), "--json"])
    assert result.exit_code == 0, result.output
    summary = last_json(result)
    assert {"run_dir", "checkpoint", "train_loss", "val_loss"} <= set(summary)
    assert "parameters train; dtype fp32\n" in result.stderr  # as set: no reason to give
    ckpt = summary["checkpoint"]
    assert (Path(summary["run_dir"]) / "config.toml").read_text().startswith("[tune]")
    gen = runner.invoke(app, ["generate", ckpt, "--chat", "say cat", "--max-new-tokens", "3", "--json",
                              "--out-dir", str(runs)])
    assert gen.exit_code == 0, gen.output
    notes = tmp_path / "notes.txt"
    notes.write_text("the cat sat on the mat")
    ev = runner.invoke(app, ["eval", ckpt, "--text", str(notes), "--json", "--out-dir", str(runs)])
    assert ev.exit_code == 0 and last_json(ev)["tokens"] > 0, ev.output
    probe = runner.invoke(app, ["probe", ckpt, "--attacks", "none", "--twins", "0", "--requests", "1",
                                "--no-benign", "--max-new-tokens", "4", "--out-dir", str(runs), "--json"])
    assert probe.exit_code == 0, probe.output
    assert last_json(probe)["attacks"]["none"]["n"] == 1
    merged = runner.invoke(app, ["tune", "merge", ckpt, "--json"])
    assert merged.exit_code == 0, merged.output
    assert (Path(last_json(merged)["checkpoint"]) / "model.safetensors").is_file()


def test_a_tune_section_in_toml_works_like_flags(tiny_llama, tmp_path):
    config = tmp_path / "tune.toml"
    config.write_text(f'[tune]\nmodel = "{tiny_llama[0]}"\ndata = "{chats(tmp_path)}"\nmax_length = 32\n'
                      '[tune.lora]\nrank = 2\n[tune.train]\nmax_steps = 2\neval_every = 2\nbatch_size = 2\n'
                      'dtype = "fp32"\nthreads = 1\n')
    result = runner.invoke(app, ["tune", "--config", str(config), "--out-dir", str(tmp_path / "runs"), "--json"])
    assert result.exit_code == 0, result.output
    summary = last_json(result)
    adapter = json.loads((Path(summary["checkpoint"]) / "adapter_config.json").read_text())
    assert adapter["r"] == 2 and summary["steps"] == 2


def test_bad_data_is_one_line_and_leaves_no_run_directory(tiny_llama, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    runs = tmp_path / "runs"
    result = runner.invoke(app, ["tune", str(tiny_llama[0]), "--data", str(bad), "--out-dir", str(runs)])
    assert result.exit_code == 2
    assert "found columns question, answer" in result.output and "Traceback" not in result.output
    assert not runs.exists() or not any(runs.iterdir())
    wrong = runner.invoke(app, ["tune", str(tiny_llama[0]), "--data", str(chats(tmp_path)), "--targets", "wq",
                                *FAST, "--out-dir", str(runs)])
    assert wrong.exit_code == 2 and "matches no Linear module" in wrong.output
    assert runner.invoke(app, ["tune", str(tiny_llama[0]), "--data", str(chats(tmp_path)), "--method", "qlora"]
                         ).exit_code == 2


def test_tune_with_dtype_auto_says_what_it_chose_and_why(tiny_llama, tmp_path):
    from fissure.utils import bf16_verdict, resolve_dtype

    args = [a if a != "train.dtype='fp32'" else "train.dtype='auto'" for a in FAST]
    result = runner.invoke(app, ["tune", str(tiny_llama[0]), "--data", str(chats(tmp_path)), *args,
                                 "--out-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())  # rich wraps long lines at the terminal's width
    assert f"dtype {resolve_dtype('auto')} (auto: {bf16_verdict()[1]})" in said
