"""A :class:`LanguageModel` over any OpenAI-compatible server (vLLM, llama.cpp server, TGI).

Standard library only: ``urllib.request`` + ``json`` + a thread pool of ``concurrency`` requests.

- ``generate``: plain prompts go to ``/v1/completions``, chats (lists of messages) to
  ``/v1/chat/completions``, where the server applies its own chat template.
- ``loglikelihood`` and ``loglikelihood_rolling``: ``/v1/completions`` with ``echo=true`` and
  ``logprobs=1``, which returns the log-probability of every prompt token. The server tokenizes,
  so context and continuation are told apart on the server's own tokens: by character position
  when its tokens spell the prompt exactly, else by the tokens of the context echoed alone (vLLM's
  ``text_offset`` counts special-token strings such as ``<s>``, so it cannot be trusted as
  character offsets).
- Chat templates (``chat_template``): ``"server"`` (the default) sends chats to
  ``/v1/chat/completions`` and the server renders them with whatever template it was started with;
  ``"model"`` renders them on the client with the model's own template (from a local copy of the
  model or tokenizer, ``template=``, or the server's ``/props``, which llama.cpp's own server
  exposes) and sends the text to ``/v1/completions``, so the model sees exactly what a local
  backend would give it. :meth:`HTTPLanguageModel.check_chat_template` tells whether the two
  renderings agree on a prompt (exactly through llama.cpp's ``/apply-template``, else by prompt
  token counts and first greedy token, as the server reports them).
- Greedy decoding is asked for with ``temperature=0`` *and* the neutral ``repeat_penalty=1``:
  llama-cpp-python's server otherwise applies its default repeat penalty of 1.1 before its greedy
  pick (and, when sampling, ``top_k=0, min_p=0`` turn off its defaults of 40 and 0.05). A server
  that refuses one of these fields by name is asked again without it (remembered).
- Echo log-probabilities are checked once before they are trusted: llama-cpp-python's server, for
  one, scores each prompt token with the prediction made *at* its own position (shifted by one).
  The check greedily generates a few tokens with their log-probabilities, echoes the same text,
  and compares the two at those tokens: the next-token log-probabilities of step-by-step decoding.

Transport: at most ``concurrency`` requests are in flight at once (a semaphore around each send),
and a long list is fed to the thread pool ``concurrency`` at a time, never as thousands of pending
futures. A transient failure is retried ``max_retries`` times with exponential backoff and jitter:
429 (after its ``Retry-After``, seconds or an HTTP date, capped at 120 s; the other threads wait
too), 5xx, a dropped connection, a timeout, and a 200 whose body is malformed (not JSON, or
without the fields asked for). Then a one-line ``BackendError``. ``throughput`` counts requests,
attempts, retries by reason and the seconds with a request under way, since the object was made.

The API key is read from the environment at each request and sent as ``Authorization: Bearer``;
it is never stored on the object, logged, or put into an error.

Probing a model served by vLLM's OpenAI-compatible server::

    vllm serve HuggingFaceTB/SmolLM2-135M-Instruct --port 8000
    fissure probe http://HOST:8000/v1 --model HuggingFaceTB/SmolLM2-135M-Instruct

Chats go to ``/v1/chat/completions`` (vLLM applies the model's chat template); white-box probes use
echo log-probabilities, which vLLM gives and the check above verifies. Each reply is judged and
saved to ``samples.jsonl`` as it arrives, so an interrupted run loses nothing:
``fissure probe --resume RUN_DIR`` finishes it.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import os
import random
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..decode.config import Decoding
from ..decode.search import end_tokens
from .base import BackendError, Capabilities, LanguageModel, LoglikelihoodResult, Prompt, RollingLoglikelihood
from .registry import ModelSpec, register_backend

log = logging.getLogger(__name__)

_RETRY_STATUS = {429, 500, 502, 503, 504}
_CONTEXT_MESSAGE = re.compile(r"context|too long|must be <=|maximum .*length", re.IGNORECASE)
_PROBE_PROMPTS = ("The quick brown fox jumps over the lazy dog. The", "Once upon a time there was a")
_MAX_WAIT = 120.0  # seconds: the longest Retry-After honoured
MAX_CONCURRENCY = 256  # requests in flight at once: more is a mistake, not a speed-up
CHAT_TEMPLATES = ("server", "model")  # who renders a chat: see HTTPLanguageModel
# llama.cpp's sampling parameters, sent (neutral unless the decoding says otherwise) until a server
# refuses one by name: llama-cpp-python's server defaults to repeat_penalty=1.1, top_k=40, min_p=0.05
_EXTRAS = {"repeat_penalty": 1.0, "top_k": 0, "min_p": 0.0}


T = TypeVar("T")


class _Retryable(Exception):
    """A transient failure; ``kind`` names it in the retry counts (``Throughput.retries``)."""

    def __init__(self, reason: str, kind: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.kind, self.retry_after = reason, kind, retry_after


class _Malformed(Exception):
    """A 200 answer without what was asked for: retried like a 5xx."""


class _HTTPStatusError(BackendError):
    """A 4xx answer; keeps the status and the server's message for callers that can recover."""

    def __init__(self, line: str, status: int, server_message: str):
        super().__init__(line)
        self.status, self.server_message = status, server_message


class _NoLogprobs(BackendError):
    """An answer without the log-probabilities asked for."""


@dataclass
class Throughput:
    """What a backend's requests cost, counted since it was made (see ``HTTPLanguageModel.throughput``).

    ``requests``: requests answered; ``failed``: given up on (retries spent or a refusal);
    ``attempts``: HTTP requests sent, retries included; ``retries``: by reason (``rate_limited``,
    ``server_error``, ``timeout``, ``connection``, ``malformed``); ``seconds``: wall time with at
    least one request under way (backoff waits included); ``max_in_flight``: the most requests on
    the wire at once (never above ``concurrency``)."""

    concurrency: int
    requests: int = 0
    failed: int = 0
    attempts: int = 0
    retries: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    max_in_flight: int = 0

    def as_dict(self) -> dict[str, Any]:
        s = self.seconds
        return {"requests": self.requests, "failed": self.failed, "attempts": self.attempts,
                "retries": dict(sorted(self.retries.items())), "seconds": round(s, 3),
                "requests_per_s": round(self.requests / s, 3) if s > 0 else None,
                "concurrency": self.concurrency, "max_in_flight": self.max_in_flight}


@dataclass(frozen=True)
class _Echo:
    """The prompt tokens of an echo request: strings, log-probabilities (None: unscored) and the
    top alternatives at each position (None when the server gives none)."""

    tokens: list[str]
    logprobs: list[float | None]
    top: list[dict | None] | None


class HTTPLanguageModel(LanguageModel):
    """A model behind an OpenAI-compatible HTTP API.

    ``base_url``: e.g. ``http://127.0.0.1:8000/v1`` (``/v1`` is added to a bare host). ``model``:
    the served model's name; ``None`` takes the first one ``GET /v1/models`` lists. ``chat``:
    ``None`` sends strings to completions and message lists to chat completions; ``True`` sends
    strings as one user message too; ``False`` refuses message lists. At most ``concurrency``
    requests are in flight at once. Transient failures (429, 5xx, dropped connections, timeouts,
    malformed 200 answers) are retried ``max_retries`` times with exponential backoff from
    ``backoff`` seconds plus jitter, or after the server's ``Retry-After``.

    ``chat_template``: ``"server"`` sends chats to ``/v1/chat/completions`` (the server's template);
    ``"model"`` renders them on the client with ``template`` (a function from messages to text,
    e.g. a local tokenizer's chat template; ``template_source`` says where it came from) or, when
    none is given, with the template the server publishes at ``/props``, and sends the text to
    ``/v1/completions``. Without either, ``"model"`` is an error. A ``template`` given with
    ``"server"`` is used only by :meth:`check_chat_template`.
    """

    streams_results = True  # generate(..., on_result=) hands over each completion as it arrives

    echo_tolerance = 0.1  # nats: mean |echo - step-by-step| log-probability allowed by the check

    def __init__(self, base_url: str, model: str | None = None, *, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 4, timeout: float = 60.0, max_retries: int = 4, backoff: float = 0.5,
                 chat: bool | None = None, chat_template: str = "server",
                 template: Callable[[list[dict]], str] | None = None, template_source: str | None = None):
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BackendError(f"not an http(s) URL: {base_url!r}")
        if parts.username or parts.password:
            raise BackendError(f"put credentials in ${api_key_env}, not in the URL")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or \
                not 1 <= concurrency <= MAX_CONCURRENCY:
            raise BackendError(f"concurrency must be an integer from 1 to {MAX_CONCURRENCY}, not {concurrency!r}")
        if timeout <= 0 or max_retries < 0 or backoff < 0:
            raise BackendError("http backend needs timeout > 0, max_retries >= 0, backoff >= 0")
        if chat_template not in CHAT_TEMPLATES:
            raise BackendError(f"chat_template must be one of {', '.join(CHAT_TEMPLATES)}, not {chat_template!r}")
        self.base_url = base_url.rstrip("/") + ("/v1" if parts.path in ("", "/") else "")
        self.api_key_env = api_key_env
        self.concurrency, self.timeout, self.max_retries, self.backoff = concurrency, timeout, max_retries, backoff
        self.chat = chat
        self.chat_template = chat_template
        self._template, self.template_source = template, (template_source or ("given" if template else None))
        self._extras = dict(_EXTRAS)  # llama.cpp parameters this server has not refused
        self.notes: list[str] = []  # caveats found while running (e.g. is_greedy unknown), for run metadata
        # one generated token per echo request: llama-cpp-python reads max_tokens=0 as "no limit" and
        # generates to the end of its context, others reject 0; the generated token is cut off by usage
        self._echo_max_tokens = 1
        self._probe_lock = threading.Lock()
        self._echo_problem: str | None = None
        self._probed = False
        self._slots = threading.BoundedSemaphore(concurrency)  # requests on the wire
        self._traffic_lock = threading.Lock()
        self._traffic = Throughput(concurrency=concurrency)
        self._busy, self._busy_since, self._on_wire = 0, 0.0, 0
        self._not_before = 0.0  # time.monotonic() before which no request is sent (a 429's Retry-After)
        self.model, self.max_context = model, None  # so repr works if the lookup below fails
        self.model, self.max_context = self._find_model(model)
        if chat_template == "model" and self._template is None:
            self._template, self.template_source = self._server_template()

    def __repr__(self) -> str:
        return f"HTTPLanguageModel(base_url={self.base_url!r}, model={self.model!r})"

    @property
    def throughput(self) -> dict[str, Any]:
        """Requests, attempts, retries by reason, seconds and requests/s since this object was made
        (a snapshot: see :class:`Throughput`)."""
        with self._traffic_lock:
            t = Throughput(**{**vars(self._traffic), "retries": dict(self._traffic.retries)})
            if self._busy:  # a call under way: count its time so far
                t.seconds += time.monotonic() - self._busy_since
        return t.as_dict()

    @property
    def capabilities(self) -> Capabilities:
        """``has_logprobs`` is found out on first access: it runs the echo check (two or four requests)."""
        return Capabilities(name=self.base_url, backend="http", has_logprobs=self._check_echo() is None,
                            has_chat_template=self.chat is not False, max_context=self.max_context)

    # -- the protocol ----------------------------------------------------------------------
    def generate(self, prompts: list[Prompt], decoding: Decoding | None = None,
                 on_result: Callable[[int, str], None] | None = None) -> list[str]:
        """Completions in input order, ``concurrency`` requests at a time.

        ``on_result(index, text)`` is called in the caller's thread as each completion arrives (in
        arrival order), so a long run can save samples as it goes. If a request fails for good, no
        new one starts, the ones already under way finish and are passed to ``on_result`` too, and
        the error says how many of N were done.
        With a ``seed``, prompt ``i`` is sent ``seed + i``: repeated prompts give different samples.
        """
        decoding = decoding or Decoding()
        params = self._sampling_params(decoding)
        requests = [self._generation_request(p) for p in prompts]
        # llama.cpp's name for the penalty (same formula as HF's), so its own default of 1.1 never applies;
        # when sampling, its top_k=40 and min_p=0.05 defaults are turned off too (a decoding's own top_k wins)
        extras = {"repeat_penalty": decoding.repetition_penalty}
        if decoding.sampling:
            extras.update(top_k=0, min_p=0.0)

        def one(i: int) -> str:
            path, body = requests[i]
            body = {**body, **params, "model": self.model}
            if decoding.seed is not None:
                body["seed"] = decoding.seed + i
            return self._send_with_extras(path, body, _completion_text, extras)

        return self._map(one, len(prompts), on_result)

    def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[LoglikelihoodResult]:
        for context, continuation in pairs:
            if not context or not continuation:
                raise BackendError("the http backend needs a non-empty context and continuation in each pair "
                                   "(use loglikelihood_rolling for whole texts)")
        self._require_logprobs()
        texts = [context + continuation for context, continuation in pairs]
        wholes = self._map(lambda i: self._echo(texts[i]), len(texts))
        # Where the server's tokens spell the text, context and continuation split by characters;
        # elsewhere (e.g. vLLM's leading "<s>") by the tokens of the context echoed alone.
        contexts = sorted({c for (c, _), w, t in zip(pairs, wholes, texts) if "".join(w.tokens) != t})
        context_tokens = dict(zip(contexts, self._map(lambda i: self._echo(contexts[i]).tokens, len(contexts))))
        return [self._result(whole, self._continuation_start(whole, context, context_tokens.get(context)), continuation)
                for (context, continuation), whole in zip(pairs, wholes)]

    def loglikelihood_rolling(self, texts: list[str], window: int | None = None,
                              stride: int | None = None) -> list[RollingLoglikelihood]:
        """Each text is scored whole, in one request, with the server's tokenizer. Its first token
        has no log-probability unless the server prepends a BOS token: ``tokens`` counts the tokens
        actually scored. A ``window`` shorter than the text (in the server's tokens) cannot be
        honoured over HTTP and is an error; without one, the server's context is recorded."""
        self._require_logprobs()
        return self._map(lambda i: self._score_text(texts[i], window, stride), len(texts))

    def render(self, prompt: Prompt) -> str:
        if isinstance(prompt, str) and not self.chat:
            return prompt
        if self.chat_template == "model":
            return self._render(self._messages(prompt))
        raise BackendError(f"{self.base_url} applies its own chat template: the rendered chat is not visible over "
                           "HTTP (use chat_template='model')")

    @property
    def logprobs_problem(self) -> str | None:
        """Why this server's log-probabilities cannot be used (runs the echo check once), or None."""
        return self._check_echo()

    @property
    def chat_template_info(self) -> dict[str, Any]:
        """Who renders chats, and with what: for run records."""
        return {"mode": self.chat_template, "template_source": self.template_source}

    def check_chat_template(self, prompt: Prompt) -> dict[str, Any]:
        """Do the server's and the model's renderings of chat ``prompt`` agree?

        ``{"agree": True | False | None, "method": ..., "detail": ...}``; ``None`` when it cannot
        be told (no model template here, or the server reports no token counts). Exact where the
        server renders on request (llama.cpp's ``/apply-template``); otherwise the server's prompt
        token count and first greedy token for the chat (``/v1/chat/completions``) against those
        for the model's rendering (``/v1/completions``): a weaker check, but it needs nothing
        beyond the OpenAI API."""
        if self._template is None:
            return {"agree": None, "method": None,
                    "detail": "no model chat template to compare with (name a local model whose template to use)"}
        messages = self._messages(prompt)
        ours = self._render(messages)
        theirs = self._apply_template(messages)
        if theirs is not None:
            same = theirs == ours
            detail = "identical text" if same else f"differ from character {_first_difference(theirs, ours)}: " \
                f"server {theirs[:120]!r} vs model {ours[:120]!r}"
            return {"agree": same, "method": "apply-template", "detail": detail}
        one = {"model": self.model, "max_tokens": 1, "temperature": 0.0}
        chat = self._send_with_extras("/chat/completions", {**one, "messages": messages}, _with_choice)
        text = self._send_with_extras("/completions", {**one, "prompt": ours}, _with_choice)
        counts = [(a.get("usage") or {}).get("prompt_tokens") for a in (chat, text)]
        firsts = [_completion_text(chat), _completion_text(text)]
        if not all(isinstance(c, int) for c in counts):
            return {"agree": None, "method": "prompt-tokens", "detail": "the server reports no prompt token counts"}
        same = counts[0] == counts[1] and firsts[0] == firsts[1]
        detail = (f"server's rendering: {counts[0]} prompt tokens, first greedy token {firsts[0]!r}; "
                  f"model's: {counts[1]} tokens, {firsts[1]!r}")
        return {"agree": same, "method": "prompt-tokens", "detail": detail}

    def check_chat_templates(self, prompts: list[Prompt], limit: int = 2) -> list[dict[str, Any]]:
        """:meth:`check_chat_template` on the first ``limit`` distinct chat prompts (each result
        with ``prompt``, its index); empty without a model template to compare with."""
        if self._template is None:
            return []
        seen, out = set(), []
        for i, p in enumerate(prompts):
            key = json.dumps(p, sort_keys=True)
            if isinstance(p, str) and not self.chat or key in seen:
                continue
            seen.add(key)
            out.append({"prompt": i, **self.check_chat_template(p)})
            if len(out) == limit:
                break
        return out

    def _messages(self, prompt: Prompt) -> list[dict]:
        if isinstance(prompt, str):
            return [{"role": "user", "content": prompt}]
        if not isinstance(prompt, list) or not all(isinstance(m, dict) and {"role", "content"} <= m.keys()
                                                   for m in prompt):
            raise BackendError("a chat prompt is a list of {'role': ..., 'content': ...} messages")
        return prompt

    def _render(self, messages: list[dict]) -> str:
        try:
            text = self._template(messages)
        except Exception as e:  # a template error (jinja2 raise_exception, a missing role) is the user's input
            raise BackendError(f"the chat template ({self.template_source}) cannot render this chat: "
                               f"{type(e).__name__}: {e}") from None
        if not isinstance(text, str):
            raise BackendError(f"the chat template ({self.template_source}) did not return text")
        return text

    def _root(self) -> str:
        return self.base_url.removesuffix("/v1")

    def _server_template(self) -> tuple[Callable[[list[dict]], str], str]:
        """The chat template the server publishes at ``/props`` (llama.cpp's server), compiled."""
        try:
            props = self._request_url(self._root() + "/props", None)
        except _HTTPStatusError:
            props = {}
        template = props.get("chat_template") if isinstance(props, dict) else None
        if not isinstance(template, str) or not template.strip():
            raise BackendError(f"{self.base_url} does not publish its model's chat template (no /props): name a "
                               "local copy of the model or its tokenizer whose template to use (--template-from "
                               "SPEC, e.g. the .gguf file it serves), or use --chat-template server")
        tokens = {k: props.get(k) or "" for k in ("bos_token", "eos_token")}
        return _compile_template(template, **tokens), f"{self._root()}/props"

    def _apply_template(self, messages: list[dict]) -> str | None:
        """The server's own rendering (llama.cpp's ``POST /apply-template``), or None without one."""
        if getattr(self, "_no_apply_template", False):
            return None
        try:
            answer = self._request_url(self._root() + "/apply-template", {"messages": messages})
        except _HTTPStatusError:
            answer = None
        prompt = answer.get("prompt") if isinstance(answer, dict) else None
        if not isinstance(prompt, str):
            self._no_apply_template = True
            return None
        return prompt

    def _send_with_extras(self, path: str, body: dict, read: Callable[[dict], Any],
                          extras: dict | None = None) -> Any:
        """POST ``body`` plus the llama.cpp parameters this server has not refused (``extras``:
        with values; default the neutral ones); a 4xx naming one of them drops it for good and retries."""
        extras = {k: v for k, v in (self._extras if extras is None else extras).items() if k in self._extras}
        try:
            return self._request(path, {**extras, **body}, read)
        except _HTTPStatusError as e:
            refused = [k for k in extras if k in e.server_message and e.status in (400, 422)]
            if not refused:
                raise
            for k in refused:
                self._extras.pop(k, None)
            log.info("%s refuses %s: not sent again", self.base_url, ", ".join(refused))
            return self._send_with_extras(path, body, read, {k: v for k, v in extras.items() if k not in refused})

    # -- generation ------------------------------------------------------------------------
    @staticmethod
    def _sampling_params(d: Decoding) -> dict:
        """Decoding -> OpenAI parameters; top_k, repetition_penalty and stop_token_ids are vLLM's
        extras, sent only when they differ from "off"."""
        if d.num_beams > 1:
            raise BackendError("beam search (num_beams > 1) is not supported over HTTP; use num_beams=1")
        params: dict = {"max_tokens": d.max_new_tokens}
        if d.sampling:  # do_sample with temperature > 0
            params.update(temperature=d.temperature, top_p=d.top_p)
            if d.top_k:
                params["top_k"] = d.top_k
        else:
            params["temperature"] = 0.0
        if d.repetition_penalty != 1.0:
            params["repetition_penalty"] = d.repetition_penalty
        if d.stop:
            params["stop"] = list(d.stop)
        if d.eos_token_id is not None:
            params["stop_token_ids"] = list(end_tokens(d.eos_token_id))
        return params

    def _generation_request(self, prompt: Prompt) -> tuple[str, dict]:
        if isinstance(prompt, str) and not self.chat:
            return "/completions", {"prompt": prompt}
        if not isinstance(prompt, str) and self.chat is False:
            raise BackendError("this http model was opened with chat=False: give plain-text prompts")
        messages = self._messages(prompt)
        if self.chat_template == "model":
            return "/completions", {"prompt": self._render(messages)}
        return "/chat/completions", {"messages": messages}

    # -- log-likelihoods -------------------------------------------------------------------
    def _result(self, whole: _Echo, start: int, continuation: str) -> LoglikelihoodResult:
        values = whole.logprobs[start:]
        if not values or any(v is None for v in values):
            raise BackendError(f"{self.base_url} gave no log-probability for part of the continuation "
                               f"{continuation[:40]!r}")
        return LoglikelihoodResult(logprob=sum(values), is_greedy=self._is_greedy(whole, start), tokens=len(values))

    @staticmethod
    def _continuation_start(whole: _Echo, context: str, context_tokens: list[str] | None) -> int:
        """Index of the first token that reaches into the continuation (a token straddling the
        boundary counts as continuation, as in lm-evaluation-harness)."""
        if context_tokens is None:  # the tokens spell the text
            end = 0
            for i, token in enumerate(whole.tokens):
                end += len(token)
                if end > len(context):
                    return i
        n = 0
        while n < min(len(context_tokens), len(whole.tokens) - 1) and context_tokens[n] == whole.tokens[n]:
            n += 1
        return n

    def _is_greedy(self, whole: _Echo, start: int) -> bool:
        tops = whole.top[start:] if whole.top is not None else []
        if not tops or any(not t for t in tops):
            note = f"{self.base_url} gives no top_logprobs with echo: is_greedy is reported as False"
            if note not in self.notes:
                self.notes.append(note)
                log.warning(note)
            return False
        return all(lp >= max(top.values()) - 1e-6 for lp, top in zip(whole.logprobs[start:], tops))

    def _score_text(self, text: str, window: int | None, stride: int | None) -> RollingLoglikelihood:
        echo = self._echo(text)
        n = len(echo.tokens)
        if window is not None and window < n:
            raise BackendError(f"a text of {n} server tokens does not fit window={window}: the http backend "
                               "scores each text whole (omit window, or use a local backend)")
        scored = [v for v in echo.logprobs if v is not None]
        window = window or self.max_context or n
        return RollingLoglikelihood(loglikelihood=sum(scored), tokens=len(scored), bytes=len(text.encode("utf-8")),
                                    window=window, stride=stride or window,
                                    extra={"server_tokens": n, "unscored_tokens": n - len(scored)})

    def _echo(self, text: str) -> _Echo:
        """Log-probabilities of the prompt tokens of ``text``, as the server tokenizes it."""
        body = {"model": self.model, "prompt": text, "max_tokens": self._echo_max_tokens, "echo": True,
                "logprobs": 1, "temperature": 0.0}
        try:
            answer = self._request("/completions", body, _with_choice)
        except _HTTPStatusError as e:
            if self._echo_max_tokens == 0 and "max_tokens" in e.server_message:
                self._echo_max_tokens = 1  # this server wants at least one generated token
                return self._echo(text)
            raise
        logprobs = answer["choices"][0].get("logprobs") or {}
        tokens, values, top = logprobs.get("tokens"), logprobs.get("token_logprobs"), logprobs.get("top_logprobs")
        if not isinstance(tokens, list) or not isinstance(values, list) or len(tokens) != len(values):
            raise _NoLogprobs(f"{self.base_url} returns no echo log-probabilities (needs echo and logprobs on "
                              "/v1/completions); it can generate but not score")
        prompt_tokens = (answer.get("usage") or {}).get("prompt_tokens")
        if not isinstance(prompt_tokens, int) or not 0 <= prompt_tokens <= len(tokens):
            prompt_tokens = len(tokens) - body["max_tokens"]
        top = top[:prompt_tokens] if isinstance(top, list) and len(top) == len(tokens) else None
        return _Echo(tokens[:prompt_tokens], values[:prompt_tokens], top)

    def _require_logprobs(self) -> None:
        problem = self._check_echo()
        if problem:
            raise BackendError(problem)

    def _check_echo(self) -> str | None:
        """Once: compare echo log-probabilities with step-by-step next-token ones; the problem, if any."""
        with self._probe_lock:
            if not self._probed:
                self._echo_problem = self._find_echo_problem()
                self._probed = True
        return self._echo_problem

    def _find_echo_problem(self) -> str | None:
        for prompt in _PROBE_PROMPTS:
            try:
                answer = self._send_with_extras("/completions", {"model": self.model, "prompt": prompt,
                                                                 "max_tokens": 8, "temperature": 0.0, "logprobs": 1},
                                                _with_choice)
                choice = answer["choices"][0]
                logprobs = choice.get("logprobs") or {}
                tokens, steps = logprobs.get("tokens"), logprobs.get("token_logprobs")
                if not isinstance(tokens, list) or not isinstance(steps, list) or len(tokens) != len(steps):
                    raise _NoLogprobs("no logprobs on generated tokens")
                if choice.get("finish_reason") != "length":  # a final end-of-text token is not in the text
                    tokens, steps = tokens[:-1], steps[:-1]
                if not tokens:
                    continue
                echo = self._echo(prompt + (choice.get("text") or ""))
            except (_HTTPStatusError, _NoLogprobs) as e:
                return f"server {self.base_url} returns no usable log-probabilities ({e}); cannot score texts"
            tail = zip(echo.tokens[-len(tokens):], echo.logprobs[-len(tokens):])  # the generated tokens, echoed
            pairs = [(a, b) for t, a, (u, b) in zip(tokens, steps, tail) if t == u and a is not None and b is not None]
            if pairs:
                gap = sum(abs(a - b) for a, b in pairs) / len(pairs)
                log.info("echo check at %s: mean |echo - step| = %.4f nats over %d tokens",
                         self.base_url, gap, len(pairs))
                if gap > self.echo_tolerance:
                    return (f"server {self.base_url} returns echo log-probabilities that do not match its own "
                            "next-token log-probabilities (shifted by one?); refusing to report perplexity")
                return None
        return (f"could not check the echo log-probabilities of {self.base_url} (its tokens do not line up); "
                "refusing to score")

    # -- transport -------------------------------------------------------------------------
    def _find_model(self, model: str | None) -> tuple[str, int | None]:
        """The model name (given, or the first served) and its context length when the server says."""
        try:
            data = self._request("/models", None, _model_list)
        except _HTTPStatusError as e:
            if model is not None and e.status == 404:
                return model, None
            raise
        if model is None:
            if not data:
                raise BackendError(f"{self.base_url} serves no models")
            if len(data) > 1:
                log.info("%s serves %d models; using the first, %s", self.base_url, len(data), data[0]["id"])
            model = str(data[0]["id"])
        entry = next((m for m in data if m["id"] == model), {})
        limit = entry.get("max_model_len")
        return model, limit if isinstance(limit, int) else None

    def _map(self, fn: Callable[[int], T], n: int, on_result: Callable[[int, T], None] | None = None) -> list[T]:
        """``fn(i)`` for i < n on a thread pool; results in input order.

        At most ``concurrency`` tasks are submitted at a time (the next when one finishes), so a
        long list never becomes a queue of thousands of futures. ``on_result(i, result)`` is called
        in this thread as each finishes. When one fails with a ``BackendError``, no new task starts;
        the ones under way finish (and reach ``on_result``), then the first error is raised with how
        many of n were done. Any other exception stops everything at once.
        """
        if n == 0:
            return []
        results: list = [None] * n
        done, submitted, error = 0, 0, None
        width = max(1, min(self.concurrency, n))
        pool = ThreadPoolExecutor(max_workers=width)
        running: dict[Future, int] = {}
        try:
            while running or (error is None and submitted < n):
                while error is None and submitted < n and len(running) < width:
                    running[pool.submit(fn, submitted)] = submitted
                    submitted += 1
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in sorted(finished, key=running.__getitem__):
                    i = running.pop(future)
                    try:
                        results[i] = future.result()
                    except BackendError as e:  # keep the first; let the others under way finish
                        error = error or e
                        continue
                    done += 1
                    if on_result is not None:
                        on_result(i, results[i])
        except BaseException:  # a bug, on_result failed, or an interrupt: stop at once
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        if error is not None:
            if n > 1:
                raise BackendError(f"{error} ({done} of {n} requests done)") from None
            raise error
        return results

    def _request(self, path: str, body: dict | None = None, read: Callable[[dict], Any] | None = None) -> Any:
        """GET (no body) or POST ``body`` as JSON; the decoded JSON object, or what ``read`` takes
        from it, after retries. ``read`` raises :class:`_Malformed` for an answer without the fields
        asked for, which is retried like a 5xx."""
        return self._request_url(self.base_url + path, body, read)

    def _request_url(self, url: str, body: dict | None = None, read: Callable[[dict], Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        self._count(busy=1)
        try:
            for attempt in range(self.max_retries + 1):
                try:
                    answer = self._send_once(url, data)
                    try:
                        result = read(answer) if read is not None else answer
                    except _Malformed as e:
                        raise _Retryable(f"malformed answer ({e})", "malformed") from None
                    self._count(requests=1)
                    return result
                except _Retryable as e:
                    if attempt == self.max_retries:
                        self._count(failed=1)
                        raise BackendError(f"{e.reason} from {url}; gave up after {attempt + 1} attempts") from None
                    self._count(retry=e.kind)
                    delay = e.retry_after if e.retry_after is not None else \
                        self.backoff * 2 ** attempt * random.uniform(0.5, 1.5)
                    delay = min(max(delay, 0.0), _MAX_WAIT)
                    if e.retry_after is not None:  # the server asked every client to wait: so do the other threads
                        with self._traffic_lock:
                            self._not_before = max(self._not_before, time.monotonic() + delay)
                    log.warning("%s from %s; retry %d of %d in %.2f s", e.reason, url, attempt + 1,
                                self.max_retries, delay)
                    time.sleep(delay)
                except BaseException:
                    self._count(failed=1)
                    raise
        finally:
            self._count(busy=-1)
        raise AssertionError("unreachable")

    def _count(self, busy: int = 0, requests: int = 0, failed: int = 0, retry: str | None = None,
               on_wire: int = 0) -> None:
        with self._traffic_lock:
            t = self._traffic
            t.requests += requests
            t.failed += failed
            if retry is not None:
                t.retries[retry] = t.retries.get(retry, 0) + 1
            if on_wire > 0:
                t.attempts += 1
            self._on_wire += on_wire
            t.max_in_flight = max(t.max_in_flight, self._on_wire)
            if busy > 0 and self._busy == 0:
                self._busy_since = time.monotonic()
            self._busy += busy
            if busy < 0 and self._busy == 0:
                t.seconds += time.monotonic() - self._busy_since

    def _send_once(self, url: str, data: bytes | None) -> dict:
        with self._traffic_lock:
            wait_s = self._not_before - time.monotonic()
        if wait_s > 0:
            time.sleep(wait_s)
        with self._slots:  # never more than ``concurrency`` requests on the wire
            self._count(on_wire=1)
            try:
                raw = self._exchange(url, data)
            finally:
                self._count(on_wire=-1)
        try:
            answer = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            start = self._one_line(raw[:80].decode("utf-8", "replace"))
            raise _Retryable(f"answer that is not JSON: {start!r}", "malformed") from None
        if not isinstance(answer, dict):
            raise _Retryable("answer that is not a JSON object", "malformed")
        return answer

    def _exchange(self, url: str, data: bytes | None) -> bytes:
        """One HTTP request; the body of a 2xx answer. Transient failures raise :class:`_Retryable`."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(url, data=data, headers=headers, method="GET" if data is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as e:
            message = self._one_line(_server_message(e.read()))
            if e.code in _RETRY_STATUS:
                kind = "rate_limited" if e.code == 429 else "server_error"
                raise _Retryable(f"HTTP {e.code} ({message})", kind, _retry_after(e.headers.get("Retry-After"))) \
                    from None
            raise self._status_error(e.code, message, url) from None
        except urllib.error.URLError as e:  # refused, unknown host, or a connect timeout
            if isinstance(e.reason, TimeoutError):
                raise _Retryable(f"no answer within {self.timeout:g} s", "timeout") from None
            if isinstance(e.reason, ConnectionError) and not isinstance(e.reason, ConnectionRefusedError):
                raise _Retryable(f"connection dropped ({type(e.reason).__name__})", "connection") from None
            raise BackendError(f"cannot reach {url}: {e.reason}") from None
        except TimeoutError:
            raise _Retryable(f"no answer within {self.timeout:g} s", "timeout") from None
        except (OSError, http.client.HTTPException) as e:  # reset or closed mid-answer (RemoteDisconnected)
            raise _Retryable(f"connection dropped ({type(e).__name__})", "connection") from None

    def _status_error(self, status: int, message: str, url: str) -> BackendError:
        if status in (401, 403):  # the message may quote the key: leave it out
            return _HTTPStatusError(f"authentication failed at {url} (HTTP {status}): set {self.api_key_env}",
                                    status, "")
        if status in (400, 413, 422) and _CONTEXT_MESSAGE.search(message):
            return _HTTPStatusError(f"prompt is longer than the model's context at {url}: {message}", status, message)
        return _HTTPStatusError(f"{url} refused the request (HTTP {status}): {message}", status, message)

    def _one_line(self, text: str) -> str:
        """Server text fit for an error: one line, bounded, and without the API key."""
        key = os.environ.get(self.api_key_env)
        text = text.replace(key, "***") if key else text
        return " ".join(text.split())[:300]



def _first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _compile_template(source: str, bos_token: str = "", eos_token: str = "") -> Callable[[list[dict]], str]:
    """A Jinja chat template as HF's ``apply_chat_template`` runs it (sandboxed, trim_blocks,
    lstrip_blocks, ``raise_exception``, the assistant turn opened)."""
    try:
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise BackendError("rendering a server's chat template needs jinja2: pip install jinja2") from None

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    try:
        compiled = env.from_string(source)
    except TemplateError as e:
        raise BackendError(f"the server's chat template does not compile: {e}") from None
    return lambda messages: compiled.render(messages=messages, add_generation_prompt=True, bos_token=bos_token,
                                            eos_token=eos_token)


def _server_message(raw: bytes) -> str:
    """The error message in an OpenAI-style ({"error": {"message"}}), vLLM ({"message"}) or
    FastAPI ({"detail"}) body, else the body itself."""
    text = raw.decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        return text
    if isinstance(body, dict):
        error = body.get("error")
        error = error.get("message") if isinstance(error, dict) else error
        for value in (error, body.get("message"), body.get("detail")):
            if isinstance(value, str) and value:
                return value
    return text


def _with_choice(answer: dict) -> dict:
    """A completion answer with a first choice, else :class:`_Malformed`."""
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _Malformed("no 'choices'")
    return answer


def _completion_text(answer: dict) -> str:
    """The text of a completion or chat completion answer."""
    choice = _with_choice(answer)["choices"][0]
    text = (choice.get("message") or {}).get("content") if "message" in choice else choice.get("text")
    if text is not None and not isinstance(text, str):
        raise _Malformed("the completion is not text")
    return text or ""


def _model_list(answer: dict) -> list[dict]:
    data = answer.get("data")
    if not isinstance(data, list) or not all(isinstance(m, dict) and "id" in m for m in data):
        raise _Malformed("no model list")
    return data


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: a number of seconds or an HTTP date."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None  # unreadable: fall back to our own backoff
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


@register_backend("http", description="a model behind an OpenAI-compatible server (vLLM, llama.cpp, TGI)",
                  accepts="an http(s):// URL", matches=lambda spec: spec.text.startswith(("http://", "https://")),
                  priority=90)
def load_spec(spec: ModelSpec, *, model: str | None = None, batch_size: int = 8, **options) -> HTTPLanguageModel:
    """``model`` names the served model; ``batch_size`` does not apply (``concurrency`` does)."""
    return HTTPLanguageModel(spec.text, model=model, **options)
