"""Speculative decoding behind the ``LanguageModel`` seam: :class:`SpeculativeLM` is the target's
:class:`TorchLM` (same scores, same text) whose generation runs
:func:`fissure.decode.speculative.speculative_generate` with a draft model.

A draft is a model spec that :func:`fissure.load` runs natively with the target's tokenizer, a
loaded :class:`TorchLM`, ``layers:N``: the target's first N layers (see
:func:`~fissure.decode.speculative.first_layers`), or ``dtype:D`` (``bf16``, ``int8``, ``int4``): a copy
of the target in a faster dtype, which agrees with it on most tokens (no training).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from ..decode import Decoding, GenerationOutput
from ..decode.speculative import DraftError, first_layers, speculative_generate
from .base import BackendError, LanguageModel
from .torch_lm import TorchLM

SELF_DRAFT = re.compile(r"layers:(\d+)")
DTYPE_DRAFT = re.compile(r"dtype:(\w+)")
PROBE_TEXT = "The quick brown fox, 12 + 7 = 19; élan vital!"


class SpeculativeLM(TorchLM):
    """``target`` decoding speculatively with ``draft`` (a module of the target's vocabulary)
    proposing ``gamma`` tokens per round. :attr:`drafted` and :attr:`accepted` add up over every
    ``generate`` call; :attr:`acceptance_rate` is their ratio."""

    def __init__(self, target: TorchLM, draft: torch.nn.Module, *, draft_name: str, gamma: int = 4,
                 adaptive: bool = False):
        super().__init__(target.model, target.tokenizer, name=target.capabilities.name,
                         backend=target.capabilities.backend, batch_size=target.batch_size,
                         chat_template=target.chat_template, prepend_start=target.prepend_start)
        self.draft = draft.eval()
        self.draft_name, self.gamma, self.adaptive = draft_name, gamma, adaptive
        self.drafted = self.accepted = 0

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None

    def decode_ids(self, ids: list[list[int]], decoding: Decoding, eos: tuple[int, ...],
                   on_token: Callable[[int, int], None] | None = None) -> GenerationOutput:
        result = speculative_generate(self.model, self.draft, ids, decoding, gamma=self.gamma, adaptive=self.adaptive,
                                      eos_token_id=eos, pad_token_id=eos[0] if eos else 0,
                                      decode_fn=self.tokenizer.decode,
                                      on_token=on_token)
        self.drafted += result.drafted
        self.accepted += result.accepted
        return result


def speculative(target: LanguageModel, draft: str | TorchLM, *, gamma: int = 4, adaptive: bool = False,
                **load_options) -> SpeculativeLM:
    """``target`` with a draft: ``"layers:N"``, a model spec (loaded with ``load_options``) or a
    :class:`TorchLM`. A draft with another tokenizer is refused, in one line."""
    if not isinstance(target, TorchLM):
        raise BackendError(f"speculative decoding needs a natively run target, not a {target.capabilities.backend} "
                           f"model ({target.capabilities.name})")
    if isinstance(draft, str) and (m := SELF_DRAFT.fullmatch(draft.strip())):
        return SpeculativeLM(target, first_layers(target.model, int(m.group(1))), draft_name=draft,
                             gamma=gamma, adaptive=adaptive)
    if isinstance(draft, str) and (m := DTYPE_DRAFT.fullmatch(draft.strip())):
        return SpeculativeLM(target, quantized_copy(target.model, m.group(1)), draft_name=draft,
                             gamma=gamma, adaptive=adaptive)
    if isinstance(draft, str):
        from .loading import load

        name, draft = draft, load(draft, **load_options)
    else:
        name = draft.capabilities.name
    if not isinstance(draft, TorchLM):
        raise BackendError(f"draft {name} runs on the {draft.capabilities.backend} backend; "
                           "a draft must run natively (a fissure checkpoint, an HF Llama, a GGUF, layers:N)")
    check_same_vocabulary(target, draft, name)
    return SpeculativeLM(target, draft.model, draft_name=name, gamma=gamma, adaptive=adaptive)


def quantized_copy(model: torch.nn.Module, dtype: str) -> torch.nn.Module:
    """A ``dtype:D`` self-draft: a copy of ``model`` in bf16, int8 or int4 (the target stays as it is)."""
    import copy

    from ..models.quantize import DTYPES, Int4Linear, Int8Linear, set_dtype

    if dtype not in DTYPES or dtype == "fp32":
        raise DraftError(f"draft dtype:{dtype}: the dtype must be one of {', '.join(d for d in DTYPES if d != 'fp32')}")
    if any(isinstance(m, (Int8Linear, Int4Linear)) for m in model.modules()):
        raise DraftError(f"draft dtype:{dtype}: the target is already quantised; a dtype draft copies an fp32 or bf16 "
                         "target (leave out --dtype int8/int4)")
    return set_dtype(copy.deepcopy(model), dtype)


def check_same_vocabulary(target: TorchLM, draft: TorchLM, name: str) -> None:
    """Refuse a draft whose tokenizer (or output width) differs from the target's: its token ids
    would mean other strings, and its distribution q could not be compared with p."""
    t_tok, d_tok = target.tokenizer, draft.tokenizer
    t_ids, d_ids = t_tok.encode(PROBE_TEXT), d_tok.encode(PROBE_TEXT)
    t_vocab, d_vocab = t_tok.vocab_size, d_tok.vocab_size
    if t_vocab != d_vocab or t_ids != d_ids or t_tok.eos_id != d_tok.eos_id:
        raise DraftError(f"draft {name} has another tokenizer than target {target.capabilities.name}: "
                         f"vocab {d_vocab} vs {t_vocab}, eos {d_tok.eos_id} vs {t_tok.eos_id}, "
                         f"{PROBE_TEXT[:15]!r} -> {d_ids[:6]} vs {t_ids[:6]}")
    t_out, d_out = target.model.config.vocab_size, draft.model.config.vocab_size
    if t_out != d_out:
        raise DraftError(f"draft {name} scores {d_out} tokens but target {target.capabilities.name} scores {t_out}: "
                         "the same tokenizer needs the same output width")
