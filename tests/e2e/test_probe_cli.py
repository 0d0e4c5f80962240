"""``fissure probe`` end to end: the scripted model (tests/probes/test_probe_suite.py) behind
the CLI for every form and failure, and one slow run on the real SmolLM2."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import fissure.backends
from fissure.cli import app
from fissure.probes.policies import load_policy
from fissure.judges import read_samples

runner = CliRunner()

_spec = importlib.util.spec_from_file_location("probe_suite_fakes",
                                               Path(__file__).parents[1] / "probes" / "test_probe_suite.py")
fakes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fakes)

SMALL = ["--attacks", "none,prefix_injection,rot13", "--twins", "2", "--requests", "6"]


def use_model(monkeypatch, lm):
    monkeypatch.setattr(fissure.backends, "load", lambda spec, **kw: lm)


def invoke(args):
    return runner.invoke(app, ["probe", *args])


def last_json(result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_list_json():
    result = invoke(["--list", "--json"])
    assert result.exit_code == 0, result.output
    attacks = last_json(result)["attacks"]
    by_name = {a["name"]: a for a in attacks}
    assert by_name["rot13"]["mode"] == "MG" and by_name["prefix_injection"]["mode"] == "CO"
    assert by_name["prefix_injection_hello"]["control_for"] == "prefix_injection"
    assert all(a["description"] for a in attacks)
    text = invoke(["--list"])
    assert text.exit_code == 0 and "refusal_suppression_inv" in text.stdout
    assert last_json(invoke(["list", "--json"])) == last_json(result)  # the sub-command, same listing


def test_sub_commands_and_the_model_first_form_are_one_command(monkeypatch, tmp_path):
    use_model(monkeypatch, fakes.ScriptedLM())
    short = last_json(invoke(["scripted", *SMALL, "--out-dir", str(tmp_path / "a"), "--json"]))
    use_model(monkeypatch, fakes.ScriptedLM())
    long = last_json(invoke(["run", "scripted", *SMALL, "--out-dir", str(tmp_path / "b"), "--json"]))
    assert short["attacks"] == long["attacks"] and short["signature"] == long["signature"]
    helped = invoke(["run", "--help"])
    assert helped.exit_code == 0 and "int8" in helped.stdout  # the shared --dtype option, not a stale copy
    assert invoke(["run", "scripted", "--twins", "x"]).exit_code == 2


def test_judge_list_shows_every_registered_judge():
    result = runner.invoke(app, ["judge", "list", "--json"])
    assert result.exit_code == 0, result.output
    kinds = {j["name"]: j["kind"] for j in last_json(result)["judges"]}
    assert kinds["policy"] == kinds["world"] == "judge"
    assert kinds["anchored"] == kinds["lexicon"] == "refusal" and kinds["canary"] == "violation"


def test_run_json_files_and_summary(monkeypatch, tmp_path):
    use_model(monkeypatch, fakes.ScriptedLM())
    result = invoke(["scripted", *SMALL, "--out-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    summary = last_json(result)
    run = Path(summary["run_dir"])
    for name in ("config.toml", "meta.json", "results.json", "samples.jsonl", "report.html"):
        assert (run / name).is_file(), name
    for attack in ("none", "prefix_injection", "rot13"):
        a = summary["attacks"][attack]
        assert set(a["counts"]) == {"refused", "violated", "unclear"}
        assert {"estimate", "low", "high", "method"} <= set(a["asr"]) and a["asr"]["method"] == "wilson"
    assert summary["modes"]["CO"]["counts"]["violated"] == 6
    assert summary["attacks"]["rot13"]["counts"]["unclear"] == 6  # cannot read rot13
    use_model(monkeypatch, fakes.ScriptedLM())
    text = invoke(["scripted", *SMALL, "--out-dir", str(tmp_path)])
    assert text.exit_code == 0, text.output
    assert "prefix_injection" in text.stdout and "adaptive ASR" in text.stdout and "report:" in text.stdout


def test_bad_input_one_line_errors(monkeypatch, tmp_path):
    use_model(monkeypatch, fakes.ScriptedLM())
    result = invoke(["scripted", "--attacks", "none,prefix_injecton", "--out-dir", str(tmp_path)])
    assert result.exit_code == 2 and "did you mean: prefix_injection" in result.output
    bad = tmp_path / "bank.toml"
    bad.write_text('name = "bank"\ndescription = "d"\nsystem_prompt = "s"\nrequests = ["r"]\n'
                   '[detector]\nkind = "regex"\npatterns = ["(unclosed"]\n')
    result = invoke(["scripted", "--policy", str(bad), "--out-dir", str(tmp_path)])
    assert result.exit_code == 2 and "bad regex" in result.output and "Traceback" not in result.output
    bad.write_text('name = "bank"\nsystem_prompt = "s"\nrequests = ["r"]\n[detector]\nkind = "canary"\n')
    result = invoke(["scripted", "--policy", str(bad), "--out-dir", str(tmp_path)])
    assert result.exit_code == 2 and "missing field 'description'" in result.output
    assert not list(tmp_path.glob("probe-*"))  # failed runs leave no directory behind
    result = invoke(["scripted", "--temperature", "0,hot"])
    assert result.exit_code == 2 and "comma-separated numbers" in result.output
    assert invoke([]).exit_code == 2 and invoke(["compare", "only-one"]).exit_code == 2


def test_server_failure_then_resume(monkeypatch, tmp_path):
    use_model(monkeypatch, fakes.ScriptedLM(fail_on_call=2))
    result = invoke(["scripted", *SMALL, "--out-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--resume" in result.output
    (run,) = tmp_path.glob("probe-*")
    saved = (run / "samples.jsonl").read_text().splitlines()
    assert len(saved) == 2  # the capability batch (two rot13 twins) was saved before the failure
    assert invoke(["--resume", str(run), "--samples", "3"]).exit_code == 2  # config is the run's own
    lm = fakes.ScriptedLM()
    use_model(monkeypatch, lm)
    result = invoke(["--resume", str(run), "--json"])
    assert result.exit_code == 0, result.output
    assert sum(len(c) for c in lm.calls) == 10 + 18  # benign twins and 6 requests x 3 attacks, not the twins
    summary = last_json(result)
    assert summary["attacks"]["prefix_injection"]["counts"]["violated"] == 6
    assert len((run / "samples.jsonl").read_text().splitlines()) == 2 + 10 + 18


def test_compare_and_judge(monkeypatch, tmp_path):
    use_model(monkeypatch, fakes.ScriptedLM())
    a = last_json(invoke(["scripted", *SMALL, "--out-dir", str(tmp_path / "a"), "--json"]))["run_dir"]
    use_model(monkeypatch, fakes.ScriptedLM(hardened=True))
    b = last_json(invoke(["scripted", *SMALL, "--out-dir", str(tmp_path / "b"), "--json"]))["run_dir"]
    result = invoke(["compare", a, b, "--json", "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    cmp = last_json(result)
    assert cmp["attacks"]["prefix_injection"]["a_only"] == 6 and cmp["attacks"]["prefix_injection"]["p_value"] < 0.05
    assert (Path(cmp["run_dir"]) / "results.json").is_file()
    text = invoke(["compare", a, b, "--out-dir", str(tmp_path)])
    assert text.exit_code == 0 and "McNemar" in text.stdout
    result = invoke(["judge", str(Path(a) / "samples.jsonl"), "--json", "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    judged = last_json(result)
    assert judged["changed"]["n"] == 0 and judged["attacks"]["prefix_injection"]["counts"]["violated"] == 6
    assert (Path(judged["run_dir"]) / "report.html").is_file()
    replies = tmp_path / "replies.jsonl"
    replies.write_text(json.dumps({"reply": "<script>x</script> Sorry, I can't share that."}) + "\n")
    result = invoke(["judge", str(replies), "--policy", "secret", "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert invoke(["judge", str(replies), "--out-dir", str(tmp_path)]).exit_code == 2  # no policy to judge by


@pytest.mark.slow
def test_probe_smollm2_reduced_suite(tmp_path):
    args = ["smollm2", "--attacks", "none,prefix_injection,base64", "--requests", "2", "--twins", "2",
            "--max-new-tokens", "24", "--out-dir", str(tmp_path), "--json"]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    summary = last_json(result)
    run = Path(summary["run_dir"])
    results = json.loads((run / "results.json").read_text())
    assert {"attacks", "modes", "adaptive_asr", "over_refusal", "capability", "decodings", "whitebox",
            "throughput", "run_dir"} <= set(results)
    assert set(results["attacks"]) == {"none", "prefix_injection", "base64"}
    assert results["whitebox"]["skipped"] is False and len(results["whitebox"]["requests"]) == 2 * 3
    assert set(results["whitebox"]["attacks"]) == {"none", "prefix_injection", "base64"}
    rows = read_samples(run / "samples.jsonl")
    assert len(rows) == 2 + len(load_policy("secret").benign_twins) + 2 * 3
    assert all(r.reply is not None and r.canonical is not None and r.verdicts and r.label for r in rows)
    assert all(isinstance(r.prompt, list) and r.prompt[0]["role"] == "system" for r in rows)
    assert (run / "report.html").read_text().startswith("<!DOCTYPE html>")
    tp = results["throughput"]
    print(f"\nsmollm2 reduced suite: {tp['prompts']} prompts, {tp['prompts_per_s']:.2f} prompts/s, "
          f"{tp['tokens_per_s']:.1f} tokens/s")
    for name, a in results["attacks"].items():
        asr = a["asr"]
        print(f"  {name:18s} {a['counts']}  ASR {asr['estimate']:.2f} [{asr['low']:.2f}, {asr['high']:.2f}]")
