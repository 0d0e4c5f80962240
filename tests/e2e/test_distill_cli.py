"""``fissure distill`` end to end: a fissure GPT trained briefly on docstrings teaches a smaller GPT;
both students and the teacher are scored on the same held-out text; the run is reproducible and
resumable; bad input fails in one line before a run directory exists."""

import json

import pytest
from typer.testing import CliRunner

from fissure.cli import app

runner = CliRunner()

STUDENT = """seed = 0
[tokenizer]
kind = "char"          # a `fissure train` config as it is: replaced by the teacher's tokenizer
[model]
block_size = 32
n_layer = 1
n_head = 2
n_embd = 16
[train]
max_steps = 40
batch_size = 8
lr = 3e-3
warmup_steps = 4
eval_every = 20
eval_batches = 2
threads = 1
progress = false
"""


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A fissure GPT (BPE tokenizer) that has learnt something: 120 steps on docstrings."""
    from fissure.train.pipeline import load_run_config, train_from_config

    run_dir = tmp_path_factory.mktemp("teacher")
    cfg = load_run_config({"seed": 1, "data": {"builtin": "stdlib-docs", "max_bytes": 120_000},
                           "tokenizer": {"kind": "bpe", "vocab_size": 384},
                           "model": {"block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 48},
                           "train": {"max_steps": 120, "batch_size": 16, "lr": 3e-3, "warmup_steps": 10,
                                     "eval_every": 120, "eval_batches": 2, "threads": 1, "progress": False}})
    train_from_config(cfg, run_dir)
    return run_dir / "checkpoint"


def distill(teacher, tmp_path, *extra):
    tmp_path.mkdir(parents=True, exist_ok=True)
    student = tmp_path / "student.toml"
    student.write_text(STUDENT)
    return runner.invoke(app, ["distill", str(teacher), "--student", str(student), "--data", "docs",
                               "--set", "distill.max_bytes=60000", "--set", "distill.eval_bytes=6000",
                               "--out-dir", str(tmp_path / "runs"), "--json", *extra])


@pytest.mark.slow
def test_distill_reports_both_students_and_the_teacher_and_is_reproducible(teacher, tmp_path):
    first = distill(teacher, tmp_path / "a")
    assert first.exit_code == 0, first.output
    result = json.loads(first.stdout)
    assert set(result["arms"]) == {"distilled", "baseline"}
    for arm in result["arms"].values():
        assert arm["steps"] == 40 and arm["bits_per_byte"] > 0
        ci = arm["bits_per_byte_ci"]
        assert ci["low"] <= arm["bits_per_byte"] <= ci["high"]
        assert arm["bytes"] == result["teacher_scores"]["bytes"] == result["data_stats"]["eval_bytes"]
    distilled, baseline = result["arms"]["distilled"], result["arms"]["baseline"]
    assert distilled["params"] == baseline["params"]
    assert distilled["bits_per_byte"] != baseline["bits_per_byte"]  # the teacher changed the training
    diff = result["distilled_minus_baseline_bpb"]
    assert diff["estimate"] == pytest.approx(distilled["bits_per_byte"] - baseline["bits_per_byte"], abs=1e-9)
    # the teacher (a bigger model trained longer) is the better model on held-out text
    assert result["teacher_scores"]["bits_per_byte"] < baseline["bits_per_byte"]
    run_dir = tmp_path / "a" / "runs"
    (run_dir,) = run_dir.iterdir()
    assert json.loads((run_dir / "results.json").read_text())["arms"] == result["arms"]
    # the student checkpoints load through fissure.load and carry the teacher's tokenizer
    import fissure

    student = fissure.load(str(run_dir / "distilled"))
    teacher_lm = fissure.load(str(teacher))
    text = "Return the list of files."
    assert student.tokenizer.encode(text) == teacher_lm.tokenizer.encode(text)

    again = distill(teacher, tmp_path / "b")
    assert again.exit_code == 0, again.output
    repeat = json.loads(again.stdout)
    for arm in ("distilled", "baseline"):
        assert repeat["arms"][arm]["bits_per_byte"] == result["arms"][arm]["bits_per_byte"]

    # a finished run resumed: both arms are skipped, the scores stay
    resumed = runner.invoke(app, ["distill", "--resume", str(run_dir), "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["arms"]["distilled"]["bits_per_byte"] == distilled["bits_per_byte"]


@pytest.mark.slow
def test_an_interrupted_arm_resumes_to_the_uninterrupted_result(teacher, tmp_path, monkeypatch):
    from fissure.train.trainer import Trainer

    full = distill(teacher, tmp_path / "full", "--no-baseline")
    assert full.exit_code == 0, full.output
    expected = json.loads(full.stdout)
    assert set(expected["arms"]) == {"distilled"} and "distilled_minus_baseline_bpb" not in expected

    original = Trainer.train

    def killed_at_step_20(self, until=None):
        original(self, until=20)  # writes its checkpoint at step 20, as save_every would
        raise RuntimeError("killed")

    monkeypatch.setattr(Trainer, "train", killed_at_step_20)
    killed = distill(teacher, tmp_path / "killed", "--no-baseline")
    assert killed.exit_code != 0
    monkeypatch.undo()
    (run_dir,) = (tmp_path / "killed" / "runs").iterdir()
    assert json.loads((run_dir / "distilled" / "trainer_state.json").read_text())["step"] == 20
    resumed = runner.invoke(app, ["distill", "--resume", str(run_dir), "--json"])
    assert resumed.exit_code == 0, resumed.output
    got = json.loads(resumed.stdout)["arms"]["distilled"]
    assert got["steps"] == 40
    assert got["bits_per_byte"] == pytest.approx(expected["arms"]["distilled"]["bits_per_byte"], rel=1e-6)


def test_bad_input_is_one_line_before_a_run_directory(tmp_path):
    student = tmp_path / "student.toml"
    student.write_text(STUDENT)
    runs = tmp_path / "runs"
    cases = [
        (["http://127.0.0.1:9/v1", "--data", "docs"], "only a local model"),
        (["smollm2", "--data", "stdlib-code"], "unknown data domain 'stdlib-code'"),
        (["smollm2", "--data", "docs", "--set", "tokenizer.kind=bpe"], "tokenizer"),
        (["smollm2", "--data", "docs", "--set", "distill.alpha=2"], "distill.alpha"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["distill", args[0], "--student", str(student), *args[1:], "--out-dir", str(runs)])
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output
        assert not runs.exists()
    with_path = tmp_path / "with-path.toml"
    with_path.write_text(STUDENT.replace('kind = "char"', 'path = "some/tokenizer.json"'))
    result = runner.invoke(app, ["distill", "smollm2", "--student", str(with_path), "--data", "docs",
                                 "--out-dir", str(runs)])
    assert result.exit_code == 2 and "tokenizer.path" in result.output and not runs.exists()
