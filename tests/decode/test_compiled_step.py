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


def test_a_module_replaced_after_compiling_is_seen_by_the_compiled_step():
    """A head swapped after compiling (as LoRA swaps projections), of another structure, must change
    the compiled output exactly as it changes the eager one: the compiled step's guards see it. (A
    step compiled with torch's checks on its own modules skipped, tried for speed, failed this.)"""
    from fissure.decode import Decoding, generate

    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=50, block_size=32, n_layer=1, n_head=2, n_kv_head=1, n_embd=16,
                              intermediate_size=32)).eval()
    prompts, d = [[1, 2, 3]], Decoding(max_new_tokens=8)
    eager = generate(model, prompts, d).sequences
    model.compile_decode_step()
    assert generate(model, prompts, d).sequences == eager
    torch.manual_seed(1)
    model.lm_head = torch.nn.Linear(16, 50, bias=True)  # another structure: the old graph has no bias
    model.decode_step, compiled_step = None, model.decode_step
    swapped_eager = generate(model, prompts, d).sequences
    assert swapped_eager != eager  # the new head decides differently
    model.decode_step = compiled_step
    assert generate(model, prompts, d).sequences == swapped_eager


def test_two_models_of_one_class_compiled_in_one_process_each_decode_as_their_eager_self():
    """A second model of the same class whose torch modules differ in structure (a head with a bias)
    must not run the first one's compiled graph."""
    from fissure.decode import Decoding, generate

    prompts, d = [[1, 2, 3]], Decoding(max_new_tokens=8)
    models = []
    for seed, bias in ((0, False), (1, True)):
        torch.manual_seed(seed)
        model = Llama(LlamaConfig(vocab_size=50, block_size=32, n_layer=1, n_head=2, n_kv_head=1, n_embd=16,
                                  intermediate_size=32)).eval()
        model.lm_head = torch.nn.Linear(16, 50, bias=bias)
        models.append((model, generate(model, prompts, d).sequences))
    assert models[0][1] != models[1][1]
    for model, _ in models:
        model.compile_decode_step()
    for model, eager in models:
        assert generate(model, prompts, d).sequences == eager


def test_the_compiled_step_keeps_the_one_query_attention_written_out():
    """Inductor's pattern pass would turn the written-out one-query attention back into SDPA's flash
    kernel, slower for one query on a CPU; ``compile_decode_step`` turns the pass off. Only the eager
    prefill (one call per layer) may reach the flash kernel."""
    from fissure.decode import Decoding, generate

    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=50, block_size=32, n_layer=2, n_head=2, n_kv_head=1, n_embd=16,
                              intermediate_size=32)).eval()
    eager = generate(model, [[1, 2, 3]], Decoding(max_new_tokens=8)).sequences
    model.compile_decode_step()
    generate(model, [[1, 2, 3]], Decoding(max_new_tokens=3))  # compiles
    with torch.profiler.profile() as prof:
        assert generate(model, [[1, 2, 3]], Decoding(max_new_tokens=8)).sequences == eager
    calls = {e.key: e.count for e in prof.key_averages()}
    assert sum(n for k, n in calls.items() if k.startswith("Torch-Compiled Region")) == 7  # the 7 steps
    assert calls.get("aten::_scaled_dot_product_flash_attention_for_cpu", 0) == 2  # the prefill's, per layer


def test_compiled_bf16_steps_call_the_reordered_onednn_linear_of_their_own_model():
    """In bf16 a fused model's projections run oneDNN with each weight reordered once, compiled too
    (the custom op ``fissure::onednn_linear``, which finds its layer by a number). Two models of the
    same structure and other weights, compiled in one process, must each decode as their eager self:
    the second must not call the first one's weights."""
    from fissure.decode import Decoding, generate

    prompts, d = [[1, 2, 3], [4, 5, 6]], Decoding(max_new_tokens=8)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = Llama(LlamaConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_kv_head=1, n_embd=32,
                                  intermediate_size=64)).to(torch.bfloat16).eval().fuse_projections()
        models.append((model, generate(model, prompts, d).sequences))
    assert models[0][1] != models[1][1]  # the two models decide differently
    for model, _ in models:
        model.compile_decode_step()
    for model, eager in models:
        with torch.profiler.profile() as prof:
            assert generate(model, prompts, d).sequences == eager
        calls = {e.key: e.count for e in prof.key_averages()}
        # at least 7 steps x (4 per layer + head); the profiler may list a call at more than one level
        assert calls.get("fissure::onednn_linear", 0) >= 7 * (2 * 4 + 1)
