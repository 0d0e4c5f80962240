"""Who renders a chat for a model behind a URL (``chat_template="server" | "model"``), the check
that the two renderings agree, llama.cpp's repeat penalty, and ``--concurrency`` on the CLI,
against the fake OpenAI-compatible server (127.0.0.1 only).

References: the toy model's greedy continuation (``logit``), HF's ``apply_chat_template`` on the
tiny Llama's tokenizer, jinja2 on the server's template, and the server's own request log.
"""

from __future__ import annotations

import json

import pytest
from fake_openai_server import ALPHABET, FakeOpenAIServer, logit, render_chat
from typer.testing import CliRunner

from fissure.backends.base import BackendError
from fissure.backends.http import HTTPLanguageModel
from fissure.cli import app
from fissure.decode.config import Decoding

runner = CliRunner()
# a template unlike the fake server's default "role: content" rendering (characters of the toy vocabulary)
TEMPLATE = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}[assistant] {% endif %}")
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]


def ref_greedy(prompt: str, n: int) -> str:
    """The toy model's greedy continuation, characters outside its vocabulary read as spaces."""
    prompt = "".join(c if c in ALPHABET else " " for c in prompt)
    out = ""
    for _ in range(n):
        prev = (prompt + out)[-1:] or None
        out += max(ALPHABET, key=lambda c: logit(prev, c))
    return out


def jinja(template: str, messages: list[dict]) -> str:
    from jinja2 import Template

    return Template(template, trim_blocks=True, lstrip_blocks=True).render(messages=messages,
                                                                           add_generation_prompt=True)


@pytest.fixture
def server():
    with FakeOpenAIServer() as s:
        s.behaviour.any_text = True
        yield s


def connect(server, **kw) -> HTTPLanguageModel:
    return HTTPLanguageModel(server.url, api_key_env="FISSURE_TEST_NO_KEY", timeout=5.0, backoff=0.001, **kw)


def posts(server, path: str) -> list[dict]:
    return [r["body"] for r in server.state.requests if r["path"].rstrip("/") == path]


def test_model_template_renders_here_and_sends_text_to_completions(server):
    lm = connect(server, chat_template="model", template=lambda m: jinja(TEMPLATE, m), template_source="test")
    (reply,) = lm.generate([CHAT], Decoding(max_new_tokens=12))
    sent = posts(server, "/v1/completions")
    assert not posts(server, "/v1/chat/completions")
    assert sent[-1]["prompt"] == jinja(TEMPLATE, CHAT)
    assert reply == ref_greedy(jinja(TEMPLATE, CHAT), 12)
    assert lm.render(CHAT) == jinja(TEMPLATE, CHAT)
    assert lm.chat_template_info == {"mode": "model", "template_source": "test"}


def test_server_template_sends_messages_and_differs_from_the_models(server):
    lm = connect(server)  # the default: the server renders ("role: content")
    (reply,) = lm.generate([CHAT], Decoding(max_new_tokens=12))
    assert posts(server, "/v1/chat/completions")[-1]["messages"] == CHAT
    assert reply == ref_greedy(render_chat(None, CHAT), 12)
    assert reply != ref_greedy(jinja(TEMPLATE, CHAT), 12)  # so the test above could fail
    with pytest.raises(BackendError, match="applies its own chat template"):
        lm.render(CHAT)


def test_model_template_from_the_servers_props_equals_the_servers_own_rendering(server):
    server.behaviour.chat_template, server.behaviour.publish_template = TEMPLATE, True
    by_model = connect(server, chat_template="model")
    by_server = connect(server, chat_template="server")
    assert by_model.template_source.endswith("/props")
    d = Decoding(max_new_tokens=10)
    assert by_model.generate([CHAT], d) == by_server.generate([CHAT], d) == [ref_greedy(jinja(TEMPLATE, CHAT), 10)]
    assert posts(server, "/v1/completions")[-1]["prompt"] == jinja(TEMPLATE, CHAT)


def test_model_template_without_a_source_is_a_one_line_error(server):
    with pytest.raises(BackendError, match="--template-from") as e:
        connect(server, chat_template="model")
    assert "\n" not in str(e.value)
    with pytest.raises(BackendError, match="chat_template must be one of"):
        connect(server, chat_template="client")


@pytest.mark.parametrize("apply_template", [False, True])
def test_check_tells_agreement_from_disagreement(server, apply_template):
    server.behaviour.apply_template = apply_template
    lm = connect(server, template=lambda m: jinja(TEMPLATE, m))
    differ = lm.check_chat_template(CHAT)
    assert differ["agree"] is False and differ["method"] == ("apply-template" if apply_template else "prompt-tokens")
    server.behaviour.chat_template = TEMPLATE  # the server now renders as the model does
    same = lm.check_chat_template(CHAT)
    assert same["agree"] is True, same
    assert connect(server).check_chat_template(CHAT)["agree"] is None  # nothing to compare with


def test_neutral_llama_cpp_parameters_are_sent_and_dropped_where_refused(server):
    lm = connect(server)
    lm.generate(["abc"], Decoding(max_new_tokens=3))
    assert posts(server, "/v1/completions")[-1]["repeat_penalty"] == 1.0
    lm.generate(["abc"], Decoding(max_new_tokens=3, repetition_penalty=1.3))
    assert posts(server, "/v1/completions")[-1]["repeat_penalty"] == 1.3
    lm.generate(["abc"], Decoding(max_new_tokens=3, do_sample=True, temperature=0.7, seed=1))
    assert {k: posts(server, "/v1/completions")[-1][k] for k in ("top_k", "min_p")} == {"top_k": 0, "min_p": 0.0}
    lm.generate(["abc"], Decoding(max_new_tokens=3, do_sample=True, temperature=0.7, top_k=5, seed=1))
    assert posts(server, "/v1/completions")[-1]["top_k"] == 5  # the decoding's own top_k wins
    server.behaviour.refuse_fields = ("repeat_penalty",)
    strict = connect(server)
    assert strict.generate(["abc", "abd"], Decoding(max_new_tokens=3)) == [ref_greedy("abc", 3), ref_greedy("abd", 3)]
    assert "repeat_penalty" not in posts(server, "/v1/completions")[-1]


# -- the CLI ------------------------------------------------------------------------------------
def test_generate_chat_with_the_model_template_from_a_local_model(server, tiny_llama, tmp_path):
    path, _, hf_tok = tiny_llama
    message = "hello there"
    result = runner.invoke(app, ["generate", server.url, "--chat", message, "--chat-template", "model",
                                 "--template-from", str(path), "--max-new-tokens", "6", "--json",
                                 "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    rendered = hf_tok.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                          add_generation_prompt=True)
    assert posts(server, "/v1/completions")[-1]["prompt"] == rendered
    assert out["texts"] == [ref_greedy(rendered, 6)]
    assert out["chat_template"]["mode"] == "model" and out["chat_template"]["template_source"] == str(path)
    # the fake server renders "role: content": the check sees the difference and warns, once per prompt
    assert out["chat_template_checks"][0]["agree"] is False
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "render prompt 0 differently" in warnings[0]


def test_generate_chat_defaults_to_the_server_template_and_records_it(server, tmp_path):
    result = runner.invoke(app, ["generate", server.url, "--chat", "hi", "--max-new-tokens", "4", "--json",
                                 "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["chat_template"] == {"mode": "server", "concurrency": 4}
    assert posts(server, "/v1/chat/completions")[-1]["messages"] == [{"role": "user", "content": "hi"}]
    assert "warning" not in result.stderr


def test_probe_concurrency_is_really_in_flight_and_recorded(server, tmp_path):
    server.behaviour.sleep, server.behaviour.context = 0.15, 100_000
    result = runner.invoke(app, ["probe", server.url, "--attacks", "none,prefix_injection", "--twins", "0",
                                 "--no-benign", "--no-whitebox", "--max-new-tokens", "4", "--concurrency", "3",
                                 "--out-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert server.state.max_in_flight == 3  # the server saw 3 at once, never more
    assert out["throughput"]["backend"]["concurrency"] == 3
    assert out["chat_template"]["mode"] == "server"
    config = (tmp_path / out["run_dir"].split("/")[-1] / "config.toml").read_text()
    assert "concurrency = 3" in config and 'chat_template = "server"' in config


def test_probe_with_the_model_template_warns_where_the_server_renders_otherwise(server, tmp_path, tiny_llama):
    path, _, hf_tok = tiny_llama
    server.behaviour.context = 100_000
    result = runner.invoke(app, ["probe", server.url, "--attacks", "none", "--twins", "0", "--no-benign",
                                 "--no-whitebox", "--requests", "2", "--max-new-tokens", "4", "--chat-template",
                                 "model", "--template-from", str(path), "--out-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    template = out["chat_template"]
    assert template["mode"] == "model" and len(template["checks"]) == 2
    assert all(c["agree"] is False for c in template["checks"]) and len(template["warnings"]) == 2
    assert sum(line.startswith("warning:") for line in result.stderr.splitlines()) == 2
    sent = [b["prompt"] for b in posts(server, "/v1/completions") if b.get("max_tokens") == 4]
    assert sent and all(p.startswith("<|im_start|>system\n") and p.endswith("<|im_start|>assistant\n") for p in sent)
    assert not [b for b in posts(server, "/v1/chat/completions") if b.get("max_tokens") == 4]


@pytest.mark.parametrize("verb", ["probe", "generate", "eval"])
@pytest.mark.parametrize("value", ["0", "257", "-3"])
def test_concurrency_out_of_range_is_one_line_exit_2(server, tmp_path, verb, value):
    text = tmp_path / "t.txt"
    text.write_text("some text")
    extra = {"probe": [], "generate": ["--prompt", "hi"], "eval": ["--text", str(text)]}[verb]
    result = runner.invoke(app, [verb, server.url, *extra, "--concurrency", value, "--out-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "concurrency" in lines[0] and "Traceback" not in result.output
    assert not server.completion_requests()  # refused before anything was sent


def test_chat_template_value_is_checked(server, tmp_path):
    result = runner.invoke(app, ["generate", server.url, "--chat", "hi", "--chat-template", "client",
                                 "--out-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--chat-template must be" in result.stderr
