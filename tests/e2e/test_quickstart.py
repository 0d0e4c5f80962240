"""The README's main command, end to end, and the train -> generate -> eval -> info loop."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fissure.cli import app

runner = CliRunner()


def unigram_perplexity(train: np.ndarray, val: np.ndarray, vocab: int) -> float:
    """Add-one smoothed unigram model fitted on train tokens, perplexity on val tokens."""
    counts = np.bincount(train, minlength=vocab).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(math.exp(-logp[val].mean()))


@pytest.mark.slow
def test_quickstart_beats_unigram_baseline(tmp_path):
    result = runner.invoke(app, ["quickstart", "--out-dir", str(tmp_path), "--json",
                                 "--set", "train.max_steps=200", "--set", "train.eval_every=200",
                                 "--set", "data.max_bytes=600000"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    run = tmp_path / summary["run_dir"].split("/")[-1]
    meta = json.loads((run / "meta.json").read_text())
    assert meta["seed"] == 0 and "torch" in meta["versions"] and meta["git_commit"]
    import torch

    assert meta["machine"]["cpu"]["torch_capability"] == torch.backends.cpu.get_cpu_capability()
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    assert ("avx2" in meta["machine"]["cpu"]["flags"]) == (" avx2 " in cpuinfo.replace("\n", " "))
    assert (run / "config.toml").is_file() and (run / "checkpoint" / "model.safetensors").is_file()
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert {s["decoding"] for s in samples} == {"greedy", "top_k", "top_p"}
    data = json.loads((run / "data" / "train.bin.json").read_text())
    dtype = np.dtype(data["dtype"])
    train = np.fromfile(run / "data" / "train.bin", dtype=dtype).astype(np.int64)
    val = np.fromfile(run / "data" / "val.bin", dtype=dtype).astype(np.int64)
    baseline = unigram_perplexity(train, val, summary["data"]["vocab_size"])
    assert summary["val_perplexity_before"] > baseline  # random init is worse than unigram
    assert summary["val_perplexity_after"] < 0.5 * baseline, (summary["val_perplexity_after"], baseline)


@pytest.mark.slow
def test_train_generate_eval_info_loop(tmp_path):
    (tmp_path / "data").mkdir()
    text = "the cat sat on the mat. the dog sat on the log. " * 30
    (tmp_path / "data" / "a.txt").write_text(text)
    (tmp_path / "data" / "b.txt").write_text(text.replace("cat", "bird"))
    (tmp_path / "data" / "c.jsonl").write_text(json.dumps({"text": text.replace("dog", "fox")}) + "\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'out_dir = "{tmp_path / "runs"}"\n[data]\npaths = ["{tmp_path / "data"}"]\nval_fraction = 0.34\n'
                   '[tokenizer]\nkind = "char"\n[model]\nblock_size = 32\nn_layer = 2\nn_head = 2\nn_embd = 32\n'
                   '[train]\nmax_steps = 120\nbatch_size = 8\nlr = 3e-3\neval_every = 60\neval_batches = 4\n')
    r = runner.invoke(app, ["train", str(cfg), "--json", "--set", "train.progress=false"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["val_loss"] < summary["val_loss_before"] - 1.0
    ckpt = summary["checkpoint"]

    r = runner.invoke(app, ["generate", ckpt, "--prompt", "the ", "--max-new-tokens", "12", "--json"])
    assert r.exit_code == 0, r.output
    texts = json.loads(r.stdout.strip().splitlines()[-1])["texts"]
    assert len(texts) == 1 and len(texts[0]) > 0

    r = runner.invoke(app, ["generate", ckpt, "--prompt", "the ", "--prompt", "a", "--top-p", "0.9",
                            "--temperature", "0.8", "--json"])
    assert r.exit_code == 0 and len(json.loads(r.stdout.strip().splitlines()[-1])["texts"]) == 2

    r = runner.invoke(app, ["eval", ckpt, "--text", str(tmp_path / "data" / "a.txt"), "--window", "32",
                            "--stride", "16", "--json"])
    assert r.exit_code == 0, r.output
    ev = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"perplexity", "bits_per_byte", "tokens", "bytes", "window", "stride"} <= ev.keys()
    assert (ev["window"], ev["stride"], ev["bytes"]) == (32, 16, len(text.strip().encode()))
    assert ev["perplexity"] < 4

    r = runner.invoke(app, ["info", ckpt, "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["training"]["step"] == 120

    # resuming a finished run (same schedule, all steps done) is a one-line error, before any run directory
    runs_before = sorted((tmp_path / "runs").iterdir())
    r = runner.invoke(app, ["train", str(cfg), "--json", "--resume", ckpt, "--set", "train.progress=false"])
    assert r.exit_code == 2 and "finished all 120 steps" in r.output.strip().splitlines()[-1], r.output
    assert sorted((tmp_path / "runs").iterdir()) == runs_before
