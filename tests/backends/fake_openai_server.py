"""A small OpenAI-compatible server over a toy character-bigram "model", for testing the http backend.

Tokens are single characters from ``ALPHABET``; the next-character scores depend only on the
previous character (``logit``), so every log-probability can be computed by hand. The server
implements ``/v1/models``, ``/v1/completions`` (echo, logprobs, top_logprobs, max_tokens, stop,
seed) and ``/v1/chat/completions``, plus switchable misbehaviours (``Behaviour``) that real
servers show: auth, 429/500 bursts, dropped connections, garbage bodies, slowness, echo
log-probabilities shifted by one position (llama-cpp-python), no logprobs, a context limit.
``script`` replaces the toy model's generations with fixed answers (a judge model's letters).

Mixed faults: with ``fault_rate`` > 0, each request draws (from an RNG seeded by ``fault_seed``)
whether it fails and how: one of ``FAULTS`` (a 200 with an HTML body, a 200 with JSON lacking
``choices``, a hang until the client gives up, a dropped connection, 429 with Retry-After, 500).
``outage_after`` makes every request a 503 once that many generations were served. The server
counts what it served (``State.generations``: every generation answered with 200) and the most
requests it had in flight at once, faulty ones included.

It binds 127.0.0.1 on a free port and never talks to anything else; a hang lasts at most ``hang``
seconds (and ends when the client hangs up or the server stops), and past ``request_limit``
requests every request is refused with a 400, so a test cannot loop for ever.
"""

from __future__ import annotations

import json
import math
import random
import select
import string
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ALPHABET = string.ascii_lowercase + string.ascii_uppercase + string.digits + " .,;:!?'-\n" + "é"
MODEL_ID = "toy-bigram"
FAULTS = ("html", "no_choices", "hang", "drop", "429", "500")


def logit(prev: str | None, nxt: str) -> float:
    """Raw score of ``nxt`` after ``prev`` (``None``: start of text). Distinct per row; doubling is
    penalised so greedy text never gets stuck on one character."""
    a = 0 if prev is None else ALPHABET.index(prev) + 1
    b = ALPHABET.index(nxt)
    return ((a * 31 + b * 17) % 29) / 4 + b / 1000 - (2.0 if prev == nxt else 0.0)


def next_logprobs(prev: str | None) -> dict[str, float]:
    scores = {c: logit(prev, c) for c in ALPHABET}
    top = max(scores.values())
    log_z = top + math.log(sum(math.exp(s - top) for s in scores.values()))
    return {c: s - log_z for c, s in scores.items()}


# Behaviour counters of faults served to the next requests, and the fault each one gives.
COUNTED_FAULTS = (("drop_connection", "drop"), ("fail_429", "429"), ("fail_500", "500"), ("fail_html", "html"),
                  ("fail_no_choices", "no_choices"))


@dataclass
class Behaviour:
    """Switches a test flips on ``server.behaviour``; counters count down as they fire."""

    api_key: str | None = None  # require "Authorization: Bearer <key>"
    fail_429: int = 0  # answer this many requests with 429 + Retry-After: 0
    fail_500: int = 0
    fail_html: int = 0  # answer this many with 200 and an HTML body
    fail_no_choices: int = 0  # answer this many with 200 and JSON that has no "choices"
    drop_connection: int = 0  # close this many connections without answering
    garbage: bool = False  # 200 with an HTML body
    missing_fields: bool = False  # 200 with JSON that has no "choices"
    sleep: float = 0.0  # seconds before answering a completion
    fail_after: int | None = None  # completion requests after this many answer 400
    shift_echo: bool = False  # llama-cpp-python: prompt token k scored by the prediction AT k
    no_logprobs: bool = False  # ignore the logprobs parameter
    bos: bool = False  # vLLM style: a "<s>" token first, text_offset counts its characters
    echo_needs_a_token: bool = False  # reject max_tokens=0
    context: int = 512  # prompt + max_tokens, in tokens
    any_text: bool = False  # read characters outside ALPHABET as spaces (for real prompts) instead of a 400
    fault_rate: float = 0.0  # share of requests that fail, each with one of ``faults``
    faults: tuple[str, ...] = FAULTS
    fault_seed: int = 0
    retry_after: str = "0"  # the Retry-After header of a 429
    hang: float = 5.0  # the longest a hanging answer waits (it ends when the client hangs up)
    outage_after: int | None = None  # after this many generations served, every request answers 503
    request_limit: int = 5000  # requests past this answer 400: a runaway test stops
    chat_template: str | None = None  # Jinja template the chat endpoint renders with (None: "role: content")
    publish_template: bool = False  # GET /props gives chat_template (llama.cpp's server)
    apply_template: bool = False  # POST /apply-template renders messages (llama.cpp's server)
    refuse_fields: tuple[str, ...] = ()  # 400 for a request that carries any of these (a strict server)
    script: Callable[[str], str] | None = None  # fixed answers: a generation's text is script(prompt)


@dataclass
class State:
    behaviour: Behaviour = field(default_factory=Behaviour)
    requests: list[dict] = field(default_factory=list)  # {"path", "headers", "body"}
    in_flight: int = 0
    max_in_flight: int = 0
    completions_served: int = 0
    generations: list[tuple] = field(default_factory=list)  # (path, prompt, seed) of each generation answered 200
    faults_served: dict = field(default_factory=dict)  # fault -> how many times
    rng: random.Random | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def draw_fault(self) -> str | None:
        """Under ``lock``: the fault this request gets, if any."""
        b = self.behaviour
        if b.outage_after is not None and len(self.generations) >= b.outage_after:
            return "503"
        for counter, fault in COUNTED_FAULTS:  # the next N requests get this fault, in this order
            if getattr(b, counter):
                setattr(b, counter, getattr(b, counter) - 1)
                return fault
        if b.fault_rate <= 0:
            return None
        if self.rng is None:
            self.rng = random.Random(b.fault_seed)
        if self.rng.random() >= b.fault_rate:
            return None
        return self.rng.choice(b.faults)


class _Refuse(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _sample(prev: str | None, rng: random.Random, body: dict) -> str:
    lps = next_logprobs(prev)
    temperature = float(body.get("temperature", 1.0))
    if temperature == 0:
        return max(lps, key=lps.get)
    ranked = sorted(lps.items(), key=lambda kv: -kv[1])
    if body.get("top_k"):
        ranked = ranked[: int(body["top_k"])]
    weights = [math.exp(lp / temperature) for _, lp in ranked]
    top_p, total, kept = float(body.get("top_p", 1.0)), sum(weights), []
    for (c, _), w in zip(ranked, weights):
        kept.append((c, w))
        if sum(x for _, x in kept) >= top_p * total:
            break
    return rng.choices([c for c, _ in kept], weights=[w for _, w in kept])[0]


def _generate(prompt: str, body: dict) -> tuple[str, list[str], str]:
    """Returns (text, generated characters incl. any cut by a stop string, finish_reason)."""
    rng = random.Random(body.get("seed"))
    stops = body.get("stop") or []
    stops = [stops] if isinstance(stops, str) else stops
    out: list[str] = []
    for _ in range(int(body.get("max_tokens", 16))):
        out.append(_sample((prompt + "".join(out))[-1:] or None, rng, body))
        text = "".join(out)
        for s in stops:
            if s in text:
                return text[: text.index(s)], out, "stop"
    return "".join(out), out, "length"


def _logprobs(text: str, start: str | None, n_top: int, first_unscored: bool, shift: bool) -> dict:
    """OpenAI-style logprobs for the characters of ``text`` following ``start``."""
    tokens, lps, tops, prev = [], [], [], start
    for i, ch in enumerate(text):
        dist = next_logprobs(ch if shift else prev)
        unscored = first_unscored and i == 0
        tokens.append(ch)
        lps.append(None if unscored else dist[ch])
        top = sorted(dist.items(), key=lambda kv: -kv[1])[:n_top]
        tops.append(None if unscored or n_top == 0 else dict(top))
        prev = ch
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": list(range(len(text)))}


def _completion(state: State, body: dict) -> dict:
    b = state.behaviour
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise _Refuse(400, "prompt must be a string")
    if b.script is not None and not body.get("echo") and body.get("logprobs") is None:  # a scripted answer
        text = b.script(prompt)
        return {"id": "cmpl-script", "object": "text_completion", "model": MODEL_ID,
                "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(text),
                          "total_tokens": len(prompt) + len(text)}}
    bad = sorted(set(prompt) - set(ALPHABET))
    if bad and b.any_text:  # the model reads them as spaces; echo still returns the characters sent
        sent, prompt = prompt, "".join(c if c in ALPHABET else " " for c in prompt)
        out = _completion(state, {**body, "prompt": prompt})
        choice = out["choices"][0]
        if body.get("echo"):
            choice["text"] = sent + choice["text"][len(sent):]
            if choice["logprobs"]:
                tokens = choice["logprobs"]["tokens"]
                k = 1 if b.bos else 0
                tokens[k:k + len(sent)] = list(sent)
        return out
    if bad:
        raise _Refuse(400, f"characters outside the toy vocabulary: {bad!r}")
    max_tokens = int(body.get("max_tokens", 16))
    if max_tokens == 0 and b.echo_needs_a_token:
        raise _Refuse(400, "max_tokens must be at least 1, got 0.")
    n_prompt = len(prompt) + (1 if b.bos else 0)
    if n_prompt + max_tokens > b.context:
        raise _Refuse(400, f"This model's maximum context length is {b.context} tokens. However, you "
                           f"requested {n_prompt + max_tokens} tokens ({n_prompt} in the messages, "
                           f"{max_tokens} in the completion).")
    text, chars, finish = _generate(prompt, body)
    echo = bool(body.get("echo"))
    choice = {"index": 0, "text": (prompt + text) if echo else text, "finish_reason": finish, "logprobs": None}
    n_top = body.get("logprobs")
    if n_top is not None and not b.no_logprobs:
        gen = _logprobs("".join(chars)[: len(text)], prompt[-1:] or None, int(n_top), False, False)
        if echo:
            lp = _logprobs(prompt, None, int(n_top), not b.bos, b.shift_echo)
            if b.bos:  # vLLM: offsets are running lengths of token strings, "<s>" included
                lp = {k: [None if k != "tokens" else "<s>"] + v for k, v in lp.items()}
                lp["text_offset"] = [0] + [3 + o for o in lp["text_offset"][1:]]
            shift = len(prompt) + (3 if b.bos else 0)
            gen["text_offset"] = [shift + o for o in gen["text_offset"]]
            gen = {k: lp[k] + gen[k] for k in gen}
        choice["logprobs"] = gen
    return {"id": "cmpl-toy", "object": "text_completion", "model": MODEL_ID, "choices": [choice],
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": len(text),
                      "total_tokens": n_prompt + len(text)}}


def render_chat(template: str | None, messages: list[dict]) -> str:
    """The fake server's own rendering of a chat."""
    if template is None:
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=True)


def _chat(state: State, body: dict) -> dict:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Refuse(400, "messages must be a non-empty list")
    prompt = render_chat(state.behaviour.chat_template, messages)
    out = _completion(state, {**body, "prompt": prompt, "logprobs": None, "echo": False})
    choice = out["choices"][0]
    return {"id": "chat-toy", "object": "chat.completion", "model": MODEL_ID, "usage": out["usage"],
            "choices": [{"index": 0, "finish_reason": choice["finish_reason"],
                         "message": {"role": "assistant", "content": choice["text"]}}]}


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    timeout = 10  # seconds: a connection that sends nothing cannot hold a handler thread (or shutdown) for ever

    def log_message(self, *args):  # keep pytest output quiet
        pass

    def _send(self, status: int, payload: bytes, content_type="application/json", headers=None):
        self._done()  # before the client can read the answer and send its next request
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)

    def _error(self, status: int, message: str, headers=None):
        self._send(status, json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode(),
                   headers=headers)

    def _handle(self, body: dict | None):
        state = self.server.state
        b = state.behaviour
        with state.lock:
            state.requests.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                   "t": time.monotonic()})
            over_limit = len(state.requests) > b.request_limit
            fault = None if over_limit else state.draw_fault()
            if fault:
                state.faults_served[fault] = state.faults_served.get(fault, 0) + 1
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        self._counted = True
        try:
            if over_limit:
                return self._error(400, f"request limit of the fake server ({b.request_limit}) reached")
            if fault:
                return self._fault(fault)
            self._answer(body)
        finally:
            self._done()

    def _done(self):
        """This request is no longer in flight (once)."""
        if getattr(self, "_counted", False):
            self._counted = False
            with self.server.state.lock:
                self.server.state.in_flight -= 1

    def _fault(self, fault: str):
        b = self.server.state.behaviour
        if fault == "drop":
            self.close_connection = True  # no answer: the client sees the connection closed
        elif fault == "hang":
            self._hang(b.hang)
        elif fault == "html":
            self._send(200, b"<html>502 Bad Gateway</html>", "text/html")
        elif fault == "no_choices":
            self._send(200, b'{"object": "text_completion"}')
        elif fault == "429":
            self._error(429, "rate limited", {"Retry-After": b.retry_after})
        else:
            self._error(int(fault), "internal error" if fault == "500" else "service unavailable")

    def _hang(self, limit: float):
        """Answer nothing until the client hangs up (its timeout), the server stops, or ``limit`` s."""
        stop, end = self.server.state.stop, time.monotonic() + limit
        while not stop.is_set() and time.monotonic() < end:
            readable, _, _ = select.select([self.connection], [], [], 0.02)
            if readable:  # end of file: the client gave up
                break
        self.close_connection = True

    def _answer(self, body: dict | None):
        state = self.server.state
        b = state.behaviour
        if b.api_key is not None:
            sent = self.headers.get("Authorization", "")
            if sent != f"Bearer {b.api_key}":
                # like some real servers, echo (part of) what was sent: the client must not repeat it
                return self._error(401, f"Incorrect API key provided: {sent.removeprefix('Bearer ')}")
        if self.path.rstrip("/") == "/v1/models" and body is None:
            return self._send(200, json.dumps({"object": "list", "data": [
                {"id": MODEL_ID, "object": "model", "max_model_len": b.context}]}).encode())
        if self.path == "/props" and body is None and b.publish_template:
            return self._send(200, json.dumps({"chat_template": b.chat_template or "", "bos_token": "",
                                               "eos_token": ""}).encode())
        if self.path == "/apply-template" and body is not None and b.apply_template:
            return self._send(200, json.dumps({"prompt": render_chat(b.chat_template, body["messages"])}).encode())
        refused = [k for k in b.refuse_fields if body and k in body]
        if refused:
            return self._error(400, f"Unrecognized request argument supplied: {refused[0]}")
        routes = {"/v1/completions": _completion, "/v1/chat/completions": _chat}
        route = routes.get(self.path.rstrip("/"))
        if route is None or body is None:
            return self._error(404, f"no route {self.path}")
        with state.lock:
            state.completions_served += 1
            failing = b.fail_after is not None and state.completions_served > b.fail_after
        if b.sleep:
            state.stop.wait(b.sleep)
        if failing:
            return self._error(400, "simulated failure")
        if b.garbage:
            return self._send(200, b"<html>502 Bad Gateway</html>", "text/html")
        if b.missing_fields:
            return self._send(200, b'{"object": "text_completion"}')
        try:
            answer = json.dumps(route(state, body)).encode()
        except _Refuse as e:
            return self._error(e.status, e.message)
        if not body.get("echo") and body.get("logprobs") is None:  # a generation: counted before the client can see it
            prompt = body.get("prompt", body.get("messages"))
            with state.lock:
                state.generations.append((self.path.rstrip("/"), json.dumps(prompt), body.get("seed")))
        self._send(200, answer)

    def do_GET(self):
        self._handle(None)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            return self._error(400, "body is not JSON")
        self._handle(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that timed out and hung up is fine
            super().handle_error(request, client_address)

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = State()


class FakeOpenAIServer:
    """``with FakeOpenAIServer() as s:`` serves on ``s.url`` (``http://127.0.0.1:<port>/v1``)."""

    def __init__(self):
        self._server = _Server()
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def state(self) -> State:
        return self._server.state

    @property
    def behaviour(self) -> Behaviour:
        return self._server.state.behaviour

    def completion_requests(self) -> list[dict]:
        return [r for r in self.state.requests if r["path"].rstrip("/").endswith("completions")]

    def __enter__(self) -> "FakeOpenAIServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.state.stop.set()  # wake handlers that are sleeping
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
