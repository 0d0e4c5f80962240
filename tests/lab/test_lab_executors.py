"""A study gives the same results in this process, on a process pool and on Ray; a failed seed
costs only its own points, and resuming finishes it."""

import json

import pytest
from typer.testing import CliRunner

from fissure.cli import app
from fissure.errors import TaskFailed
from fissure.executors import open_executor
from fissure.judges import read_samples
from fissure.lab import runner
from fissure.lab.runner import run_study
from fissure.lab.study import load_study

from test_lab_run import TINY

TWO_SEEDS = {**TINY, "seeds": [0, 1]}


def run_in(tmp_path, monkeypatch, name: str, executor: str = "serial") -> tuple[dict, list[dict]]:
    """Run the two-seed tiny study with a cache of its own (stage 1 trains again in every run)."""
    monkeypatch.setenv("FISSURE_CACHE", str(tmp_path / f"cache-{name}"))
    study = load_study(TWO_SEEDS)
    with open_executor(executor, cpus_per_task=study.threads) as pool:
        results = run_study(study, tmp_path / name, executor=pool)
    samples = sorted(({k: v for k, v in s.as_dict().items() if k != "seconds"}
                      for s in read_samples(tmp_path / name / "samples.jsonl")), key=lambda s: s["key"])
    return results, samples


def same_numbers(a: dict, b: dict) -> None:
    """Everything in results.json but wall times and the executor's name."""
    assert a["points"] == b["points"] and a["trends"] == b["trends"] and a["seeds"] == b["seeds"]
    for seed in ("0", "1"):
        assert a["stage1"][seed]["final_loss"] == b["stage1"][seed]["final_loss"]
        assert not a["stage1"][seed]["cache_hit"] and not b["stage1"][seed]["cache_hit"]


@pytest.fixture
def serial(tmp_path_factory, monkeypatch):
    return run_in(tmp_path_factory.mktemp("serial"), monkeypatch, "serial")


@pytest.mark.slow
def test_local_pool_gives_the_serial_results(tmp_path, monkeypatch, serial):
    results, samples = run_in(tmp_path, monkeypatch, "pool", "local:2")
    assert results["executor"] == "local:2" and serial[0]["executor"] == "serial"
    same_numbers(results, serial[0])
    assert samples == serial[1] and len(samples) == 2 * 2 * (3 * 12 + 8)
    for seed in (0, 1):  # every point file and world file is written by the driver
        assert json.loads((tmp_path / "pool" / "points" / f"p01-s{seed}.json").read_text())["seed"] == seed
        assert (tmp_path / "pool" / f"world-s{seed}.json").is_file()


@pytest.mark.slow
def test_ray_gives_the_serial_results(tmp_path, monkeypatch, serial):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("FISSURE_CACHE", str(tmp_path / "cache-ray"))  # the workers inherit it from ray.init
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")  # the executor uses this one
    try:
        results, samples = run_in(tmp_path, monkeypatch, "ray", "ray")
    finally:
        ray.shutdown()
    assert results["executor"] == "ray"
    same_numbers(results, serial[0])
    assert samples == serial[1]


def test_a_failed_seed_costs_only_its_points_and_resume_finishes_it(tmp_path, monkeypatch, serial):
    monkeypatch.setenv("FISSURE_CACHE", str(tmp_path / "cache"))
    study = load_study(TWO_SEEDS)
    real = runner.pretrain

    def broken_for_seed_1(world, spec, cfg, seed, **kw):
        if seed == 1:
            raise RuntimeError("worker lost")
        return real(world, spec, cfg, seed, **kw)

    monkeypatch.setattr(runner, "pretrain", broken_for_seed_1)
    with pytest.raises(TaskFailed, match=r"1 of 2 tasks failed \(seed 1: RuntimeError: worker lost\).*--resume"):
        run_study(study, tmp_path / "run")
    points = sorted(p.name for p in (tmp_path / "run" / "points").iterdir())
    assert points == ["p00-s0.json", "p01-s0.json"] and not (tmp_path / "run" / "results.json").exists()
    assert {s.extra["seed"] for s in read_samples(tmp_path / "run" / "samples.jsonl")} == {0}
    monkeypatch.setattr(runner, "pretrain", real)
    stamp = (tmp_path / "run" / "points" / "p00-s0.json").stat().st_mtime_ns
    results = run_study(study, tmp_path / "run")
    assert (tmp_path / "run" / "points" / "p00-s0.json").stat().st_mtime_ns == stamp  # seed 0 not redone
    assert list(results["stage1"]) == ["1"]
    assert results["points"] == serial[0]["points"]
    samples = sorted(({k: v for k, v in s.as_dict().items() if k != "seconds"}
                      for s in read_samples(tmp_path / "run" / "samples.jsonl")), key=lambda s: s["key"])
    assert samples == serial[1]


def test_cli_refuses_a_bad_executor_before_making_a_run_directory(tmp_path):
    result = CliRunner().invoke(app, ["lab", "run", "jailbroken", "--executor", "local:zero",
                                      "--out-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "pool size" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_cli_says_in_one_line_when_a_ray_cluster_cannot_be_reached(tmp_path):
    pytest.importorskip("ray")
    result = CliRunner().invoke(app, ["lab", "run", "jailbroken", "--executor", "ray://127.0.0.1:1",
                                      "--out-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert "cannot connect to the Ray cluster at ray://127.0.0.1:1" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def pretrain_in_worker(seed: int):
    """A pool task: stage 1 of the tiny study (longer, so two workers overlap); its cache hit and weights."""
    import hashlib

    import torch

    from fissure.lab.organism import pretrain
    from fissure.lab.world import World

    torch.set_num_threads(1)
    study = load_study({**TINY, "stage1": {"steps": 150, "batch_size": 4}})
    model, _, info = pretrain(World(study.world, seed), study.model, study.stage1, seed)
    digest = hashlib.sha256(b"".join(t.numpy().tobytes() for t in model.state_dict().values())).hexdigest()
    yield info["cache_hit"], digest


@pytest.mark.slow
def test_two_workers_building_one_stage1_entry_take_turns(tmp_path, monkeypatch):
    monkeypatch.setenv("FISSURE_CACHE", str(tmp_path / "cache"))  # the spawned workers inherit it
    with open_executor("local:2") as pool:
        rows = [event.row for event in pool.run(pretrain_in_worker, [0, 0])]
    assert sorted(hit for hit, _ in rows) == [False, True]  # one trained, the other waited and loaded it
    assert rows[0][1] == rows[1][1]
    entries = [p.name for p in (tmp_path / "cache" / "lab").iterdir() if not p.name.endswith(".lock")]
    assert len(entries) == 1 and (tmp_path / "cache" / "lab" / entries[0] / "stage1.json").is_file()
