"""``fissure frontier`` end to end on a tiny HF Llama directory with a reduced grid: the run directory's
samples, results and report agree with each other and with independent references (HF log-likelihoods,
sacrebleu), model and prompt text is escaped, and mistakes are one line with no run directory."""

import json
import math

import pytest
import torch
from sacrebleu.metrics import BLEU
from typer.testing import CliRunner

from fissure.cli import app

runner = CliRunner()

GRID = """
[settings.greedy]
temperature = 0.0
[settings.beam-2]
num_beams = 2
[settings.pure]
temperature = 1.0
[settings.nucleus]
temperature = 1.0
top_p = 0.9
"""


def _prompts(tmp_path):
    rows = [{"prompt": p, "reference": r} for p, r in (
        ("the cat sat on", " the mat <script>x</script>"), ("a dog ran in", " the park today"),
        ("paris is the", " capital of france"), ("one two three", " four five six"),
        ("hello world,", " hello there"))]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path, rows


@pytest.mark.slow
def test_frontier_cli_writes_results_samples_and_report(tiny_llama, tmp_path):
    path, hf, tok = tiny_llama
    prompts, rows = _prompts(tmp_path)
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID, encoding="utf-8")
    result = runner.invoke(app, ["frontier", str(path), "--prompts", str(prompts), "--grid", str(grid),
                                 "--max-new-tokens", "6", "--weight", "0", "--weight", "1", "--json",
                                 "--threads", "1", "--out-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert {"config.toml", "meta.json", "results.json", "samples.jsonl", "report.html"} <= \
        {p.name for p in run_dir.iterdir()}
    assert json.loads((run_dir / "results.json").read_text()) == {k: v for k, v in data.items() if k != "run_dir"}
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert [s["setting"] for s in samples] == [n for n in ("human", "greedy", "beam-2", "pure", "nucleus")
                                               for _ in rows]
    by = {r["name"]: r for r in data["settings"]}
    assert list(by) == ["greedy", "beam-2", "pure", "nucleus"]

    # quality: the log-likelihood per token HF's model gives the greedy continuations after their prompts
    greedy = [s for s in samples if s["setting"] == "greedy"]
    total_ll = total_tokens = 0.0
    for s in greedy:
        if not s["text"].strip():
            continue
        ctx, whole = tok.encode(s["prompt"]), tok.encode(s["prompt"] + s["text"])
        assert whole[:len(ctx)] == ctx
        ids = torch.tensor([[tok.bos_token_id, *whole]])
        with torch.no_grad():
            logp = torch.log_softmax(hf(ids).logits[0, :-1].double(), -1)
        cont = range(len(ctx) + 1, ids.shape[1])
        total_ll += sum(float(logp[i - 1, ids[0, i]]) for i in cont)
        total_tokens += len(cont)
        assert s["loglikelihood"] == pytest.approx(sum(float(logp[i - 1, ids[0, i]]) for i in cont), abs=1e-3)
    assert by["greedy"]["loglik_per_token"]["estimate"] == pytest.approx(total_ll / total_tokens, abs=1e-4)
    # greedy continuations are HF's greedy ones
    for s in greedy[:2]:
        ids = tok(s["prompt"], return_tensors="pt").input_ids
        want = hf.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.eos_token_id)[0, ids.shape[1]:]
        assert s["text"] == tok.decode([t for t in want.tolist() if t != tok.eos_token_id])

    # BLEU against the references is sacrebleu's; human rows carry the references
    texts = [s["text"] for s in samples if s["setting"] == "nucleus"]
    assert by["nucleus"]["bleu"]["estimate"] == pytest.approx(
        BLEU().corpus_score(texts, [[r["reference"] for r in rows]]).score)
    assert [s["text"] for s in samples if s["setting"] == "human"] == [r["reference"] for r in rows]

    # the front: no setting on it is beaten on both axes by another
    points = {n: (r["loglik_per_token"]["estimate"], r["distinct_2"]["estimate"]) for n, r in by.items()}
    for name in data["pareto"]:
        assert not any(q[0] >= points[name][0] and q[1] >= points[name][1] and q != points[name]
                       for q in points.values())
    assert {r["name"] for r in data["settings"] if r["on_front"]} == set(data["pareto"])
    # all weight on diversity picks the most diverse front setting, all on quality the most likely one
    picks = {p["weight_on_quality"]: p["setting"] for p in data["recommendations"]}
    assert picks[1.0] == max(data["pareto"], key=lambda n: points[n][0])
    assert picks[0.0] == max(data["pareto"], key=lambda n: points[n][1])

    methods = [t["method"] for t in data["holtzman"]["table"]]
    assert methods == ["human", "greedy", "beam", "pure sampling", "nucleus"]
    claims = {c["claim"]: c for c in data["holtzman"]["checks"]}
    assert all(c["holds"] in (True, False, None) for c in claims.values())
    assert math.isfinite(data["wall_seconds"])

    html = (run_dir / "report.html").read_text()
    assert "<script>x" not in html and "&lt;script&gt;x&lt;/script&gt;" in html
    assert "<svg" in html and "Holtzman" in html


def test_frontier_cli_mistakes_are_one_line_without_a_run_directory(tiny_llama, tmp_path):
    path, _, _ = tiny_llama
    runs = tmp_path / "runs"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    bad_grid = tmp_path / "bad.toml"
    bad_grid.write_text("[settings.hot]\ntemperature = 1.0\ntop_p = 1.5\n", encoding="utf-8")
    typo_grid = tmp_path / "typo.toml"
    typo_grid.write_text("[grid]\ntemprature = [0.7]\n", encoding="utf-8")
    beam_grid = tmp_path / "beam.toml"
    beam_grid.write_text("[settings.b]\nnum_beams = 0\n", encoding="utf-8")
    ok = tmp_path / "ok.txt"
    ok.write_text("one prompt\nanother prompt\n", encoding="utf-8")
    half = tmp_path / "half.jsonl"
    half.write_text('{"prompt": "a", "reference": "b"}\n{"prompt": "c"}\n', encoding="utf-8")
    for args, needle in ((["--prompts", str(empty)], "holds no prompts"),
                         (["--prompts", str(latin)], "is not UTF-8"),
                         (["--prompts", str(tmp_path / "nope.txt")], "not found"),
                         (["--prompts", str(half)], "on every line or on none"),
                         (["--prompts", str(ok), "--grid", str(bad_grid)], "top_p = 1.5 is invalid"),
                         (["--prompts", str(ok), "--grid", str(typo_grid)], "temprature"),
                         (["--prompts", str(ok), "--grid", str(beam_grid)], "num_beams = 0 is invalid"),
                         (["--prompts", str(ok), "--max-new-tokens", "0"], "max_new_tokens = 0 is invalid"),
                         (["--prompts", str(ok), "--weight", "2"], "weights"),
                         (["--prompts", str(ok), "--quality", "bleu"], "needs references"),
                         (["--prompts", str(ok), "--diversity", "fun"], "diversity = 'fun' is invalid")):
        result = runner.invoke(app, ["frontier", str(path), *args, "--out-dir", str(runs)])
        assert result.exit_code == 2, (args, result.output)
        assert needle in result.output and len(result.output.strip().splitlines()) == 1, (args, result.output)
    assert not runs.exists()
