"""``fissure attention`` end to end on a tiny HF Llama directory: the run directory's maps, results and
report agree with each other, model text is escaped, and mistakes are one line with no run directory."""

import json

import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from fissure.cli import app

runner = CliRunner()


def test_attention_cli_writes_maps_results_and_report(tiny_llama, tmp_path):
    path, hf, _ = tiny_llama
    text = "hello <script>alert(1)</script> world"
    result = runner.invoke(app, ["attention", str(path), text, "--layer", "1", "--json", "--threads", "1",
                                 "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    (run_dir,) = tmp_path.iterdir()
    assert {"config.toml", "meta.json", "results.json", "report.html", "attention.safetensors"} <= \
        {p.name for p in run_dir.iterdir()}
    T = len(data["ids"])
    assert data["shape"] == [hf.config.num_hidden_layers, hf.config.num_attention_heads, T, T]
    maps = load_file(run_dir / "attention.safetensors")
    assert sorted(maps) == [f"layer_{i}" for i in range(hf.config.num_hidden_layers)]
    hf.set_attn_implementation("eager")
    with torch.no_grad():
        want = hf(torch.tensor([data["ids"]]), output_attentions=True).attentions
    for i, w in enumerate(want):
        torch.testing.assert_close(maps[f"layer_{i}"], w[0], atol=1e-5, rtol=0)
    html = (run_dir / "report.html").read_text()
    assert "<script>" not in html and "hello &lt;script&gt;alert(1)&lt;/script&gt; world" in html
    assert html.count("data:image/png;base64,") == 1  # --layer 1: one grid
    assert "Attention is not Explanation" in html
    assert data["drawn"]["layers"] == [1]


def test_attention_cli_mistakes_are_one_line_without_a_run_directory(tiny_llama, tmp_path):
    path, _, _ = tiny_llama
    runs = tmp_path / "runs"
    for args, needle in ((["http://127.0.0.1:9/v1", "hi"], "natively"),
                         ([str(path), "hi", "--backend", "transformers"], "natively"),
                         ([str(path), "hi", "--layer", "7"], "--layer must be from 0 to 1"),
                         ([str(path), ""], "TEXT is empty")):
        result = runner.invoke(app, ["attention", *args, "--out-dir", str(runs)])
        assert result.exit_code == 2, (args, result.output)
        assert needle in result.output and len(result.output.strip().splitlines()) == 1
    assert not runs.exists()
