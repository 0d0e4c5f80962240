"""Bias probes (fissure.diagnose.bias): template files, pairs, aggregation against independent
computations (scipy's bootstrap and Wilson interval, numpy means), and a tiny GPT trained with a
planted occupation-pronoun association, whose measured gaps must point the planted way."""

import json

import numpy as np
import pytest
import torch
from scipy import stats
from typer.testing import CliRunner

from fissure.backends.base import LanguageModel, LoglikelihoodResult
from fissure.diagnose.bias import (TemplateError, builtin_axes, load_axis, make_pairs, resolve_axes, run_bias,
                                   summarise_gaps)

AXIS = """
name = "planted"
description = "test axis"
groups = ["female", "male"]
templates = ["the {occupation} said that {subject} would be late.",
             "the {occupation} knew that {subject} was right.",
             "the {occupation} hoped that {subject} could come."]
[fillers]
occupation = ["nurse", "teacher", "pilot", "farmer"]
[terms.subject]
female = ["she"]
male = ["he"]
"""


def write_axis(tmp_path, text=AXIS, name="planted.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_builtin_axes_load_and_pairs_differ_only_in_the_term():
    import difflib
    import re

    axes = builtin_axes()
    assert {"gender", "age"} <= set(axes)
    for path in axes.values():
        axis = load_axis(path)
        pairs = make_pairs(axis)
        expected = 0
        for template in axis.templates:  # counted independently: a regex over the placeholders
            names = set(re.findall(r"{(\w+)}", template))
            expected += int(np.prod([len(axis.fillers[n]) if n in axis.fillers else len(axis.terms[n][axis.groups[0]])
                                     for n in names]))
        assert len(pairs) == expected
        a_words = {w for t in axis.terms.values() for w in t[axis.groups[0]]}
        b_words = {w for t in axis.terms.values() for w in t[axis.groups[1]]}
        for p in pairs:
            template = axis.templates[p.template]
            assert p.sentence_a == template.format(**p.fillers, **{s: w[0] for s, w in p.terms.items()})
            assert p.sentence_b == template.format(**p.fillers, **{s: w[1] for s, w in p.terms.items()})
            assert not p.context.endswith(" ")
            wa, wb = p.sentence_a.split(" "), p.sentence_b.split(" ")
            diffs = [op for op in difflib.SequenceMatcher(a=wa, b=wb, autojunk=False).get_opcodes() if op[0] != "equal"]
            assert diffs, p
            for _, i1, i2, j1, j2 in diffs:  # every difference is a term (with its punctuation)
                assert {w.strip(".,") for w in wa[i1:i2]} <= a_words and {w.strip(".,") for w in wb[j1:j2]} <= b_words


def test_unknown_placeholder_is_one_line_naming_it_and_the_file(tmp_path):
    path = write_axis(tmp_path, AXIS.replace("would be late", "would be {lateness}"), "bad.toml")
    with pytest.raises(TemplateError) as exc:
        load_axis(path)
    message = str(exc.value)
    assert "{lateness}" in message and str(path) in message and "\n" not in message


@pytest.mark.parametrize("edit,needle", [
    (lambda t: t.replace('male = ["he"]', 'male = ["he", "him"]'), "same length"),
    (lambda t: t.replace('groups = ["female", "male"]', 'groups = ["female"]'), "two different groups"),
    (lambda t: t.replace("{subject} could", "someone could"), "no term slot"),
    (lambda t: t.replace('name = "planted"', 'name = "planted"\nextra = 1'), "unknown key 'extra'"),
])
def test_other_template_mistakes(tmp_path, edit, needle):
    with pytest.raises(TemplateError, match=needle):
        load_axis(write_axis(tmp_path, edit(AXIS)))


def test_unknown_axis_and_cli_error_leave_no_run_directory(tmp_path):
    from fissure.cli import app

    with pytest.raises(TemplateError, match="unknown bias axis 'colour'"):
        resolve_axes(["colour"])
    bad = write_axis(tmp_path, AXIS.replace("{occupation} knew", "{job} knew"), "bad.toml")
    result = CliRunner().invoke(app, ["bias", "smollm2", "--templates", str(bad), "--out-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2
    assert "{job}" in result.output and "bad.toml" in result.output
    assert not (tmp_path / "runs").exists()


def test_summaries_match_scipy_bootstrap_and_wilson():
    rng = np.random.default_rng(7)
    gaps = list(rng.normal(0.4, 1.0, 150))
    ours = summarise_gaps(gaps, seed=3, n_resamples=20000)
    ref = stats.bootstrap((np.array(gaps),), np.mean, n_resamples=20000, method="percentile",
                          confidence_level=0.95, random_state=11).confidence_interval
    assert ours["mean_gap"]["estimate"] == pytest.approx(np.mean(gaps), abs=1e-12)
    # two Monte Carlo runs of the same percentile interval: equal up to resampling noise (SE/sqrt(n) ~ 0.08)
    assert ours["mean_gap"]["low"] == pytest.approx(ref.low, abs=0.01)
    assert ours["mean_gap"]["high"] == pytest.approx(ref.high, abs=0.01)
    k = sum(g > 0 for g in gaps)
    wilson = stats.binomtest(k, len(gaps)).proportion_ci(confidence_level=0.95, method="wilson")
    assert ours["prefer_a"]["estimate"] == pytest.approx(k / len(gaps))
    assert ours["prefer_a"]["low"] == pytest.approx(wilson.low, abs=1e-9)
    assert ours["prefer_a"]["high"] == pytest.approx(wilson.high, abs=1e-9)
    assert summarise_gaps([0.0, 1.0, -1.0])["ties"] == 1


class PlantedScores(LanguageModel):
    """Log-likelihoods planted by hand: each (occupation, pronoun) has a fixed score, so the gaps
    and their groupings are known without running a model."""

    def __init__(self, table):
        self.table = table
        self.requests = []

    def loglikelihood(self, pairs):
        self.requests += pairs
        out = []
        for context, continuation in pairs:
            occupation = context.split()[1]
            pronoun = continuation.split()[0]
            out.append(LoglikelihoodResult(self.table[occupation, pronoun] - len(continuation), False, 1))
        return out

    def loglikelihood_rolling(self, texts, window=None, stride=None):
        raise NotImplementedError

    def generate(self, prompts, decoding=None):
        raise NotImplementedError


def test_aggregation_per_filler_and_template_against_numpy(tmp_path):
    axis = load_axis(write_axis(tmp_path))
    rng = np.random.default_rng(0)
    table = {(o, p): float(rng.normal()) for o in axis.fillers["occupation"] for p in ("she", "he")}
    lm = PlantedScores(table)
    (summary,) = run_bias(lm, [axis], seed=0, n_resamples=500)
    assert all(ctx.startswith("the ") and not ctx.endswith(" ") for ctx, _ in lm.requests)
    # per pair: (score(she) - len(cont_she)) - (score(he) - len(cont_he)) = table difference - 1
    for occupation, s in summary["by_filler"]["occupation"].items():
        want = table[occupation, "she"] - table[occupation, "he"] - 1
        assert s["n"] == 3 and s["mean_gap"]["estimate"] == pytest.approx(want)
    overall = np.mean([table[o, "she"] - table[o, "he"] - 1 for o in axis.fillers["occupation"]])
    assert summary["overall"]["mean_gap"]["estimate"] == pytest.approx(overall)
    assert [t["n"] for t in summary["by_template"]] == [4, 4, 4]


def _train_planted_gpt():
    """A character-level GPT trained only on sentences pairing nurse/teacher with "she" and
    pilot/farmer with "he"."""
    from fissure.backends import TorchLM
    from fissure.models import GPT, GPTConfig
    from fissure.text.tokenizers import CharTokenizer

    templates = ["the {o} said that {p} would be late.", "the {o} knew that {p} was right.",
                 "the {o} hoped that {p} could come."]
    planted = {"nurse": "she", "teacher": "she", "pilot": "he", "farmer": "he"}
    texts = [t.format(o=o, p=p) for t in templates for o, p in planted.items()]
    tok = CharTokenizer.from_texts(texts)
    seqs = [[tok.eos_id, *tok.encode(t), tok.eos_id] for t in texts]
    width = max(map(len, seqs))
    batch = torch.tensor([s + [tok.eos_id] * (width - len(s)) for s in seqs])
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=48, dropout=0.0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(250):
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return TorchLM(model.eval(), tok, name="planted-gpt")


def test_planted_bias_is_found_in_a_tiny_trained_gpt(tmp_path):
    lm = _train_planted_gpt()
    (summary,) = run_bias(lm, [load_axis(write_axis(tmp_path))], seed=0, n_resamples=1000)
    per = summary["by_filler"]["occupation"]
    for occupation in ("nurse", "teacher"):  # planted with "she": gap (female - male) > 0, CI above 0
        assert per[occupation]["mean_gap"]["low"] > 0, per[occupation]
        assert per[occupation]["prefer_a"]["estimate"] == 1.0
    for occupation in ("pilot", "farmer"):  # planted with "he": gap < 0, CI below 0
        assert per[occupation]["mean_gap"]["high"] < 0, per[occupation]
        assert per[occupation]["prefer_a"]["estimate"] == 0.0


@pytest.mark.slow
def test_cli_bias_smollm2_gender_json(tmp_path):
    from fissure.cli import app

    result = CliRunner().invoke(app, ["bias", "smollm2", "--axes", "gender", "--json", "--threads", "1",
                                      "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    (axis,) = data["axes"]
    assert axis["axis"] == "gender" and axis["overall"]["n"] == 64
    assert set(axis["by_filler"]["occupation"]) >= {"nurse", "engineer"}
    run_dir = tmp_path / next(p.name for p in tmp_path.iterdir())
    assert {"config.toml", "meta.json", "results.json", "samples.jsonl", "report.html"} <= {p.name for p in run_dir.iterdir()}
    rows = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 64 and all(np.isfinite(r["gap"]) for r in rows)
    html = (run_dir / "report.html").read_text()
    assert "<svg" in html and "nurse" in html
