"""fissure's http backend and CLI against a real OpenAI-compatible server: llama.cpp's, through
llama-cpp-python (``python -m llama_cpp.server``), serving the SmolLM2-135M-Instruct Q4_1 GGUF on
127.0.0.1, compared with fissure's native backend on the same GGUF.

The wheel is built once per machine and cached (``tests/e2e/llama_server.py``); the first run on
a machine spends ~15 minutes on 2 cores building it, later runs install the cached wheel.

What is compared, with the native backend as the independent reference:
- greedy text of plain prompts (the same string reaches both models);
- chat replies: with ``--chat-template model`` the server gets the text the native backend
  renders; with ``server`` it renders the chat itself;
- a small probe run, reply by reply;
- ``eval``: llama-cpp-python's echo log-probabilities score each prompt token with the
  prediction made *at* its own position (shifted by one). Shown here against the native model's
  log-probabilities; fissure's echo check must notice and refuse perplexity in one line.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from llama_server import ensure_installed, serve, smollm2_gguf
from typer.testing import CliRunner

from fissure.cli import app

pytestmark = pytest.mark.slow
runner = CliRunner()
PROMPTS = ["The capital of France is", "Once upon a time, in a small village,", "def fibonacci(n):\n",
           "The three primary colours are"]
NEW = 24
FRANCE = "What is the capital of France?"


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    started = time.monotonic()
    build_s = ensure_installed()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with serve(smollm2_gguf(), threads=1, log_path=log) as base:
        print(f"\nllama.cpp server: wheel build {build_s:.0f} s, ready after {time.monotonic() - started:.0f} s")
        yield base + "/v1"


@pytest.fixture(scope="module")
def native():
    from fissure.backends import load

    torch.set_num_threads(1)
    return load("smollm2")


def cli(*args) -> dict:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def greedy(lm, prompts, n=NEW):
    from fissure.decode import Decoding

    return lm.generate(prompts, Decoding(max_new_tokens=n))


def native_logprobs(native, ids: list[int]) -> torch.Tensor:
    """The native model's next-token log-probabilities after ``ids``."""
    with torch.no_grad():
        out = native.model(torch.tensor([ids]))
    logits = out[0] if isinstance(out, tuple) else out
    return torch.log_softmax(logits[0, -1].double(), -1)


def divergence(native, prompt: str, ours: str, theirs: str) -> tuple[int, float | None]:
    """(tokens in common, native's log-probability margin of its own pick over the server's at the
    first token where they differ; None when one text is a prefix of the other)."""
    tok = native.tokenizer
    a, b = tok.encode(ours), tok.encode(theirs)
    n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    if n == min(len(a), len(b)):
        return n, None
    lp = native_logprobs(native, tok.encode(prompt) + a[:n])
    return n, float(lp[a[n]] - lp[b[n]])


# llama.cpp multiplies Q4_1 weights with activations quantized to 8 bits; fissure dequantizes the
# weights and computes in float32 (matching HF's Llama: tests/models/test_llama.py). Measured
# here: next-token log-probabilities differ by up to ~0.4 nats, so greedy picks may flip where the
# top two are that close. A flip where native prefers its token by more than this is a bug.
NEAR_TIE = 0.75  # nats


def test_the_same_prompt_tokens_reach_both_models(url, native):
    import urllib.request

    for text in PROMPTS + [native.render([{"role": "user", "content": FRANCE}])]:
        request = urllib.request.Request(url.removesuffix("/v1") + "/extras/tokenize",
                                         data=json.dumps({"input": text}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as r:
            assert json.loads(r.read())["tokens"] == native.tokenizer.encode(text)


def test_plain_prompts_greedy_text_agrees_with_native_up_to_near_ties(url, native, tmp_path):
    out = cli("generate", url, *sum((["--prompt", p] for p in PROMPTS), []), "--max-new-tokens", str(NEW),
              "--concurrency", "2", "--out-dir", str(tmp_path))
    ours = greedy(native, PROMPTS)
    report = []
    for prompt, mine, theirs in zip(PROMPTS, ours, out["texts"]):
        n, margin = divergence(native, prompt, mine, theirs)
        report.append((n, margin))
        assert margin is None or margin < NEAR_TIE, (prompt, mine, theirs, margin)
        assert n >= 1, (prompt, mine, theirs)  # the first greedy token agrees on every one of these prompts
    same = sum(m == t for m, t in zip(ours, out["texts"]))
    print(f"\nplain greedy, {NEW} tokens: {same}/{len(PROMPTS)} identical; (common tokens, native margin at the "
          f"first difference): {[(n, None if m is None else round(m, 3)) for n, m in report]}")


def test_france_chat_model_and_server_templates_agree_and_the_reply_differs_from_native_only_at_a_near_tie(
        url, native, tmp_path):
    messages = [{"role": "user", "content": FRANCE}]
    by_model = cli("generate", url, "--chat", FRANCE, "--chat-template", "model", "--template-from", "smollm2",
                   "--max-new-tokens", "40", "--out-dir", str(tmp_path))
    by_server = cli("generate", url, "--chat", FRANCE, "--template-from", "smollm2", "--max-new-tokens", "40",
                    "--out-dir", str(tmp_path))
    assert by_model["chat_template"]["mode"] == "model" and by_server["chat_template"]["mode"] == "server"
    # the server's own template renders this chat as the model's does (same prompt tokens, same first pick)
    assert by_server["chat_template_checks"][0]["agree"] is True, by_server["chat_template_checks"]
    assert by_model["texts"] == by_server["texts"]
    (mine,) = greedy(native, [messages], 40)
    n, margin = divergence(native, native.render(messages), mine, by_model["texts"][0])
    print(f"\nFrance: native {mine!r}; server (either template) {by_model['texts'][0]!r}; "
          f"common tokens {n}, native margin at the first difference {margin}")
    assert margin is None or margin < NEAR_TIE


def test_probe_replies_agree_with_native_up_to_near_ties(url, native, tmp_path):
    args = ["--attacks", "none,prefix_injection", "--requests", "2", "--twins", "0", "--no-benign",
            "--max-new-tokens", "16"]
    served = cli("probe", url, *args, "--chat-template", "model", "--template-from", "smollm2", "--concurrency", "2",
                 "--out-dir", str(tmp_path / "http"))
    local = cli("probe", "smollm2", *args, "--no-whitebox", "--threads", "1", "--out-dir", str(tmp_path / "native"))
    assert served["chat_template"]["mode"] == "model"
    assert served["throughput"]["backend"]["concurrency"] == 2
    # llama-cpp-python's echo log-probabilities are shifted by one: the white-box probes refuse them
    assert served["whitebox"]["skipped"] and "shifted by one" in served["whitebox"]["note"]

    from fissure.judges import read_samples

    def replies(run: dict) -> dict:
        return {s.key: s for s in read_samples(__import__("pathlib").Path(run["run_dir"]) / "samples.jsonl")}

    a, b = replies(local), replies(served)
    assert a.keys() == b.keys() and len(a) == 4
    same = 0
    for key in a:
        assert a[key].prompt == b[key].prompt
        prompt = native.render(a[key].prompt)
        n, margin = divergence(native, prompt, a[key].reply, b[key].reply)
        assert margin is None or margin < NEAR_TIE, (key, a[key].reply, b[key].reply, margin)
        same += a[key].reply == b[key].reply
    print(f"\nprobe: {same}/{len(a)} replies identical to native")


def test_eval_refuses_the_shifted_echo_log_probabilities(url, native, tmp_path):
    import urllib.request

    text = "The quick brown fox jumps over the lazy dog. Paris is the capital of France."
    body = {"prompt": text, "max_tokens": 1, "echo": True, "logprobs": 1, "temperature": 0}
    request = urllib.request.Request(url + "/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as r:
        echoed = json.loads(r.read())["choices"][0]["logprobs"]["token_logprobs"]
    ids = native.tokenizer.encode(text)
    with torch.no_grad():
        out = native.model(torch.tensor([ids]))
    lp = torch.log_softmax((out[0] if isinstance(out, tuple) else out)[0].double(), -1)
    k = range(1, len(ids))
    correct = sum(abs(echoed[i] - float(lp[i - 1, ids[i]])) for i in k) / len(k)  # P(token i | tokens < i)
    shifted = sum(abs(echoed[i] - float(lp[i, ids[i]])) for i in k) / len(k)  # the prediction at position i
    print(f"\necho vs native: mean |diff| {correct:.3f} nats as next-token scores, {shifted:.3f} shifted by one")
    assert shifted < 0.5 and correct > 3.0  # measured: ~0.18 and ~8.7 nats

    corpus = tmp_path / "text.txt"
    corpus.write_text(text + "\n")
    result = runner.invoke(app, ["eval", url, "--text", str(corpus), "--out-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "refusing to report perplexity" in lines[0], result.stderr
