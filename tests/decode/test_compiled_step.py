"""A compiled decoding step (``Llama.compile_decode_step``, ``fissure generate --compile``): the
same greedy texts as the eager model, the compiled graph really used, a copy not compiled, and
clear errors where it does not apply."""

import copy
import json

import torch
from typer.testing import CliRunner

from fissure.cli import app
from fissure.models.llama import Llama, LlamaConfig


def test_cli_generate_compiled_gives_the_eager_texts(tiny_llama, tmp_path):
    from torch._dynamo.utils import counters

    runner = CliRunner()
    args = ["generate", str(tiny_llama[0]), "--prompt", "the cat", "--prompt", "paris is the", "--max-new-tokens",
            "16", "--out-dir", str(tmp_path), "--json", "--threads", "1"]
    eager = runner.invoke(app, args)
    assert eager.exit_code == 0, eager.output
    graphs = counters["stats"]["unique_graphs"]
    compiled = runner.invoke(app, args + ["--compile"])
    assert compiled.exit_code == 0, compiled.output
    assert counters["stats"]["unique_graphs"] > graphs  # the steps ran through a compiled graph
    assert json.loads(compiled.stdout)["texts"] == json.loads(eager.stdout)["texts"]
    import tomllib

    recorded = [tomllib.loads(p.read_text())["compile"] for p in sorted(tmp_path.glob("generate-*/config.toml"))]
    assert sorted(recorded) == [False, True]


def test_a_copy_is_not_compiled():
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_kv_head=1, n_embd=16,
                              intermediate_size=32)).eval().compile_decode_step()
    assert model.decode_step is not None
    twin = copy.deepcopy(model)
    assert twin.decode_step is None and model.decode_step is not None
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(twin(ids), model(ids))


def test_compile_errors(tiny_llama, tmp_path):
    runner = CliRunner()
    beams = runner.invoke(app, ["generate", str(tiny_llama[0]), "--prompt", "the", "--compile", "--num-beams", "2",
                                "--out-dir", str(tmp_path)])
    assert beams.exit_code == 2 and "--compile" in beams.output and "Traceback" not in beams.output
    draft = runner.invoke(app, ["generate", str(tiny_llama[0]), "--prompt", "the", "--compile", "--draft", "layers:1",
                                "--out-dir", str(tmp_path)])
    assert draft.exit_code == 2 and "--compile" in draft.output
    other = runner.invoke(app, ["generate", str(tiny_llama[0]), "--prompt", "the", "--compile", "--backend",
                                "transformers", "--out-dir", str(tmp_path)])
    assert other.exit_code == 2 and "native Llama" in other.output and "Traceback" not in other.output
    assert not list(tmp_path.iterdir())  # no run directory for a refused run
