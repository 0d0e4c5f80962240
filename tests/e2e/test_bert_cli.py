"""``fissure train`` a tiny BERT from examples/tiny-bert.toml, then ``fissure fill-mask`` on it: HF's
output keys and types, scores sorted and summing to at most 1; user mistakes exit 2 with one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def fissure(*args, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "fissure", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd or ROOT, timeout=300)


def one_line_error(result, pattern):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and pattern in lines[0], result.stderr


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    result = fissure("train", ROOT / "examples" / "tiny-bert.toml", "--out-dir", runs, "--json",
                     "--set", "train.max_steps=30", "--set", "train.eval_every=15", "--set", "train.eval_batches=2",
                     "--set", "data.max_bytes=120000", "--set", "train.progress=false")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["task"] == "mlm" and summary["steps"] == 30
    assert summary["val_loss"] < summary["val_loss_before"]  # it learned something
    assert (Path(summary["run_dir"]) / "config.toml").read_text().startswith('task = "mlm"')
    return Path(summary["checkpoint"]), runs


def test_fill_mask_json(checkpoint):
    ck, runs = checkpoint
    result = fissure("fill-mask", ck, "The [MASK] of the module.", "--top-k", 5, "--json", "--out-dir", runs)
    assert result.returncode == 0, result.stderr
    predictions = json.loads(result.stdout)
    assert isinstance(predictions, list) and len(predictions) == 5
    for p in predictions:
        assert set(p) == {"score", "token", "token_str", "sequence"}
        assert isinstance(p["score"], float) and isinstance(p["token"], int)
        assert isinstance(p["token_str"], str) and isinstance(p["sequence"], str)
        assert "[MASK]" not in p["sequence"] and "[CLS]" not in p["sequence"]
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
    assert len({p["token"] for p in predictions}) == 5


def test_fill_mask_two_masks_gives_one_list_per_mask(checkpoint):
    ck, runs = checkpoint
    result = fissure("fill-mask", ck, "[MASK] the [MASK].", "--top-k", 3, "--json", "--out-dir", runs)
    assert result.returncode == 0, result.stderr
    predictions = json.loads(result.stdout)
    assert len(predictions) == 2 and all(len(row) == 3 and isinstance(row, list) for row in predictions)
    assert all("[MASK]" in p["sequence"] for row in predictions for p in row)  # the other mask stays, as in HF


def test_fill_mask_errors(checkpoint, tmp_path):
    ck, runs = checkpoint
    one_line_error(fissure("fill-mask", ck, "no mask here", "--out-dir", tmp_path), "[MASK]")
    one_line_error(fissure("fill-mask", ck, " ".join(["[MASK]"] * 9), "--out-dir", tmp_path), "at most 8")
    one_line_error(fissure("fill-mask", tmp_path / "nope", "a [MASK]", "--out-dir", tmp_path), "not a checkpoint")
    assert not list(tmp_path.glob("fill-mask-*"))  # mistakes leave no run directory


def test_fill_mask_refuses_a_gpt(tmp_path):
    from fissure.models import GPT, GPTConfig
    from fissure.text.tokenizers import CharTokenizer
    from fissure.train.checkpoint import save_checkpoint

    tok = CharTokenizer.from_texts(["abc"])
    save_checkpoint(tmp_path / "gpt", GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=1,
                                                    n_embd=8)), tok)
    one_line_error(fissure("fill-mask", tmp_path / "gpt", "a [MASK]", "--out-dir", tmp_path), "needs a BERT")


def test_train_bad_task_and_finished_resume(checkpoint, tmp_path):
    ck, runs = checkpoint
    cfg = tmp_path / "bad.toml"
    cfg.write_text((ROOT / "examples" / "tiny-bert.toml").read_text().replace('task = "mlm"', 'task = "mlmm"'))
    one_line_error(fissure("train", cfg, "--out-dir", tmp_path), "task must be one of causal_lm, mlm")
    one_line_error(fissure("train", ROOT / "examples" / "tiny-bert.toml", "--resume", ck, "--out-dir", tmp_path,
                           "--set", "train.max_steps=30"), "nothing to resume")
    assert not list(tmp_path.glob("train-*"))


def test_a_bert_is_not_a_causal_lm_but_shows_its_attention(checkpoint, tmp_path):
    ck, _ = checkpoint
    one_line_error(fissure("generate", ck, "--prompt", "the"), "a bert model does not generate text left to right: "
                                                                "use fissure fill-mask")
    result = fissure("attention", ck, "the module reads files", "--json", "--out-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["causal"] is False and summary["tokens"][0] == "[CLS]"
    assert len(summary["heads"]) == summary["n_layer"] > 0
