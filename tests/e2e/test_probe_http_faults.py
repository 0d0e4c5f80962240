"""``fissure probe`` against a faulty OpenAI-compatible server (tests/backends/fake_openai_server.py,
127.0.0.1 only): every generation the server answers is judged and saved as it arrives, so a run
with ~20% mixed faults finishes in one invocation, an outage mid-run loses nothing, and a killed
run resumes without generating a saved sample again.

The server counts the generations it answered with a 200 (``State.generations``); a sample the
client threw away would show as a served generation without a row in ``samples.jsonl``, or as a
prompt served twice once the run is finished.
"""

from __future__ import annotations

import json
from pathlib import Path

import fake_openai_server as fake
import pytest
from typer.testing import CliRunner

import fissure.backends
from fissure.backends.base import LanguageModel
from fissure.backends.http import HTTPLanguageModel
from fissure.cli import app
from fissure.judges import read_samples
from fissure.probes.suite import SuiteConfig, run_suite
from fissure.runs import run_directory


runner = CliRunner()
# 4 attacks x 6 requests, 10 benign twins, 3 twins for each of 2 MG attacks: 40 per decoding;
# greedy once and two samples at 0.7: 120 generations.
ARGS = ["--attacks", "none,prefix_injection,base64,rot13", "--twins", "3", "--temperature", "0,0.7",
        "--samples", "2", "--max-new-tokens", "8", "--requests", "6"]
PLANNED = 120


@pytest.fixture
def server():
    with fake.FakeOpenAIServer() as s:
        s.behaviour.any_text, s.behaviour.context = True, 100_000  # real prompts: any characters, any length
        yield s


def connect(server, **kw) -> HTTPLanguageModel:
    # timeout: what a hang costs; long enough that a busy test machine never times out a real answer
    kw = {"timeout": 1.0, "backoff": 0.01, "max_retries": 6, "concurrency": 4, **kw}
    return HTTPLanguageModel(server.url, api_key_env="FISSURE_TEST_NO_KEY", **kw)


def invoke(monkeypatch, lm, args):
    monkeypatch.setattr(fissure.backends, "load", lambda spec, **kw: lm)
    return runner.invoke(app, ["probe", *args])


def served(server) -> list[tuple]:
    """(endpoint, prompt, seed) of every generation the server answered with a 200."""
    return list(server.state.generations)


def test_a_run_with_20_percent_mixed_faults_finishes_in_one_invocation_and_keeps_everything(
        monkeypatch, tmp_path, server):
    b = server.behaviour
    b.fault_rate, b.fault_seed, b.retry_after = 0.2, 7, "0.01"
    lm = connect(server, chat=False)  # plain prompts: the white-box probes can score them (echo requests)
    result = invoke(monkeypatch, lm, [server.url, *ARGS, "--out-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output  # one invocation
    results = json.loads(result.stdout.strip().splitlines()[-1])
    run = Path(results["run_dir"])
    rows = read_samples(run / "samples.jsonl")
    generations = served(server)
    # every generation the server answered is a row, and none was asked for twice
    assert len(rows) == len({r.key for r in rows}) == PLANNED
    assert len(generations) == len(set(generations)) == PLANNED
    assert not results["whitebox"]["skipped"]  # the log-probability probes got through the faults too
    faults = server.state.faults_served
    assert set(faults) == set(fake.FAULTS) and sum(faults.values()) >= 40  # every kind, many times
    tp = results["throughput"]["backend"]
    reasons = {"malformed": faults["html"] + faults["no_choices"], "timeout": faults["hang"],
               "connection": faults["drop"], "rate_limited": faults["429"], "server_error": faults["500"]}
    assert tp["retries"] == dict(sorted(reasons.items())) and tp["failed"] == 0
    assert tp["attempts"] == len(server.state.requests) and tp["requests_per_s"] > 0
    # (the server's own count is checked without hangs in tests/backends: a request the client gave up
    # on may still run on the server when its retry arrives)
    assert tp["max_in_flight"] <= 4
    assert results["throughput"]["prompts"] == PLANNED
    assert "requests/s" in (run / "report.html").read_text()
    print(f"\nfaults {sum(faults.values())} of {len(server.state.requests)} requests ({faults}); "
          f"kept {len(rows)} of {len(generations)} generations served; {tp['requests_per_s']} requests/s")


def test_an_outage_mid_run_loses_no_served_sample_and_resume_finishes(monkeypatch, tmp_path, server):
    b = server.behaviour
    b.fault_rate, b.fault_seed, b.retry_after, b.outage_after = 0.2, 3, "0.01", 37  # 37: not a batch boundary
    b.faults = tuple(f for f in fake.FAULTS if f != "hang")  # hangs are the test above's
    result = invoke(monkeypatch, connect(server), [server.url, *ARGS, "--out-dir", str(tmp_path)])
    assert result.exit_code == 2
    (run,) = tmp_path.glob("probe-*")  # kept: it holds samples
    rows = read_samples(run / "samples.jsonl")
    first = served(server)
    assert len(rows) == len(first) >= 37  # every generation answered before the outage is saved
    message = " ".join(result.output.split())
    assert f"after {len(rows)} of {PLANNED} samples" in message and f"fissure probe --resume {run}" in message
    assert "HTTP 503" in message
    b.outage_after = None  # the server is back
    result = invoke(monkeypatch, connect(server), ["--resume", str(run), "--json"])
    assert result.exit_code == 0, result.output
    rows = read_samples(run / "samples.jsonl")
    generations = served(server)
    assert len(rows) == len({r.key for r in rows}) == PLANNED
    assert len(generations) == len(set(generations)) == PLANNED  # nothing generated twice
    assert json.loads(result.stdout.strip().splitlines()[-1])["throughput"]["resumed_samples"] == len(first)


def test_a_failure_before_any_sample_leaves_no_run_directory(monkeypatch, tmp_path, server):
    lm = connect(server, max_retries=1)
    assert lm.capabilities.has_logprobs  # the log-probability check done before the outage
    server.behaviour.outage_after = 0
    result = invoke(monkeypatch, lm, [server.url, *ARGS, "--out-dir", str(tmp_path)])
    assert result.exit_code == 2 and "before any sample finished" in result.output
    assert not list(tmp_path.glob("probe-*"))


class Killed(BaseException):
    """The process dying: nothing catches it."""


class KilledAfter(LanguageModel):
    """A served model whose process dies right after handing over its k-th completion."""

    streams_results = True

    def __init__(self, lm: HTTPLanguageModel, k: int):
        self.lm, self.k, self.handed = lm, k, 0
        self.capabilities = lm.capabilities

    def generate(self, prompts, decoding=None, on_result=None):
        def hand_over(i, text):
            on_result(i, text)
            self.handed += 1
            if self.handed == self.k:
                raise Killed

        return self.lm.generate(prompts, decoding, on_result=hand_over)

    def loglikelihood(self, pairs):
        return self.lm.loglikelihood(pairs)

    def loglikelihood_rolling(self, texts, window=None, stride=None):
        return self.lm.loglikelihood_rolling(texts, window, stride)


def test_a_killed_run_keeps_its_samples_and_resumes_without_regenerating_them(tmp_path, server):
    config = SuiteConfig(model=server.url, attacks=["none", "prefix_injection", "base64", "rot13"], twins=3,
                         temperatures=[0.0, 0.7], samples=2, max_new_tokens=8, requests=6)
    k = 23  # inside the second group: the capability twins (6) are done, the greedy requests are not
    with pytest.raises(Killed):
        with run_directory("probe", config.as_dict(), config.seed, root=tmp_path) as run:
            run_suite(KilledAfter(connect(server), k), config, run)
    assert run.is_dir()
    kept = read_samples(run / "samples.jsonl")
    assert len(kept) == k
    before = len(served(server))
    run_suite(connect(server), config, run)
    resumed = served(server)[before:]
    assert len(resumed) == PLANNED - k  # only what was missing
    rows = read_samples(run / "samples.jsonl")
    assert len(rows) == len({r.key for r in rows}) == PLANNED
    assert [r.as_dict() for r in rows[:k]] == [r.as_dict() for r in kept]  # the saved ones, untouched
