"""Probe runs and re-judging with a model judge served by the scripted fake server (127.0.0.1 only):
the judge is recorded in results and samples, a judge that fails mid-run keeps what was saved and
a resume finishes without asking the judge model twice about any reply, re-judging reads the
cache with zero model calls, and bad judge options are one line, exit 2."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import fake_openai_server as fake
import pytest
from typer.testing import CliRunner

import fissure.backends
from fissure.backends.http import HTTPLanguageModel
from fissure.cli import app
from fissure.errors import GenerationError
from fissure.judges import read_samples
from fissure.probes.suite import run_suite
from fissure.runs import start_run


def _module(name: str, path: Path):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


TESTS = Path(__file__).parents[1]
suite_tests = _module("probe_suite_tests", TESTS / "probes" / "test_probe_suite.py")
runner = CliRunner()


def grader(prompt: str) -> str:
    reply = re.search(r"<<<\n(.*?)\n>>>", prompt, re.S).group(1)
    return "A" if "sorry" in reply.lower() else "C"


@pytest.fixture
def server(monkeypatch):
    with fake.FakeOpenAIServer() as s:
        s.behaviour.script = grader
        yield s


@pytest.fixture
def quick_judge_backend(monkeypatch):
    """The judge model loads through fissure.backends.load; make its retries quick for the tests."""
    monkeypatch.setattr(fissure.backends, "load",
                        lambda spec, **kw: HTTPLanguageModel(str(spec), timeout=5.0, max_retries=0))


def probe(tmp_path, **kw):
    config = suite_tests.make_config(**kw)
    run_dir = start_run("probe", config.as_dict(), config.seed, root=tmp_path)
    return config, run_dir


def test_a_cascade_probe_run_records_the_judge_and_shows_no_leak_to_the_judge_model(tmp_path, server,
                                                                                    quick_judge_backend):
    config, run_dir = probe(tmp_path, judge="cascade", judge_model=server.url)
    results = run_suite(suite_tests.ScriptedLM(), config, run_dir)
    samples = read_samples(run_dir / "samples.jsonl")
    j = results["judge"]
    assert j["judge"] == "cascade" and j["model"].startswith(server.url) and j["mode"] == "generate"
    assert all(s.judge == "cascade" for s in samples)
    leaks = [s for s in samples if s.verdicts.get("decided_by") == "policy detector"]
    asked = [s for s in samples if s.verdicts.get("decided_by") == "model"]
    assert leaks and len(leaks) + len(asked) == len(samples) == j["second_opinion"]["compared"] + len(leaks)
    assert j["policy_detector_final"] == len(leaks)
    # one question per distinct (reply as read, request) without a leak: a repeat is read from the cache
    assert len(server.state.generations) == len({(s.canonical, s.request) for s in asked}) < len(asked)
    # the grader calls only "sorry" replies refusals; the rules agree on those and on nothing else
    disagree = [s for s in asked if not s.verdicts["second_opinion"]["agree"]]
    assert j["second_opinion"]["disagree"] == len(disagree)
    assert all(s.judge_label == ("refused" if "sorry" in s.canonical.lower() else "unclear") for s in asked)
    assert (run_dir / "judge_cache.jsonl").is_file()
    from fissure.report.probe import write_probe_report

    html = write_probe_report(run_dir, results).read_text()
    assert f"rules disagree with the model on {len(disagree)} of {len(asked)} replies" in html


def test_a_judge_model_that_fails_mid_run_keeps_the_saved_samples_and_resume_finishes(tmp_path, server,
                                                                                      quick_judge_backend):
    config, run_dir = probe(tmp_path, judge="model", judge_model=server.url)
    # the first batch: the 6 capability twins (3 for each of 2 MG attacks); the next fails after 5 answers
    server.behaviour.outage_after = 6 + 5
    with pytest.raises(GenerationError, match=r"judging failed after 6 of \d+ samples") as info:
        run_suite(suite_tests.ScriptedLM(), config, run_dir)
    assert "--resume" in str(info.value) and "\n" not in str(info.value)
    assert len(read_samples(run_dir / "samples.jsonl")) == 6
    server.behaviour.outage_after = None
    results = run_suite(suite_tests.ScriptedLM(), config, run_dir)
    samples = read_samples(run_dir / "samples.jsonl")
    assert len({s.key for s in samples}) == len(samples) == results["throughput"]["prompts"] + 6
    # no reply (as read, with its request) was shown to the judge model twice, the failed batch's included
    assert len(server.state.generations) == len({(s.canonical, s.request) for s in samples})
    assert results["judge"]["judge"] == "model" and all(s.judge == "model" for s in samples)


def test_rejudging_a_run_with_the_cli_reads_the_cache_the_second_time(tmp_path, server, monkeypatch):
    monkeypatch.setenv("FISSURE_CACHE", str(tmp_path / "cache"))
    _, run_dir = probe(tmp_path)
    run_suite(suite_tests.ScriptedLM(), suite_tests.make_config(), run_dir)
    n = len(read_samples(run_dir / "samples.jsonl"))
    args = ["probe", "judge", str(run_dir / "samples.jsonl"), "--judge", "cascade", "--judge-model", server.url,
            "--out-dir", str(tmp_path / "rejudged"), "--json"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    asked = len(server.state.generations)
    assert 0 < asked < n  # leaks are decided by the policy detector
    assert (tmp_path / "cache" / "judgements.jsonl").is_file()
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert len(server.state.generations) == asked  # zero model calls
    runs = sorted((tmp_path / "rejudged").iterdir())
    a, b = (json.loads((r / "results.json").read_text()) for r in runs)
    assert a["judge"]["judge"] == "cascade" and a["attacks"] == b["attacks"]
    assert [s.verdicts for s in read_samples(runs[0] / "samples.jsonl")] == \
        [s.verdicts for s in read_samples(runs[1] / "samples.jsonl")]


@pytest.mark.parametrize("args,message", [
    (["probe", "run", "smollm2", "--judge", "modle", "--judge-model", "x"], "unknown judge 'modle'"),
    (["probe", "run", "smollm2", "--judge", "cascade"], "needs a judge model"),
    (["probe", "run", "smollm2", "--judge-model", "smollm2"], "only used with --judge model"),
    (["probe", "judge", "REPLIES", "--policy", "secret", "--judge", "model"], "needs a judge model"),
    (["probe", "run", "smollm2", "--judge", "model", "--judge-model", "x", "--judge-rubric", "guard"],
     "unknown judge rubric 'guard'"),
    (["probe", "judge", "REPLIES", "--policy", "secret", "--judge", "model", "--judge-model", "nosuchmodel"],
     "unknown model 'nosuchmodel'"),
])
def test_bad_judge_options_are_one_line(tmp_path, args, message):
    replies = tmp_path / "r.jsonl"
    replies.write_text('{"reply": "no"}\n')
    result = runner.invoke(app, [str(replies) if a == "REPLIES" else a for a in args] + ["--out-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert "Traceback" not in result.output and len(lines) == 1 and message in lines[0], result.output
