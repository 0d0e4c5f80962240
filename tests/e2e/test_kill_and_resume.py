"""Fault injection: ``kill -9`` at random moments of train, tune, probe and lab runs, then resume
until done; the result must equal an uninterrupted run's, with no sample lost or duplicated. And a
full disk while a checkpoint is written leaves the previous checkpoint intact.

Each verb runs in a subprocess (a real SIGKILL: no cleanup code runs). Kill times are drawn from a
seeded RNG between the start-up time and the uninterrupted run's wall time, so most kills land
mid-work; the number of kills and the wall time are bounded.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

KILLS_PER_VERB = 6  # kills attempted per verb
MIN_KILLS = 4  # kills that must land: a kill drawn late in a short run can find it already finished
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "FISSURE_CACHE": "", "PYTHONUNBUFFERED": "1"}
CLI = [sys.executable, "-c", "from fissure.cli import main; main()"]


def run(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def run_killed(args: list[str], cwd: Path, env: dict, progress, delay: float) -> bool:
    """Start the verb; once ``progress()`` has grown past its value at the start (a checkpoint or a
    sample written), wait ``delay`` more seconds and SIGKILL it. Whether it finished first."""
    start = progress()
    proc = subprocess.Popen(CLI + args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while proc.poll() is None and progress() <= start and time.monotonic() < deadline:
        time.sleep(0.02)
    if proc.poll() is None:
        time.sleep(delay)
    if proc.poll() is not None:
        return proc.returncode == 0
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return False


def timed(args: list[str], cwd: Path, env: dict) -> tuple[subprocess.CompletedProcess, float]:
    t = time.perf_counter()
    result = run(args, cwd, env)
    assert result.returncode == 0, result.stderr[-2000:]
    return result, time.perf_counter() - t


@pytest.fixture
def env(tmp_path):
    return {**ENV, "FISSURE_CACHE": str(tmp_path / "cache")}


def weights(path: Path) -> dict:
    name = "adapter_model.safetensors" if (path / "adapter_model.safetensors").is_file() else "model.safetensors"
    return load_file(str(path / name))


def step_of(checkpoint: Path | None) -> int:
    return json.loads((checkpoint / "trainer_state.json").read_text())["step"] if checkpoint else 0


def kill_chain(args: list[str], runs: Path, cwd: Path, env: dict, interval: float, seed: int, steps: int) -> int:
    """Run; kill at a random moment after the next checkpoint appears (within ``interval``, the time
    between two checkpoints); resume from the newest checkpoint; again, ``KILLS_PER_VERB`` times;
    then let it finish. The number of kills that stopped a run (fewer if a run finished first)."""
    rng, kills = random.Random(seed), 0

    def progress() -> int:
        return step_of(newest_checkpoint(runs) if runs.exists() else None)

    while progress() < steps:
        resume = newest_checkpoint(runs) if runs.exists() else None
        extra = ["--resume", str(resume)] if resume else []
        if kills >= KILLS_PER_VERB:
            final = run(args + extra + ["--out-dir", str(runs)], cwd, env)
            assert final.returncode == 0, final.stderr[-2000:]
        elif not run_killed(args + extra + ["--out-dir", str(runs)], cwd, env, progress, rng.uniform(0, interval)):
            kills += 1
    return kills


def newest_checkpoint(root: Path) -> Path | None:
    """The resumable checkpoint with the most steps under ``root`` (kills can leave several runs)."""
    best, best_step = None, -1
    for state in root.glob("*/checkpoint/trainer_state.json"):
        step = json.loads(state.read_text())["step"]
        if step > best_step:
            best, best_step = state.parent, step
    return best


TRAIN = ["--set", "data.paths=['DATA']", "--set", "model.n_layer=1", "--set", "model.n_embd=32",
         "--set", "model.block_size=32", "--set", "model.dropout=0.1", "--set", "train.max_steps=40",
         "--set", "train.save_every=2", "--set", "train.eval_every=20", "--set", "train.batch_size=8",
         "--set", "train.early_stopping_patience=0", "--set", "train.threads=1"]


@pytest.mark.slow
def test_train_killed_again_and_again_resumes_to_the_same_model(tmp_path, env):
    data = tmp_path / "text.txt"
    data.write_text("the quick brown fox jumps over the lazy dog. " * 300)
    args = ["train", str(Path(__file__).parents[2] / "examples" / "tiny-gpt.toml"),
            *[a.replace("DATA", str(data)) for a in TRAIN]]
    straight, wall = timed(args + ["--out-dir", str(tmp_path / "straight"), "--json"], tmp_path, env)
    summary = json.loads(straight.stdout.strip().splitlines()[-1])
    want = weights(Path(summary["checkpoint"]))
    between_saves = 2 * 8 * 32 / summary["tokens_per_second"]  # save_every x batch x block / speed
    runs = tmp_path / "killed"
    assert kill_chain(args, runs, tmp_path, env, between_saves, seed=0, steps=40) >= MIN_KILLS
    got = weights(newest_checkpoint(runs))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)  # bit-identical
    assert not list(runs.glob("*/.checkpoint.*"))  # no temporaries left behind


def chats(path: Path) -> Path:
    words = ["cat", "dog", "mat", "park", "hello", "world", "paris", "one", "two", "three"]
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"say {w}"},
                                                     {"role": "assistant", "content": f"{w} {w}"}]}) + "\n"
                            for w in words))
    return path


@pytest.mark.slow
def test_tune_killed_again_and_again_resumes_to_the_same_adapter(tiny_llama, tmp_path, env):
    args = ["tune", str(tiny_llama[0]), "--data", str(chats(tmp_path / "chats.jsonl")), "--max-length", "32",
            "--set", "train.max_steps=24", "--set", "train.save_every=2", "--set", "train.eval_every=12",
            "--set", "train.batch_size=2", "--set", "train.dtype='fp32'", "--set", "train.threads=1"]
    straight, wall = timed(args + ["--out-dir", str(tmp_path / "straight"), "--json"], tmp_path, env)
    summary = json.loads(straight.stdout.strip().splitlines()[-1])
    want = weights(Path(summary["checkpoint"]))
    between_saves = 0.06  # two steps of 2 short chats on the tiny Llama take about this long
    runs = tmp_path / "killed"
    assert kill_chain(args, runs, tmp_path, env, between_saves, seed=1, steps=24) >= MIN_KILLS
    got = weights(newest_checkpoint(runs))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def resume_until_done(args: list[str], run_root: Path, cwd: Path, env: dict, progress, interval: float, seed: int,
                      resume_flag: list[str]) -> Path:
    """Start a run; kill it at a random moment after its next unit of work is saved (within
    ``interval``), resume the same run directory, ``KILLS_PER_VERB`` times; then let it finish."""
    rng, kills, run_dir = random.Random(seed), 0, None

    def done() -> int:
        return progress(run_dir) if run_dir is not None else 0

    while kills < KILLS_PER_VERB:
        if run_dir is None:
            made = lambda: len(list(run_root.glob("*/config.toml"))) if run_root.exists() else 0  # noqa: E731
            finished = run_killed(args + ["--out-dir", str(run_root)], cwd, env, made, rng.uniform(0, interval))
            run_dir = next(iter(sorted(run_root.glob("*"))), None)
        else:
            finished = run_killed(resume_flag + [str(run_dir)], cwd, env, done, rng.uniform(0, interval))
        if finished:
            break
        kills += 1
    final = run(resume_flag + [str(run_dir), "--json"], cwd, env)
    assert final.returncode == 0, final.stderr[-2000:]
    assert kills >= MIN_KILLS
    return run_dir


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


@pytest.mark.slow
def test_probe_killed_again_and_again_loses_and_duplicates_no_sample(tiny_llama, tmp_path, env):
    from fissure.judges import read_samples

    args = ["probe", str(tiny_llama[0]), "--attacks", "none,prefix_injection,rot13", "--twins", "2",
            "--samples", "3", "--temperature", "0,1.0", "--max-new-tokens", "16", "--batch-size", "2",
            "--threads", "1"]
    straight, wall = timed(args + ["--out-dir", str(tmp_path / "straight"), "--json"], tmp_path, env)
    want = json.loads(straight.stdout.strip().splitlines()[-1])
    run_dir = resume_until_done(args, tmp_path / "killed", tmp_path, env,
                                lambda d: lines(d / "samples.jsonl"), 0.05, seed=2,
                                resume_flag=["probe", "--threads", "1", "--resume"])
    samples = read_samples(run_dir / "samples.jsonl")
    keys = [s.key for s in samples]
    assert len(keys) == len(set(keys)) == want["throughput"]["prompts"]  # none lost, none twice
    got = json.loads((run_dir / "results.json").read_text())
    assert got["attacks"] == want["attacks"] and got["over_refusal"] == want["over_refusal"]


LAB = {"name": "tiny", "seeds": [0, 1, 2], "threads": 1,
       "world": {"n_entities": 4, "encodings": ["plain", "rot13"], "templates": 1},
       "model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 128},
       "stage1": {"steps": 30, "batch_size": 4}, "stage2": {"steps": 10, "batch_size": 4},
       "sweep": {"safety_weight": [0.2, 0.4]},
       "eval": {"attacks": ["plain", "rot13", "prefix_injection"], "max_new_tokens": 6}}


@pytest.mark.slow
def test_lab_killed_again_and_again_loses_and_duplicates_no_sample(tmp_path, env):
    from fissure.config import dump_toml
    from fissure.judges import read_samples

    study = tmp_path / "tiny.toml"
    study.write_text(dump_toml(LAB))
    args = ["lab", "run", str(study)]
    straight, wall = timed(args + ["--out-dir", str(tmp_path / "straight"), "--json"], tmp_path, env)
    want = json.loads(straight.stdout.strip().splitlines()[-1])
    env = {**env, "FISSURE_CACHE": str(tmp_path / "cache-killed")}  # stage 1 retrained under the kills too
    run_dir = resume_until_done(args, tmp_path / "killed", tmp_path, env,
                                lambda d: len(list((d / "points").glob("*.json"))) + lines(d / "samples.jsonl")
                                + len(list((tmp_path / "cache-killed").rglob("stage1.json"))),
                                0.3, seed=3, resume_flag=["lab", "run", "--resume"])
    keys = [s.key for s in read_samples(run_dir / "samples.jsonl")]
    assert len(keys) == len(set(keys)) == 2 * 3 * (3 * 12 + 8)  # points x seeds x (attacks x rows + borderline)
    got = json.loads((run_dir / "results.json").read_text())
    assert [p["attacks"] for p in got["points"]] == [p["attacks"] for p in want["points"]]


def test_a_full_disk_during_a_checkpoint_write_keeps_the_previous_one(tmp_path):
    """A real 2 MiB tmpfs (in a user and mount namespace where the machine allows it; otherwise the
    same ENOSPC raised by the weights writer): the save fails, the old checkpoint is untouched."""
    script = tmp_path / "fill.py"
    script.write_text('''
import sys
from fissure.models import GPT, GPTConfig
from fissure.text.tokenizers import CharTokenizer
from fissure.train.checkpoint import load_model_from_checkpoint, save_checkpoint
root = sys.argv[1]
tok = CharTokenizer.from_texts(["abcdefgh"])
small = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=1, n_embd=8))
path = save_checkpoint(root + "/ckpt", small, tok)
before = (path / "model.safetensors").read_bytes()
big = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=4, n_head=4, n_embd=256))  # ~12 MB
try:
    save_checkpoint(path, big, tok)
    print("saved")
except OSError as e:
    print("failed", e.errno)
assert (path / "model.safetensors").read_bytes() == before
assert load_model_from_checkpoint(path).config.n_embd == 8
print("intact")
''')
    mnt = tmp_path / "disk"
    mnt.mkdir()
    shell = f"mount -t tmpfs -o size=2m tmpfs {mnt} && {sys.executable} {script} {mnt}"
    real = subprocess.run(["unshare", "-rm", "sh", "-c", shell], capture_output=True, text=True, env=ENV,
                          timeout=300)
    if real.returncode == 0:
        assert "failed 28" in real.stdout and "intact" in real.stdout, real.stdout + real.stderr  # ENOSPC
        return
    # no namespaces here: the same failure, raised where the weights are written
    import errno

    from fissure.models import GPT, GPTConfig
    from fissure.text.tokenizers import CharTokenizer
    from fissure.train import checkpoint
    from fissure.train.checkpoint import load_model_from_checkpoint, save_checkpoint

    tok = CharTokenizer.from_texts(["abcdefgh"])
    path = save_checkpoint(tmp_path / "ckpt", GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1,
                                                            n_head=1, n_embd=8)), tok)
    before = (path / "model.safetensors").read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    original = checkpoint.save_model
    checkpoint.save_model = full_disk
    try:
        with pytest.raises(OSError):
            save_checkpoint(path, GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2,
                                                n_embd=16)), tok)
    finally:
        checkpoint.save_model = original
    assert (path / "model.safetensors").read_bytes() == before
    assert load_model_from_checkpoint(path).config.n_embd == 8
