"""`fissure baselines` end to end on a small cap: the table's structure, an ordering that holds on
real text (a byte trigram beats the byte unigram), a given model scored like the rest, bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fissure.backends.ngram import NgramLM
from fissure.cli import app

runner = CliRunner()


@pytest.mark.slow
def test_baselines_small(tmp_path):
    given = NgramLM.train(["def f(x):\n    return x\n"] * 3, order=2).save(tmp_path / "given")
    args = ["baselines", "--data", "code", "--max-bytes", "400000", "--max-eval-bytes", "20000", "--orders", "1,3",
            "--lstm-steps", "3", "--gpt-steps", "3", "--block-size", "32", "--threads", "1",
            "--model", str(given), "--out-dir", str(tmp_path / "runs")]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert [r["model"] for r in out["rows"]] == ["ngram-1", "ngram-3", "lstm", "gpt", str(given)]
    for row in out["rows"]:
        b = row["bits_per_byte"]
        assert b["low"] <= b["estimate"] <= b["high"] and row["seconds"] > 0
        assert row["bytes"] == out["eval_bytes"] and row["documents"] == out["eval_documents"] >= 2
    rows = {r["model"]: r for r in out["rows"]}
    assert rows["ngram-3"]["bits_per_byte"]["estimate"] < rows["ngram-1"]["bits_per_byte"]["estimate"] - 0.5
    run = tmp_path / "runs" / out["run_dir"].split("/")[-1]
    assert json.loads((run / "results.json").read_text())["rows"] == out["rows"]
    assert (run / "config.toml").is_file() and (run / "meta.json").is_file()
    # the given model's row is its own rolling log-likelihood over the held-out documents written there
    texts = [json.loads(line)["text"] for line in (run / "data" / "eval.jsonl").read_text().splitlines()]
    scores = NgramLM.train(["def f(x):\n    return x\n"] * 3, order=2).loglikelihood_rolling(texts)
    want = -sum(s.loglikelihood for s in scores) / sum(s.bytes for s in scores) / 0.6931471805599453
    assert rows[str(given)]["bits_per_byte"]["estimate"] == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("args,message", [
    (["--data", "nosuch"], "known: "),
    (["--orders", "0,3"], "orders must be integers from 1"),
    (["--orders", "two"], "comma-separated"),
    (["--model", "/no/such/model"], "unknown model"),
])
def test_baselines_bad_input(tmp_path, args, message):
    result = runner.invoke(app, ["baselines", *args, "--out-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
