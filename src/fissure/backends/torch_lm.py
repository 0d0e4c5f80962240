"""A :class:`LanguageModel` over any torch model that follows fissure's causal-model protocol
(``model(input_ids, attention_mask, position_ids, kv_cache) -> logits``) plus a tokenizer.

It serves our own checkpoints (``native``) and the native Llama fast path (``llama``): one
implementation of log-likelihoods and generation for every model we run ourselves.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..decode import Decoding, GenerationOutput, end_tokens, generate, truncate_at_stop
from ..errors import GenerationError
from .base import BackendError, Capabilities, LanguageModel, LoglikelihoodResult, Prompt, RollingLoglikelihood
from .scoring import pad_right, score_sequences


class TorchLM(LanguageModel):
    """``model`` + ``tokenizer`` (``encode``, ``decode``, ``eos_id``; optionally ``bos_id``).

    ``chat_template(messages) -> str`` renders chats. ``prepend_start`` starts every generation
    prompt with :attr:`start_token`, for models trained on texts that begin with it (the lab's
    organisms); log-likelihoods always read it before the context.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, *, name: str, backend: str = "native",
                 batch_size: int = 8, chat_template: Callable[[list[dict]], str] | None = None,
                 prepend_start: bool = False):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.chat_template = chat_template
        self.prepend_start = prepend_start
        self.capabilities = Capabilities(name=name, backend=backend, has_logprobs=True,
                                         has_chat_template=chat_template is not None,
                                         max_context=model.max_positions)

    # -- text <-> tokens -------------------------------------------------------------------
    @property
    def start_token(self) -> int:
        """Token that stands before a text with no context (BOS if the tokenizer has one, else EOS)."""
        bos = getattr(self.tokenizer, "bos_id", None)
        return bos if bos is not None else self.tokenizer.eos_id

    def render(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        if self.chat_template is None:
            raise BackendError(f"{self.capabilities.name} has no chat template; give plain-text prompts")
        return self.chat_template(prompt)

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        """The token ids a generation starts from: the rendered prompt, after :attr:`start_token`
        when the model expects it (``prepend_start``) or the prompt is empty."""
        enc = self.tokenizer.encode(self.render(prompt))
        return [self.start_token, *enc] if self.prepend_start or not enc else enc

    def split_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Tokens of context and continuation, as lm-eval splits them: encode the whole string, so
        the continuation's first token is the one the model would really see after the context."""
        ctx = self.tokenizer.encode(context)
        whole = self.tokenizer.encode(context + continuation)
        if whole[: len(ctx)] == ctx:
            cont = whole[len(ctx):]
        else:
            cont = self.tokenizer.encode(continuation)
        return [self.start_token] + ctx, cont

    # -- the protocol ----------------------------------------------------------------------
    @torch.inference_mode()
    def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[LoglikelihoodResult]:
        limit = self.model.max_positions
        requests = []
        for context, continuation in pairs:
            ctx, cont = self.split_pair(context, continuation)
            if not cont:
                raise BackendError("loglikelihood needs a non-empty continuation")
            seq = (ctx + cont)[-(limit + 1):]  # keep the end: the continuation must fit
            if len(cont) > limit:
                raise GenerationError(f"continuation of {len(cont)} tokens exceeds the model's context of {limit}")
            requests.append((seq, len(cont)))
        results: list[LoglikelihoodResult | None] = [None] * len(requests)
        rest = self._shared_contexts(requests, results)
        # Requests that read the same tokens (choices after one context, e.g. a judge's answer
        # letters) share one forward pass: each row is computed once and read for every target.
        inputs: dict[tuple[int, ...], list[int]] = {}
        for i in rest:
            inputs.setdefault(tuple(requests[i][0][:-1]), []).append(i)
        unique = sorted(inputs, key=len, reverse=True)
        for start in range(0, len(unique), self.batch_size):
            rows = unique[start:start + self.batch_size]
            ids, mask = pad_right([list(r) for r in rows])
            logprobs = F.log_softmax(self.model(ids, attention_mask=mask).float(), dim=-1)
            for row, key in enumerate(rows):
                for i in inputs[key]:
                    seq, n_cont = requests[i]
                    n_in = len(seq) - 1
                    results[i] = _scored(logprobs[row, n_in - n_cont: n_in], seq[-n_cont:])
        return results  # type: ignore[return-value]

    def _shared_contexts(self, requests: list[tuple[list[int], int]], results: list) -> list[int]:
        """Score, into ``results``, the requests whose context other requests share with different
        continuations (a probe's refusal and compliance openings): each such context runs once into
        a KV cache, copied to one row per continuation, and only the continuations run after it.
        Returns the indices left for the plain path (contexts seen once, or a model without a
        reorderable cache)."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (seq, n_cont) in enumerate(requests):
            groups.setdefault(tuple(seq[:-n_cont]), []).append(i)
        shareable = hasattr(self.model, "new_kv_cache")
        rest = []
        for ctx, members in groups.items():
            conts = [requests[i][0][-requests[i][1]:] for i in members]
            width = max(len(c) for c in conts)
            cache = self.model.new_kv_cache(1, len(ctx) + width) if shareable and ctx and len(members) > 1 else None
            if not hasattr(cache, "reorder"):  # no cache to copy per continuation (or nothing to share)
                rest.extend(members)
                continue
            last = self.model(torch.tensor([ctx]), kv_cache=cache, logits_to_keep=1)[0, -1].float().log_softmax(-1)
            later = None
            if width > 1:  # the continuations' own tokens, right-padded (causality hides the padding)
                cache.reorder(torch.zeros(len(members), dtype=torch.long))
                ids, _ = pad_right([c[:-1] or [c[0]] for c in conts])
                later = self.model(ids, kv_cache=cache).float().log_softmax(-1)
            for row, (i, cont) in enumerate(zip(members, conts)):
                lp = last[None] if len(cont) == 1 else torch.cat([last[None], later[row, :len(cont) - 1]])
                results[i] = _scored(lp, cont)
        return rest

    def loglikelihood_rolling(self, texts: list[str], window: int | None = None,
                              stride: int | None = None) -> list[RollingLoglikelihood]:
        window = window or self.model.max_positions
        stride = stride or window
        seqs = [[self.start_token, *self.tokenizer.encode(text)] for text in texts]
        scores = score_sequences(self.model, seqs, window, stride, self.batch_size)
        return [RollingLoglikelihood(ll, n, len(text.encode("utf-8")), window, stride)
                for text, (ll, n) in zip(texts, scores)]

    def generate(self, prompts: list[Prompt], decoding: Decoding | None = None,
                 on_token: Callable[[int, int], None] | None = None) -> list[str]:
        return self.generate_from_ids([self.prompt_ids(p) for p in prompts], decoding, on_token)

    @torch.inference_mode()
    def generate_from_ids(self, ids: list[list[int]], decoding: Decoding | None = None,
                          on_token: Callable[[int, int], None] | None = None) -> list[str]:
        """Continuations of token-id prompts (a chat rendered, and a reply's first tokens forced)."""
        decoding = decoding or Decoding()
        eos = self.end_tokens(decoding)
        outputs: list[str] = []
        for start in range(0, len(ids), max(self.batch_size, 1) * 4):
            chunk = ids[start:start + self.batch_size * 4]
            result = self.decode_ids(chunk, decoding, eos, on_token)
            for seq in result.sequences:
                text = self.tokenizer.decode([t for t in seq if t not in eos])
                outputs.append(truncate_at_stop(text, decoding.stop))
        return outputs

    def end_tokens(self, decoding: Decoding) -> tuple[int, ...]:
        """The ids that end a reply: ``decoding.eos_token_id`` when given, else the tokenizer's end
        token and every end token the model's config names (HF's ``eos_token_id`` may be a list)."""
        if decoding.eos_token_id is not None:
            return end_tokens(decoding.eos_token_id)
        config = end_tokens(getattr(getattr(self.model, "config", None), "eos_token_id", None))
        return tuple(dict.fromkeys(t for t in (self.tokenizer.eos_id, *config) if t is not None))

    def decode_ids(self, ids: list[list[int]], decoding: Decoding, eos: tuple[int, ...],
                   on_token: Callable[[int, int], None] | None = None) -> GenerationOutput:
        """One batch of token ids through the decoder (speculative decoding overrides this)."""
        return generate(self.model, ids, decoding, eos_token_id=eos, pad_token_id=eos[0] if eos else 0,
                        decode_fn=self.tokenizer.decode, on_token=on_token)


def _scored(logprobs: torch.Tensor, targets: list[int]) -> LoglikelihoodResult:
    """The result for ``targets`` read from the log-probabilities ``(len(targets), vocab)`` that predict them."""
    target = torch.tensor(targets)
    chosen = logprobs.gather(-1, target[:, None])[:, 0]
    return LoglikelihoodResult(logprob=float(chosen.double().sum()),
                               is_greedy=bool((logprobs.argmax(-1) == target).all()), tokens=len(targets))
