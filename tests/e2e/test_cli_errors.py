"""User mistakes: one clear line, non-zero exit, no traceback, nothing half-written."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fissure.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, pattern):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert any(pattern in ln for ln in lines), result.output
    assert lines[-1].startswith("error:")


def write_config(tmp_path, data_lines, extra=""):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'out_dir = "{tmp_path / "runs"}"\n[data]\n{data_lines}\n[tokenizer]\nkind = "char"\n'
                   f'[model]\nblock_size = 16\nn_layer = 1\nn_head = 1\nn_embd = 16\n'
                   f'[train]\nmax_steps = 3\nbatch_size = 2\neval_every = 3\neval_batches = 1\nprogress = false\n{extra}')
    return cfg


def test_nonexistent_text_path(tmp_path):
    cfg = write_config(tmp_path, f'paths = ["{tmp_path / "missing"}"]')
    one_line_error(invoke("train", cfg), "missing")
    assert list((tmp_path / "runs").iterdir()) == []  # the failed run left no half-written directory


def test_empty_corpus(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("   \n")
    cfg = write_config(tmp_path, f'paths = ["{tmp_path / "empty"}"]')
    one_line_error(invoke("train", cfg), "no text")


def test_binary_file(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"hello\x00\x01\x02\xff\xfe")
    cfg = write_config(tmp_path, f'paths = ["{tmp_path / "bin.txt"}"]')
    one_line_error(invoke("train", cfg), "bin.txt")


def test_unknown_config_key(tmp_path):
    cfg = write_config(tmp_path, 'builtin = "stdlib"', extra="learning_rate = 0.1\n")
    one_line_error(invoke("train", cfg), "train.learning_rate")
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_bad_override(tmp_path):
    cfg = write_config(tmp_path, 'builtin = "stdlib"')
    one_line_error(invoke("train", cfg, "--set", "model.n_layers=3"), "model.n_layers")


def test_vocab_size_too_small(tmp_path):
    cfg = write_config(tmp_path, 'builtin = "stdlib"\nmax_bytes = 20000')
    cfg.write_text(cfg.read_text().replace('kind = "char"', 'kind = "bpe"\nvocab_size = 100'))
    one_line_error(invoke("train", cfg), "vocab_size")


def test_missing_checkpoint(tmp_path):
    one_line_error(invoke("info", tmp_path / "nope"), "not found")
    one_line_error(invoke("eval", tmp_path / "nope", "--text", tmp_path), "unknown model")
    one_line_error(invoke("generate", "smolm2", "--prompt", "x"), "Did you mean 'smollm2'?")
    (tmp_path / "empty").mkdir()
    one_line_error(invoke("generate", tmp_path / "empty", "--prompt", "x"), "is not a model")


def test_native_backend_for_a_model_without_one(tmp_path):
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text('{"model_type": "gpt2"}')
    one_line_error(invoke("generate", tmp_path / "gpt2", "--prompt", "x", "--backend", "native"),
                   "use --backend transformers or --backend auto")


def test_block_size_exceeded_at_generation(tmp_path):
    cfg = write_config(tmp_path, 'builtin = "stdlib-docs"\nmax_bytes = 30000')
    result = invoke("train", cfg, "--json")
    assert result.exit_code == 0, result.output
    ckpt = next((tmp_path / "runs").glob("train-*/checkpoint"))
    one_line_error(invoke("generate", ckpt, "--prompt", "x" * 40, "--max-new-tokens", "4"), "context")
    one_line_error(invoke("generate", ckpt, "--prompt", "abc", "--max-new-tokens", "100"), "context")
    assert [p.name.split("-")[0] for p in (tmp_path / "runs").iterdir()] == ["train"]


def test_no_traceback_in_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fissure", "info", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: checkpoint not found: {tmp_path / 'nope'}"]


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["train", "--help"], ["models", "--help"]])
def test_help_and_version(args):
    result = invoke(*args)
    assert result.exit_code == 0
    assert "fissure" in result.output
