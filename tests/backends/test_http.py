"""The http backend against a local fake OpenAI-compatible server (127.0.0.1 only).

Reference values come from the toy model's raw scores (``logit``), normalised here with torch,
independently of the server's own arithmetic.
"""

from __future__ import annotations

import email.utils
import logging
import socket
import threading
import time

import pytest
import torch
from fake_openai_server import ALPHABET, MODEL_ID, FakeOpenAIServer, logit

from fissure.backends.base import BackendError
from fissure.backends import http as http_backend
from fissure.backends.http import _PROBE_PROMPTS, HTTPLanguageModel, _retry_after
from fissure.decode.config import Decoding

KEY_ENV = "FISSURE_TEST_API_KEY"
SECRET = "sk-test-5ecret-do-not-leak"


def ref_logprobs(prev: str | None) -> dict[str, float]:
    scores = torch.tensor([logit(prev, c) for c in ALPHABET], dtype=torch.float64)
    return dict(zip(ALPHABET, torch.log_softmax(scores, 0).tolist()))


def ref_greedy(prompt: str, n: int) -> str:
    out = ""
    for _ in range(n):
        prev = (prompt + out)[-1:] or None
        out += max(ALPHABET, key=lambda c: logit(prev, c))
    return out


def ref_score(context: str, continuation: str) -> float:
    text = context + continuation
    return sum(ref_logprobs(text[i - 1] if i else None)[text[i]] for i in range(len(context), len(text)))


@pytest.fixture
def server(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with FakeOpenAIServer() as s:
        yield s


def connect(server, **kw) -> HTTPLanguageModel:
    kw = {"api_key_env": KEY_ENV, "timeout": 5.0, "backoff": 0.001, **kw}
    return HTTPLanguageModel(server.url, **kw)


def bodies(server) -> list[dict]:
    return [r["body"] for r in server.completion_requests()]


# -- generation ---------------------------------------------------------------------------
def test_model_is_discovered_and_bare_host_gets_v1(server):
    lm = HTTPLanguageModel(server.url.removesuffix("/v1"), api_key_env=KEY_ENV)
    assert lm.base_url == server.url and lm.model == MODEL_ID
    assert lm.capabilities.max_context == server.behaviour.context and lm.capabilities.backend == "http"


def test_generate_keeps_input_order_and_runs_concurrently(server):
    server.behaviour.sleep = 0.1
    prompts = [f"Prompt {c}" for c in "abcdefgh"]
    lm = connect(server, concurrency=4)
    start = time.perf_counter()
    out = lm.generate(prompts, Decoding(max_new_tokens=6))
    elapsed = time.perf_counter() - start
    assert out == [ref_greedy(p, 6) for p in prompts]
    assert server.state.max_in_flight == 4
    assert elapsed < 0.6  # 8 requests of 0.1 s, 4 at a time; one at a time would take 0.8 s


def test_greedy_is_temperature_zero_and_extras_are_left_out(server):
    lm = connect(server)
    out = lm.generate(["Hello"], Decoding(max_new_tokens=5))
    (body,) = bodies(server)
    assert body["temperature"] == 0.0 and body["max_tokens"] == 5 and body["model"] == MODEL_ID
    assert not {"top_k", "repetition_penalty", "seed", "stop", "top_p"} & body.keys()
    assert out == [ref_greedy("Hello", 5)]
    lm.generate(["Hello"], Decoding(do_sample=True, temperature=0.0, top_p=0.5, eos_token_id=7))
    body = bodies(server)[-1]
    assert body["temperature"] == 0.0 and "top_p" not in body and body["stop_token_ids"] == [7]


def test_sampling_parameters_are_mapped_and_seeded_per_prompt(server):
    lm = connect(server, concurrency=1)
    d = Decoding(max_new_tokens=20, do_sample=True, temperature=0.7, top_k=5, top_p=0.9,
                 repetition_penalty=1.2, seed=3, stop=["\n"])
    first = lm.generate(["Hi", "Hi"], d)
    sent = sorted(bodies(server), key=lambda b: b["seed"])
    assert [b["seed"] for b in sent] == [3, 4]  # repeated prompts get different samples
    for b in sent:
        sent_params = (b["temperature"], b["top_k"], b["top_p"], b["repetition_penalty"], b["stop"])
        assert sent_params == (0.7, 5, 0.9, 1.2, ["\n"])
    assert lm.generate(["Hi", "Hi"], d) == first  # seeded: reproducible
    assert all("\n" not in t for t in first)


def test_stop_strings_cut_the_output(server):
    lm = connect(server)
    full = ref_greedy("Hello", 12)
    stop = full[5:7]
    assert lm.generate(["Hello"], Decoding(max_new_tokens=12, stop=[stop])) == [full[: full.index(stop)]]


def test_beam_search_is_refused_before_any_request(server):
    with pytest.raises(BackendError, match="num_beams"):
        connect(server).generate(["a"], Decoding(num_beams=2))
    assert server.completion_requests() == []


def test_chats_go_to_the_chat_endpoint(server):
    chat = [{"role": "user", "content": "Say hi"}]
    out = connect(server).generate([chat, "plain"], Decoding(max_new_tokens=4))
    paths = sorted(r["path"] for r in server.completion_requests())
    assert paths == ["/v1/chat/completions", "/v1/completions"]
    assert out[0] == ref_greedy("user: Say hi\nassistant:", 4)
    connect(server, chat=True).generate(["plain"])
    assert server.completion_requests()[-1]["body"]["messages"] == [{"role": "user", "content": "plain"}]
    with pytest.raises(BackendError, match="chat=False"):
        connect(server, chat=False).generate([chat])


def test_on_result_gets_every_answer_served_when_a_request_fails(server):
    """Requests already under way when one fails for good finish, and reach on_result."""
    server.behaviour.fail_after, server.behaviour.sleep = 5, 0.05
    prompts = [f"Prompt {c}" for c in "abcdefgh"]
    seen = {}
    with pytest.raises(BackendError, match=r"simulated failure \(5 of 8 requests done\)"):
        connect(server, concurrency=4).generate(prompts, Decoding(max_new_tokens=3),
                                                on_result=lambda i, text: seen.__setitem__(i, text))
    assert len(seen) == len(server.state.generations) == 5
    assert all(text == ref_greedy(prompts[i], 3) for i, text in seen.items())


def test_on_result_keeps_partial_results_before_a_failure(server):
    server.behaviour.fail_after = 3
    prompts = [f"Prompt {c}" for c in "abcdef"]
    seen = {}
    with pytest.raises(BackendError, match=r"simulated failure \(3 of 6 requests done\)"):
        connect(server, concurrency=1).generate(prompts, Decoding(max_new_tokens=3),
                                                on_result=lambda i, text: seen.__setitem__(i, text))
    assert seen == {i: ref_greedy(prompts[i], 3) for i in range(3)}


# -- log-likelihoods ----------------------------------------------------------------------
@pytest.mark.parametrize("bos, needs_a_token", [(False, False), (True, False), (False, True), (True, True)])
def test_loglikelihood_equals_the_toy_model(server, bos, needs_a_token):
    """bos: vLLM-style tokens ("<s>" first, so tokens do not spell the text: the split falls back
    to the context's own tokens); needs_a_token: a server that rejects max_tokens=0."""
    server.behaviour.bos, server.behaviour.echo_needs_a_token = bos, needs_a_token
    greedy = ref_greedy("The cat", 4)
    pairs = [("The cat", " sat."), ("The cat", greedy), ("ab", "c"), ("Caf", "é au lait")]
    results = connect(server).loglikelihood(pairs)
    for (context, continuation), r in zip(pairs, results):
        assert r.logprob == pytest.approx(ref_score(context, continuation), abs=1e-9)
        assert r.tokens == len(continuation)
    assert [r.is_greedy for r in results] == [False, True, False, False]
    if bos:  # the context "The cat" is echoed alone once, not once per pair
        assert sum(b.get("prompt") == "The cat" and b.get("echo") for b in bodies(server)) == 1


def test_loglikelihood_needs_a_context(server):
    with pytest.raises(BackendError, match="non-empty context"):
        connect(server).loglikelihood([("", "abc")])


@pytest.mark.parametrize("bos", [False, True])
def test_rolling_counts_tokens_and_bytes(server, bos):
    server.behaviour.bos = bos
    text = "Un café, s'il vous plait."
    lm = connect(server)
    (r,) = lm.loglikelihood_rolling([text])
    first_scored = 0 if bos else 1  # without a BOS token the first character has no log-probability
    assert r.tokens == len(text) - first_scored
    assert r.loglikelihood == pytest.approx(ref_score(text[:first_scored], text[first_scored:]), abs=1e-9)
    assert r.bytes == len(text) + 1  # "é" is two UTF-8 bytes
    assert (r.window, r.stride) == (server.behaviour.context, server.behaviour.context)
    (given,) = lm.loglikelihood_rolling([text], window=100, stride=50)
    assert (given.window, given.stride, given.tokens) == (100, 50, r.tokens)
    with pytest.raises(BackendError, match="does not fit window=10"):
        lm.loglikelihood_rolling([text], window=10)


def test_shifted_echo_is_refused(server):
    server.behaviour.shift_echo = True
    lm = connect(server)
    with pytest.raises(BackendError, match=r"do not match its own next-token log-probabilities \(shifted by one\?\)"):
        lm.loglikelihood([("The cat", " sat")])
    with pytest.raises(BackendError, match="refusing to report perplexity"):
        lm.loglikelihood_rolling(["The cat sat"])
    assert lm.capabilities.has_logprobs is False
    assert connect(server).generate(["ab"], Decoding(max_new_tokens=2)) == [ref_greedy("ab", 2)]


def test_a_correct_server_passes_the_echo_check(server):
    assert connect(server).capabilities.has_logprobs is True


def test_no_logprobs_server(server):
    server.behaviour.no_logprobs = True
    lm = connect(server)
    assert lm.capabilities.has_logprobs is False
    with pytest.raises(BackendError, match="no usable log-probabilities"):
        lm.loglikelihood([("ab", "c")])


def test_context_limit_is_a_clear_error(server):
    server.behaviour.context = 40
    lm = connect(server)
    with pytest.raises(BackendError, match="longer than the model's context.*maximum context length is 40"):
        lm.generate(["x" * 39], Decoding(max_new_tokens=5))
    with pytest.raises(BackendError, match="longer than the model's context"):
        lm.loglikelihood_rolling(["y" * 60])


# -- transport: retries, timeouts, garbage, unreachable, keys -----------------------------
@pytest.mark.parametrize("failure, attempts", [("fail_429", 4), ("fail_500", 2), ("drop_connection", 2)])
def test_transient_failures_are_retried(server, failure, attempts):
    lm = connect(server, max_retries=4)
    setattr(server.behaviour, failure, attempts - 1)
    out = lm.generate(["ab"], Decoding(max_new_tokens=3))
    assert out == [ref_greedy("ab", 3)]
    assert len(server.completion_requests()) == attempts


def test_retry_after_is_honoured_and_retries_run_out(server):
    lm = connect(server, max_retries=2, backoff=30.0)  # Retry-After: 0 beats the 30 s backoff
    server.behaviour.fail_429 = 10
    start = time.perf_counter()
    with pytest.raises(BackendError, match=r"HTTP 429 .*gave up after 3 attempts"):
        lm.generate(["ab"])
    assert time.perf_counter() - start < 2
    assert len(server.completion_requests()) == 3


def test_timeout_after_retries(server):
    server.behaviour.sleep = 3.0
    lm = connect(server, timeout=0.2, max_retries=1)
    start = time.perf_counter()
    with pytest.raises(BackendError, match=r"no answer within 0.2 s .*gave up after 2 attempts"):
        lm.generate(["ab"])
    assert time.perf_counter() - start < 1.5


@pytest.mark.parametrize("switch, message", [("garbage", "not JSON: '<html>502 Bad Gateway</html>'"),
                                             ("missing_fields", "no 'choices'")])
def test_bad_answers_are_one_line_errors(server, switch, message):
    lm = connect(server, max_retries=2)
    setattr(server.behaviour, switch, True)
    with pytest.raises(BackendError, match=f"{message}.*gave up after 3 attempts") as info:
        lm.generate(["ab"])
    assert "\n" not in str(info.value)
    assert len(server.completion_requests()) == 3  # retried like a 5xx, then given up


@pytest.mark.parametrize("fault", ["fail_html", "fail_no_choices"])
def test_malformed_200_answers_are_retried(server, fault):
    lm = connect(server, max_retries=4)
    setattr(server.behaviour, fault, 3)
    prompts = ["ab", "cd"]
    assert lm.generate(prompts, Decoding(max_new_tokens=3)) == [ref_greedy(p, 3) for p in prompts]
    assert len(server.completion_requests()) == 2 + 3
    assert lm.throughput["retries"] == {"malformed": 3}


@pytest.mark.parametrize("fault", ["fail_html", "fail_no_choices"])
def test_the_log_probability_check_retries_malformed_answers(server, fault):
    lm = connect(server, max_retries=3)
    setattr(server.behaviour, fault, 2)  # the check's first request (a greedy generation with logprobs) gets them
    (r,) = lm.loglikelihood([("The cat", " sat.")])
    assert r.logprob == pytest.approx(ref_score("The cat", " sat."), abs=1e-9)
    check = [b for b in bodies(server) if b["prompt"] == _PROBE_PROMPTS[0] and not b.get("echo")]
    assert len(check) == 3 and all(b["logprobs"] == 1 for b in check)
    assert lm.capabilities.has_logprobs is True and lm.throughput["retries"] == {"malformed": 2}


def test_a_malformed_model_list_is_retried(server):
    server.behaviour.fail_no_choices = 1  # the GET /v1/models at connection
    lm = connect(server)
    assert lm.model == MODEL_ID and lm.throughput["retries"] == {"malformed": 1}


def test_a_hanging_server_times_out_and_is_retried(server):
    server.behaviour.fault_rate, server.behaviour.faults = 0.5, ("hang",)
    lm = connect(server, timeout=0.2, max_retries=8, concurrency=1)  # one at a time: the fault draws are fixed
    prompts = [f"Prompt {c}" for c in "abcdef"]
    start = time.perf_counter()
    assert lm.generate(prompts, Decoding(max_new_tokens=3)) == [ref_greedy(p, 3) for p in prompts]
    hangs = server.state.faults_served["hang"]
    assert hangs >= 2 and lm.throughput["retries"] == {"timeout": hangs}
    assert time.perf_counter() - start < 0.2 * hangs + 1.5  # each hang costs the client's timeout, no more


def test_mixed_faults_never_exceed_the_concurrency_and_throughput_is_counted(server):
    b = server.behaviour
    b.sleep, b.fault_rate, b.fault_seed = 0.01, 0.3, 1
    b.faults = ("html", "no_choices", "drop", "429", "500")
    lm = connect(server, concurrency=3, max_retries=10)
    prompts = [f"Prompt {i}" for i in range(40)]
    assert lm.generate(prompts, Decoding(max_new_tokens=3)) == [ref_greedy(p, 3) for p in prompts]
    assert server.state.max_in_flight == 3  # reached, never passed, faulty requests included
    tp = lm.throughput
    served = server.state.faults_served
    assert sum(served.values()) >= 8  # faults happened, and each was retried once under its reason
    reasons = {"malformed": served.get("html", 0) + served.get("no_choices", 0), "connection": served.get("drop", 0),
               "rate_limited": served.get("429", 0), "server_error": served.get("500", 0)}
    assert tp["retries"] == {k: v for k, v in sorted(reasons.items()) if v}
    assert tp["requests"] == 41 and tp["failed"] == 0  # the model list and 40 generations
    assert tp["attempts"] == len(server.state.requests) == 41 + sum(served.values())
    assert tp["max_in_flight"] == 3 and tp["concurrency"] == 3
    assert tp["seconds"] > 0 and tp["requests_per_s"] == pytest.approx(41 / tp["seconds"], rel=0.01)


def test_a_long_list_is_fed_to_the_pool_a_few_at_a_time(server, monkeypatch):
    """The pool never holds more than ``concurrency`` unfinished futures, however long the list."""
    outstanding, most, lock = [0], [0], threading.Lock()

    class CountingPool(http_backend.ThreadPoolExecutor):
        def submit(self, fn, *args):
            with lock:
                outstanding[0] += 1
                most[0] = max(most[0], outstanding[0])
            future = super().submit(fn, *args)
            future.add_done_callback(lambda _: _done())
            return future

    def _done():
        with lock:
            outstanding[0] -= 1

    monkeypatch.setattr(http_backend, "ThreadPoolExecutor", CountingPool)
    lm = connect(server, concurrency=4)
    out = lm._map(lambda i: i * i, 2000)
    assert out == [i * i for i in range(2000)] and most[0] <= 4


def test_retry_after_makes_every_thread_wait(server):
    lm = connect(server, concurrency=2)
    server.behaviour.fail_429, server.behaviour.retry_after, server.behaviour.sleep = 1, "0.3", 0.04
    before = len(server.state.requests)
    prompts = [f"Prompt {i}" for i in range(12)]
    assert lm.generate(prompts, Decoding(max_new_tokens=2)) == [ref_greedy(p, 2) for p in prompts]
    times = [r["t"] for r in server.state.requests[before:]]
    limited = times[0]  # the first request got the 429
    # the other thread, busy for 0.4 s more, may have sent one before the 429 came back; it sends
    # none while the wait lasts
    assert not [t for t in times if limited + 0.1 < t < limited + 0.28]
    assert max(times) > limited + 0.29
    assert lm.throughput["retries"] == {"rate_limited": 1}


def test_retry_after_reads_seconds_and_http_dates():
    assert _retry_after("2") == 2.0 and _retry_after(None) is None and _retry_after("soon") is None
    assert 4.0 < _retry_after(email.utils.formatdate(time.time() + 5, usegmt=True)) <= 5.0
    assert _retry_after(email.utils.formatdate(time.time() - 60, usegmt=True)) == 0.0


def test_unreachable_port_names_the_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    start = time.perf_counter()
    with pytest.raises(BackendError, match=f"cannot reach {url}/models"):
        HTTPLanguageModel(url, timeout=2.0, backoff=0.001)
    assert time.perf_counter() - start < 1.5


def test_api_key_is_sent_and_never_leaks(server, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    server.behaviour.api_key = SECRET
    monkeypatch.setenv(KEY_ENV, SECRET)
    lm = connect(server)
    server.behaviour.fail_429 = 1  # a retry, so a warning is logged
    assert lm.generate(["ab"], Decoding(max_new_tokens=2)) == [ref_greedy("ab", 2)]
    assert all(r["headers"]["Authorization"] == f"Bearer {SECRET}" for r in server.state.requests)
    assert lm.loglikelihood([("ab", "c")])[0].tokens == 1
    visible = [repr(lm), str(lm), repr(vars(lm)), repr(lm.capabilities), caplog.text]

    monkeypatch.setenv(KEY_ENV, SECRET + "-wrong")  # the server quotes the key it got in its 401 message
    for action in (lambda: connect(server), lambda: lm.generate(["ab"]), lambda: lm.loglikelihood([("ab", "d")])):
        with pytest.raises(BackendError, match=f"authentication failed.*set {KEY_ENV}") as info:
            action()
        visible.append(str(info.value))
    visible.append(caplog.text)
    assert caplog.records and not any(SECRET in v for v in visible)
