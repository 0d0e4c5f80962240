"""The seam every diagnosis goes through: one ``LanguageModel`` protocol over every kind of model.

Modelled on lm-evaluation-harness's three-method LM API:

- ``loglikelihood(pairs)``: log P(continuation | context) for each (context, continuation),
  and whether the continuation is the greedy one;
- ``loglikelihood_rolling(texts, window, stride)``: whole-text log-likelihood over explicit
  windows, with token and UTF-8 byte counts (so perplexity and bits per byte follow);
- ``generate(prompts, decoding)``: batched generation; a prompt is a string, or a chat
  (a list of ``{"role", "content"}`` messages) rendered with the model's own chat template.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Union

from ..decode.config import Decoding
from ..errors import UserError

Message = dict[str, str]
Prompt = Union[str, list[Message]]


class BackendError(UserError):
    """A model that cannot be loaded or reached, or a request it cannot serve."""


@dataclass(frozen=True)
class Capabilities:
    name: str  # what the model is (spec, path or URL)
    backend: str  # "native" | "transformers" | "llama" | "http"
    has_logprobs: bool = True  # loglikelihood and loglikelihood_rolling work
    has_chat_template: bool = False
    max_context: int | None = None  # tokens


@dataclass(frozen=True)
class LoglikelihoodResult:
    logprob: float  # natural log
    is_greedy: bool  # every continuation token is the argmax
    tokens: int  # continuation tokens scored


@dataclass(frozen=True)
class RollingLoglikelihood:
    """A text's summed log-likelihood with the counts that turn it into per-token and per-byte rates."""

    loglikelihood: float  # natural log, summed over scored tokens
    tokens: int  # tokens scored
    bytes: int  # UTF-8 bytes of the text
    window: int
    stride: int
    extra: dict = field(default_factory=dict)

    @property
    def cross_entropy(self) -> float:
        """Nats per scored token."""
        return -self.loglikelihood / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.cross_entropy)

    @property
    def bits_per_byte(self) -> float:
        return -self.loglikelihood / (self.bytes * math.log(2))


class LanguageModel(ABC):
    """Every backend implements these; diagnosis code uses nothing else.

    ``streams_results``: ``generate`` also takes ``on_result(index, text)``, called in the caller's
    thread as each completion arrives, and keeps the completions already handed over when a later
    one fails (a served model, where each request can fail on its own). Callers save per result
    then; for other backends a ``generate`` call is the unit that succeeds or fails.
    """

    capabilities: Capabilities
    streams_results: bool = False

    @abstractmethod
    def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[LoglikelihoodResult]: ...

    @abstractmethod
    def loglikelihood_rolling(self, texts: list[str], window: int | None = None,
                              stride: int | None = None) -> list[RollingLoglikelihood]: ...

    @abstractmethod
    def generate(self, prompts: list[Prompt], decoding: Decoding | None = None) -> list[str]: ...

    def render(self, prompt: Prompt) -> str:
        """A prompt as the text the model sees (chats through the chat template)."""
        if isinstance(prompt, str):
            return prompt
        raise BackendError(f"{self.capabilities.name} has no chat template; give plain-text prompts")

    def close(self) -> None:
        """Release resources (connections, threads)."""
