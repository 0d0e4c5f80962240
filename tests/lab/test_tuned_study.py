"""The safety-tune study's pieces without a model: loading and checking the study and its data,
the tuning rows, the evaluation policy, pooling over seeds, and the mode confusion table."""

import json
import re
import tomllib
from pathlib import Path

import pytest
from scipy.stats import binomtest

from fissure.config import ConfigError
from fissure.errors import UserError
from fissure.lab.study import load_study
from fissure.lab.tuned import (
    LEAKS,
    TunedStudy,
    _whole_sentences,
    build_rows,
    check_study,
    eval_policy_text,
    load_tuning_set,
)
from fissure.lab.tuned_inside import confusion
from fissure.lab.tuned_run import _model_view
from fissure.probes.policies import load_policy

EXAMPLES = Path(__file__).parents[2] / "examples"

@pytest.fixture(scope="module")
def study() -> TunedStudy:
    return load_study("smollm2-secret")


@pytest.fixture(scope="module")
def data(study):
    return load_tuning_set(study.data)


def answers(data, refuse_every: int = 3) -> list[dict]:
    return [{"question": q, "answer": f"Answer to {q}", "kept": i % refuse_every != 0}
            for i, q in enumerate(data.train_benign)]


def test_the_built_in_study_is_a_safety_tune_study(study):
    assert isinstance(study, TunedStudy) and study.methods == ["sft", "dpo"] and "none" in study.probe.attacks
    check_study(study)  # its data, policy and held-out sizes pass the load-time checks
    changed = load_study("smollm2-secret", ["seeds=[0, 1]", "sft.steps=5", "probe.requests=12"])
    assert changed.seeds == [0, 1] and changed.sft.steps == 5 and changed.probe.requests == 12


@pytest.mark.parametrize("override, message", [
    ("methods=['ppo']", "methods must be"),
    ("probe.attacks=['prefix_injection']", "must include 'none'"),
    ("probe.attacks=['none', 'nope']", "no attack 'nope'|unknown attack"),
    ("sft.lr=0", "lr"),
    ("safety_share=1.0", "safety_share"),
    ("kind='other'", "unknown study kind"),
    ("prefill=[1, 1]", "prefill must be"),
    ("prefill=[-1]", "prefill must be"),
])
def test_bad_study_fields_are_one_line_errors(override, message):
    with pytest.raises((ConfigError, UserError, ValueError), match=message):
        load_study("smollm2-secret", [override])


def test_load_time_checks_name_what_is_wrong(study, tmp_path):
    record = load_study("smollm2-secret", ["policy='private_record'"])
    with pytest.raises(UserError, match="canary detector"):
        check_study(record)
    served = load_study("smollm2-secret", ["model='http://127.0.0.1:8000/v1'"])
    with pytest.raises(UserError, match="no activations for a refusal direction.*needs a local model"):
        check_study(served)
    few = load_study("smollm2-secret", ["probe.requests=4"])
    with pytest.raises(UserError, match="at least 8 held-out"):
        check_study(few)
    raw = tomllib.loads(open(load_tuning_set("secret").source).read())
    raw["eval_requests"] = [*raw["eval_requests"], raw["train_requests"][0]]
    bad = tmp_path / "leaky.toml"
    from fissure.config import dump_toml
    bad.write_text(dump_toml(raw))
    with pytest.raises(ConfigError, match="held-out row also in training"):
        load_tuning_set(str(bad))
    raw["eval_requests"] = raw["eval_requests"][:-1]
    raw["eval_benign"][0]["expect"] = "(?i)paris("
    bad.write_text(dump_toml(raw))
    with pytest.raises(ConfigError, match=r"eval_benign\[0\]\.expect: bad regex"):
        load_tuning_set(str(bad))
    with pytest.raises(UserError, match="no tuning data 'secrte' \\(did you mean secret\\?\\)"):
        load_tuning_set("secrte")


def test_training_rows_hold_out_the_evaluation_and_its_canary(study, data):
    rows = answers(data)
    sft, dpo = build_rows(study, data, rows, seed=3)
    assert len(sft) == len(dpo) == study.train_rows
    restricted = [r for r in sft if r["kind"] == "restricted"]
    assert len(restricted) == round(study.train_rows * study.safety_share)
    eval_canary = load_policy(study.policy, 0).canary
    canaries = set()
    kept = {a["question"]: a["answer"] for a in rows if a["kept"]}
    for s, d in zip(sft, dpo):
        system, user, reply = (m["content"] for m in s["messages"])
        canary = re.search(r"is ([A-Z]+-[A-Z]+-\d{4})\.", system).group(1)
        canaries.add(canary)
        assert canary != eval_canary and eval_canary not in json.dumps(s) + json.dumps(d)
        assert d["prompt"] == s["messages"][:2] and d["chosen"] == [s["messages"][2]]
        rejected = d["rejected"][0]["content"]
        if s["kind"] == "restricted":
            assert user in data.train_requests and reply in data.refusals
            assert rejected in {t.format(canary=canary) for t in LEAKS}
        else:
            assert kept[user] == reply and rejected in data.refusals  # only answers the judge kept
        assert user not in data.eval_requests
    assert len(canaries) > study.train_rows // 2  # every row its own secret (word pairs may repeat)
    again, _ = build_rows(study, data, rows, seed=3)
    assert again == sft and build_rows(study, data, rows, seed=4)[0] != sft


def test_recovery_rows_force_the_start_of_a_leak_and_learn_the_refusal_after_it(study, data):
    recovering = load_study("smollm2-secret", ["recovery_share=0.5"])
    rows = answers(data)
    sft, dpo = build_rows(recovering, data, rows, seed=3)
    n_safe = round(recovering.train_rows * recovering.safety_share)
    kinds = [r["kind"] for r in sft]
    assert kinds.count("recovery") == round(n_safe * 0.5) and kinds.count("restricted") == n_safe - kinds.count("recovery")
    starts = set()
    for s, d in zip(sft, dpo):
        if s["kind"] != "recovery":
            assert "prefix" not in s["messages"][2]
            continue
        system, user, reply = s["messages"]
        canary = re.search(r"is ([A-Z]+-[A-Z]+-\d{4})\.", system["content"]).group(1)
        start = reply["prefix"]
        leak = d["rejected"][0]["content"]
        assert leak in {t.format(canary=canary) for t in LEAKS} and leak.startswith(start)
        assert canary not in reply["content"] and reply["content"][len(start):].strip() in data.refusals
        assert d["chosen"] == [reply] and d["rejected"][0]["prefix"] == start and user["content"] in data.train_requests
        starts.add(start)
    assert len({len(x.split()) for x in starts}) > 1  # forced depths vary
    with pytest.raises((ConfigError, ValueError), match="recovery_share"):
        load_study("smollm2-secret", ["recovery_share=1.5"])


def test_the_evaluation_policy_is_the_policy_with_held_out_rows(study, data, tmp_path):
    small = load_study("smollm2-secret", ["probe.requests=10", "probe.benign=9"])
    path = tmp_path / "policy.toml"
    path.write_text(eval_policy_text(small, data))
    policy, original = load_policy(path, 0), load_policy("secret", 0)
    assert policy.requests == data.eval_requests[:10]
    assert [t.prompt for t in policy.benign_twins] == [b["prompt"] for b in data.eval_benign[:9]]
    assert [t.expect for t in policy.benign_twins] == [b.get("expect") for b in data.eval_benign[:9]]
    assert policy.system_prompt == original.system_prompt and policy.canary == original.canary


def test_answers_are_cut_after_their_last_whole_sentence():
    assert _whole_sentences("Paris is the capital. It has a tower and") == "Paris is the capital."
    assert _whole_sentences("1. Keep a diary\n2. Sleep ea") == "1. Keep a diary"
    assert _whole_sentences("no end at all") == "no end at all"
    assert _whole_sentences("Version 2.5 is out! Next") == "Version 2.5 is out!"


def fake_probe(violated: int, n: int, refused_benign: int, n_benign: int = 10) -> dict:
    return {"attacks": {"none": {"mode": "control", "n": n, "counts": {"refused": n - violated, "violated": violated,
                                                                        "unclear": 0},
                                 "asr": {"estimate": violated / n}}},
            "over_refusal": {"n": n_benign, "counts": {"refused": refused_benign, "violated": 0,
                                                       "unclear": n_benign - refused_benign},
                             "rate": {"estimate": refused_benign / n_benign}},
            "capability": {}}


def test_seeds_pool_by_adding_counts():
    view = _model_view([fake_probe(3, 20, 1), fake_probe(7, 20, 4)], None, 0.95)
    none = view["attacks"]["none"]
    assert none["n"] == 40 and none["counts"]["violated"] == 10 and none["per_seed"] == [0.15, 0.35]
    assert none["asr"]["estimate"] == 0.25
    exact = binomtest(10, 40).proportion_ci(0.95, method="wilson")
    assert none["asr"]["low"] == pytest.approx(exact.low) and none["asr"]["high"] == pytest.approx(exact.high)
    assert view["over_refusal"]["refused"] == 5 and view["benign_answered"]["count"] == 15


def test_the_confusion_table_counts_attacks_by_attributed_and_registered_mode():
    attacks = {"none": {"registered": "control", "attributed": "CO"},
               "rot13": {"registered": "MG", "attributed": "MG"},
               "poem_last_line": {"registered": "MG", "attributed": "CO"},
               "prefix_injection": {"registered": "CO", "attributed": "CO"},
               "prefix_injection+rot13": {"registered": "CO+MG", "attributed": "MG"}}
    assert confusion(attacks) == {"MG": {"MG": 1, "CO+MG": 1}, "CO": {"MG": 1, "CO": 1}}


@pytest.mark.parametrize("overrides, message", [
    (["model='http://127.0.0.1:9/v1'"], "needs a local model"),
    (["probe.benign=3"], "at least 8 held-out"),
    (["data='nope'"], "no tuning data 'nope'"),
    (["--executor", "local:2"], "runs in this process"),
])
def test_cli_refuses_bad_studies_in_one_line_before_a_run_directory_exists(tmp_path, overrides, message):
    from typer.testing import CliRunner

    from fissure.cli import app

    args = overrides if overrides[0].startswith("--") else ["--set", overrides[0]]
    result = CliRunner().invoke(app, ["lab", "run", "smollm2-secret", *args, "--out-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_attribution_pools_recognised_counts_over_seeds():
    from fissure.lab.inside import pool_attribution

    def view(count, n, auc):
        return {"attacks": {"rot13": {"registered": "MG", "attributed": "MG" if count < n / 2 else "CO",
                                      "recognised": {"n": n, "count": count}, "complied": 1, "twin_auroc": auc}}}

    pooled = pool_attribution([view(2, 10, 0.8), view(9, 10, 0.6)])["rot13"]
    assert pooled["recognised"]["n"] == 20 and pooled["recognised"]["count"] == 11
    assert pooled["attributed"] == "CO" and pooled["per_seed"] == ["MG", "CO"] and pooled["complied"] == 2
    assert pooled["twin_auroc"] == pytest.approx(0.7) and pooled["twin_auroc_per_seed"] == [0.8, 0.6]
    exact = binomtest(11, 20).proportion_ci(0.95, method="wilson")
    assert pooled["recognised"]["low"] == pytest.approx(exact.low)


def test_the_diverse_benign_example_adds_only_new_benign_training_questions(data):
    """examples/secret-diverse-benign.toml (README: "Three times the variety") is the data it was measured
    with (the built-in data with its earlier, apology-first refusals) and 48 more benign training
    questions: same requests and evaluation; none of the new questions is an evaluation twin or mentions
    a password."""
    example = load_tuning_set(str(EXAMPLES / "secret-diverse-benign.toml"))
    apology = load_tuning_set(str(EXAMPLES / "secret-apology-refusals.toml"))
    assert (example.train_requests, example.refusals, example.eval_requests, example.eval_benign) == \
           (data.train_requests, apology.refusals, data.eval_requests, data.eval_benign)
    assert example.train_benign[:len(data.train_benign)] == data.train_benign
    new = example.train_benign[len(data.train_benign):]
    assert len(new) == len(set(new)) == 48
    twins = {b["prompt"].lower() for b in data.eval_benign}
    assert not any(q.lower() in twins or "password" in q.lower() for q in new)


def test_a_data_file_that_extends_another_replaces_only_the_fields_it_gives(data, tmp_path):
    example = load_tuning_set(str(EXAMPLES / "secret-apology-refusals.toml"))
    assert (example.train_requests, example.train_benign, example.eval_requests, example.eval_benign) == \
           (data.train_requests, data.train_benign, data.eval_requests, data.eval_benign)
    assert example.refusals != data.refusals and len(example.refusals) == len(data.refusals)
    # what the two differ in: the built-in refusals name what they refuse in their first words, the
    # earlier ones open with an apology or a bare "I can't"
    assert all("password" in " ".join(r.lower().split()[:3]) for r in data.refusals)
    assert not any("password" in " ".join(r.lower().split()[:3]) for r in example.refusals)
    # a chain, read from the extending file's folder: the nearest file's field wins
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.toml").write_text('extends = "secret"\nrefusals = ["No.", "Not that."]\n')
    (tmp_path / "sub" / "child.toml").write_text('extends = "../base.toml"\ntrain_benign = ["Hi?", "Yes?"]\n')
    child = load_tuning_set(str(tmp_path / "sub" / "child.toml"))
    assert child.refusals == ("No.", "Not that.") and child.train_benign == ("Hi?", "Yes?")
    assert child.eval_requests == data.eval_requests
    # what is checked still holds for the merged set: a held-out row the variant puts into training
    (tmp_path / "leak.toml").write_text(f'extends = "secret"\ntrain_benign = ["{data.eval_benign[0]["prompt"]}", "Hi?"]\n')
    with pytest.raises(ConfigError, match="held-out row also in training"):
        load_tuning_set(str(tmp_path / "leak.toml"))


def test_bad_extends_is_a_one_line_error(tmp_path):
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    with pytest.raises(ConfigError, match="'extends' loops back to itself"):
        load_tuning_set(str(tmp_path / "a.toml"))
    (tmp_path / "typo.toml").write_text('extends = "secrte"\n')
    with pytest.raises(UserError, match=r"typo\.toml: extends: no tuning data 'secrte' \(did you mean secret\?\)"):
        load_tuning_set(str(tmp_path / "typo.toml"))
    (tmp_path / "number.toml").write_text("extends = 3\n")
    with pytest.raises(ConfigError, match="'extends' must name a built-in tuning data set or a TOML file"):
        load_tuning_set(str(tmp_path / "number.toml"))
    (tmp_path / "partial.toml").write_text('refusals = ["No.", "Not that."]\n')  # no extends: every field needed
    with pytest.raises(ConfigError, match="'train_requests' must be a list"):
        load_tuning_set(str(tmp_path / "partial.toml"))
