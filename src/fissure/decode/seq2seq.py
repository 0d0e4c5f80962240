"""Decoding for encoder-decoder models through the causal decoders of :mod:`.search`.

:class:`BoundDecoder` is a seq2seq model whose sources are already encoded: every target starts
with the decoder start token (one-token "prompts", never padded), and its KV cache also carries
the cross-attention keys/values of the sources, once per source (the beams of a source share
them) and following the rows that leave the batch. So greedy, sampling and HF's vectorised beam
search in :func:`.search.generate` serve translation unchanged (no second beam search to keep in
step with HF's).

Two of HF's Marian generation settings act on the logits here: ``forced_eos_token_id`` (at the
last allowed position only EOS remains, exactly as HF's processor) and ``suppress_ids`` (HF's
``bad_words_ids`` of single tokens; Marian forbids its pad token). Suppressing before the log-softmax
renormalises beam scores where HF does not; greedy and sampling are unaffected.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import GenerationError
from .config import Decoding
from .search import GenerationOutput, generate


class BoundDecoder:
    """The decoder of ``model`` over the encoded ``src_ids`` (``B`` sources), with the causal-model
    protocol of :func:`.search.generate`: ``__call__``, ``new_kv_cache``, ``max_positions``, ``parameters``."""

    def __init__(self, model, src_ids: torch.Tensor, src_mask: torch.Tensor | None,
                 forced_eos_token_id: int | None = None, suppress_ids: Sequence[int] = ()):
        self.model = model
        self.batch = src_ids.shape[0]
        self.memory_kv = model.memory_kv(model.encode(src_ids, src_mask))
        self.src_mask = None if src_mask is None or bool(src_mask.all()) else src_mask
        self.forced_eos, self.suppress = forced_eos_token_id, list(suppress_ids)

    @property
    def max_positions(self) -> int:
        return self.model.max_positions

    def parameters(self):
        return self.model.parameters()

    def new_kv_cache(self, batch: int, max_len: int):
        """A cache for ``batch`` rows: ``batch // B`` rows in a row per source (beams), sharing its memory."""
        return self.model.new_kv_cache(batch, max_len, memory_kv=self.memory_kv, src_mask=self.src_mask)

    def __call__(self, ids: torch.Tensor, attention_mask=None, position_ids=None, kv_cache=None,
                 logits_to_keep: int = 0) -> torch.Tensor:
        logits = self.model.decode(ids, kv_cache.memory_kv, kv_cache.memory_mask, kv_cache)  # one position per step
        if self.suppress:
            logits[:, -1, self.suppress] = float("-inf")
        if self.forced_eos is not None and kv_cache.length == kv_cache.max_len - 1:
            forced = torch.full_like(logits[:, -1], float("-inf"))
            forced[:, self.forced_eos] = 0.0
            logits[:, -1] = forced
        return logits


def pad_sources(sources: Sequence[Sequence[int]], pad_token_id: int,
                device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(B, S)`` ids and their 1/0 mask (Marian pads sources on the right)."""
    if not sources or any(len(s) == 0 for s in sources):
        raise GenerationError("every source needs at least one token (end it with EOS)")
    width = max(len(s) for s in sources)
    ids = torch.full((len(sources), width), pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros(len(sources), width, dtype=torch.long, device=device)
    for i, s in enumerate(sources):
        ids[i, :len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask


@torch.inference_mode()
def generate_seq2seq(model, sources: Sequence[Sequence[int]], decoding: Decoding | None = None, *,
                     forced_eos_token_id: int | None = None, suppress_ids: Sequence[int] = ()) -> GenerationOutput:
    """Target token ids for each source (a list of ids ending with EOS): ``decoding`` as HF's
    ``generate`` with ``max_length = max_new_tokens + 1`` (HF counts the decoder start token).
    Outputs exclude the start token and end with EOS when the model produced it."""
    decoding = decoding or Decoding()
    c = model.config
    if not sources:
        return GenerationOutput([], [])
    too_long = max(len(s) for s in sources)
    if too_long > c.block_size:
        raise GenerationError(f"a source of {too_long} tokens exceeds the model's block_size {c.block_size}")
    src_ids, src_mask = pad_sources(sources, c.pad_token_id, next(model.parameters()).device)
    bound = BoundDecoder(model, src_ids, src_mask, forced_eos_token_id, suppress_ids)
    return generate(bound, [[c.decoder_start_token_id]] * len(sources), decoding,
                    eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id)
