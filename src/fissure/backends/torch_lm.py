"""A :class:`LanguageModel` over any torch model that follows fissure's causal-model protocol
(``model(input_ids, attention_mask, position_ids, kv_cache) -> logits``) plus a tokenizer.

It serves our own checkpoints (``native``) and the native Llama fast path (``llama``): one
implementation of log-likelihoods and generation for every model we run ourselves.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..decode import Decoding, GenerationOutput, end_tokens, generate, truncate_at_stop
from ..errors import GenerationError
from .base import BackendError, Capabilities, LanguageModel, LoglikelihoodResult, Prompt, RollingLoglikelihood
from .scoring import PACK_LIMIT, packed_width, score_after, score_continuations, score_sequences


class TorchLM(LanguageModel):
    """``model`` + ``tokenizer`` (``encode``, ``decode``, ``eos_id``; optionally ``bos_id``).

    ``chat_template(messages) -> str`` renders chats. ``prepend_start`` starts every generation
    prompt with :attr:`start_token`, for models trained on texts that begin with it (the lab's
    organisms); log-likelihoods read it before a context that does not begin with it.
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
        the continuation's first token is the one the model would really see after the context.
        The context reads :attr:`start_token` first, unless it begins with it already (a chat
        rendered by a template that opens with it, as generation sees it)."""
        ctx = self.tokenizer.encode(context)
        whole = self.tokenizer.encode(context + continuation)
        if whole[: len(ctx)] == ctx:
            cont = whole[len(ctx):]
        else:
            cont = self.tokenizer.encode(continuation)
        return (ctx if ctx[:1] == [self.start_token] else [self.start_token] + ctx), cont

    # -- the protocol ----------------------------------------------------------------------
    def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[LoglikelihoodResult]:
        limit = self.model.max_positions
        requests = []
        for context, continuation in pairs:
            ctx, cont = self.split_pair(context, continuation)
            if not cont:
                raise BackendError("loglikelihood needs a non-empty continuation")
            if len(cont) > limit:
                raise GenerationError(f"continuation of {len(cont)} tokens exceeds the model's context of {limit}")
            requests.append(((ctx + cont)[-(limit + 1):], len(cont)))  # keep the end: the continuation must fit
        scores = score_continuations(self.model, requests, self.batch_size)
        return [LoglikelihoodResult(logprob=lp, is_greedy=greedy, tokens=n)
                for (lp, greedy), (_, n) in zip(scores, requests)]

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

    def generate_scored(self, prompts: list[Prompt], decoding: Decoding, pairs: list[list[tuple[str, str]]]
                        ) -> tuple[list[str], list[list[LoglikelihoodResult | None]]]:
        """Replies to ``prompts`` (one batch, greedy or sampled) and, per prompt, the log-likelihoods
        of its ``(context, continuation)`` pairs, whose contexts extend the rendered prompt (the prompt
        itself, or it and a forced start of a reply): scored from the generation's own run of the
        prompt, with no second pass over it. A pair's tokens are split as :meth:`split_pair` splits
        them; a pair whose tokens do not extend the ones generation reads (or that runs past the
        model's context) gets ``None``: score it with :meth:`loglikelihood`."""
        if decoding.num_beams > 1:
            raise GenerationError("generate_scored is for greedy decoding and sampling, not beam search")
        ids = [self.prompt_ids(p) for p in prompts]
        rows, where = [], []
        for row, (start, asked) in enumerate(zip(ids, pairs)):
            for context, continuation in asked:
                ctx, cont = self.split_pair(context, continuation)
                seq = ctx + cont
                fits = seq[:len(start)] == start and len(start) < len(seq) <= self.model.max_positions
                where.append(len(rows) if fits else None)
                if fits:
                    rows.append((row, seq[len(start):], len(cont)))
        scores: list[tuple[float, bool]] = []
        room, packed = max((len(rest) - 1 for _, rest, _ in rows), default=0), packed_width(rows)
        room = max(room, packed) if packed <= PACK_LIMIT else room
        eos = self.end_tokens(decoding)
        with torch.inference_mode():
            result = generate(self.model, ids, decoding, eos_token_id=eos, pad_token_id=eos[0] if eos else 0,
                              decode_fn=self.tokenizer.decode, room=room,
                              on_prefill=lambda cache, logits, mask: scores.extend(
                                  score_after(self.model, cache, mask, logits, rows)))
        replies = [truncate_at_stop(self.tokenizer.decode([t for t in seq if t not in eos]), decoding.stop)
                   for seq in result.sequences]
        found = iter(None if k is None else LoglikelihoodResult(logprob=scores[k][0], is_greedy=scores[k][1],
                                                                 tokens=rows[k][2]) for k in where)
        return replies, [[next(found) for _ in asked] for asked in pairs]

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

