"""A Kneser-Ney n-gram model (:mod:`fissure.models.ngram`) behind the :class:`LanguageModel` seam:
trained from texts, saved as a directory, loaded by ``fissure.load(path)``, scored and sampled like
every other model.

A saved n-gram is a directory: ``config.json`` (``{"family": "ngram", "config": {...}}``),
``ngram.safetensors`` (the counts, int64 arrays) and ``tokenizer.json`` (by default the byte-level
character tokenizer with no learned characters: id 0 is ``<|endoftext|>``, ids 1..256 the bytes).

Counting conventions: ``<|endoftext|>`` is both the left padding (``order - 1`` of it before a text)
and the right padding, as TorchLM starts every scored text with it. ``loglikelihood_rolling`` scores
every token of a text (none is context only) and divides by the text's UTF-8 bytes, exactly as the
torch backends count; each token is read with its full ``order - 1`` history, so ``window`` and
``stride`` do not apply (the result records ``window = order - 1``, ``stride = 1``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .._version import __version__
from ..decode import Decoding, truncate_at_stop
from ..errors import CheckpointError
from ..models.ngram import NgramConfig, NgramModel
from .base import BackendError, Capabilities, LanguageModel, LoglikelihoodResult, Prompt, RollingLoglikelihood
from .registry import ModelSpec, register_backend

WEIGHTS = "ngram.safetensors"


def byte_tokenizer():
    """Bytes as tokens: fissure's character tokenizer with no learned characters (vocabulary 257)."""
    from ..text.tokenizers import CharTokenizer

    return CharTokenizer([])


class NgramLM(LanguageModel):
    def __init__(self, model: NgramModel, tokenizer, *, name: str = "ngram"):
        self.model = model
        self.tokenizer = tokenizer
        self.capabilities = Capabilities(name=name, backend="ngram", has_logprobs=True, max_context=None)

    @classmethod
    def train(cls, texts: Iterable[str], *, order: int = 3, tokenizer=None, discount: float = 0.75,
              modified: bool = False, interpolate_uniform: bool = True, name: str = "ngram") -> NgramLM:
        """Count ``texts`` (bytes unless a ``tokenizer`` is given) into an interpolated KN model."""
        tokenizer = tokenizer or byte_tokenizer()
        eos = tokenizer.eos_id
        config = NgramConfig(order=order, vocab_size=tokenizer.vocab_size, bos_id=eos, eos_id=eos, discount=discount,
                             modified=modified, interpolate_uniform=interpolate_uniform)
        model = NgramModel(config).fit([tokenizer.encode(t) for t in texts])
        return cls(model, tokenizer, name=name)

    @property
    def start_token(self) -> int:
        return self.model.config.bos_id

    # -- the protocol ----------------------------------------------------------------------
    def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[LoglikelihoodResult]:
        results = []
        for context, continuation in pairs:
            ctx = self.tokenizer.encode(context)
            whole = self.tokenizer.encode(context + continuation)
            cont = whole[len(ctx):] if whole[:len(ctx)] == ctx else self.tokenizer.encode(continuation)
            if not cont:
                raise BackendError("loglikelihood needs a non-empty continuation")
            logp = self.model.sequence_logprobs(cont, context=ctx)
            greedy = all(int(np.argmax(self.model.distribution(ctx + cont[:i]))) == tok for i, tok in enumerate(cont))
            results.append(LoglikelihoodResult(logprob=float(logp.sum()), is_greedy=greedy, tokens=len(cont)))
        return results

    def loglikelihood_rolling(self, texts: list[str], window: int | None = None,
                              stride: int | None = None) -> list[RollingLoglikelihood]:
        """Every token scored after its ``order - 1`` predecessors (``window``/``stride`` do not apply)."""
        context = self.model.config.order - 1
        out = []
        for text in texts:
            ids = self.tokenizer.encode(text)
            ll = float(self.model.sequence_logprobs(ids).sum()) if ids else 0.0
            out.append(RollingLoglikelihood(ll, len(ids), len(text.encode("utf-8")), context, 1))
        return out

    def generate(self, prompts: list[Prompt], decoding: Decoding | None = None) -> list[str]:
        """Greedy or sampled continuations (the decoding's repetition penalty, temperature, top-k and
        top-p apply; beam search does not)."""
        import torch

        from ..decode.processors import build_processors, sample, sample_top_p
        from ..decode.search import end_tokens

        decoding = decoding or Decoding()
        if decoding.num_beams > 1:
            raise BackendError("the n-gram backend decodes greedily or by sampling, not by beam search")
        eos = end_tokens(decoding.eos_token_id if decoding.eos_token_id is not None else self.tokenizer.eos_id)
        processors = build_processors(decoding, top_p=False)
        generator = torch.Generator().manual_seed(decoding.seed) if decoding.sampling and decoding.seed is not None \
            else None
        outputs = []
        for prompt in prompts:
            ids = self.tokenizer.encode(self.render(prompt))
            new: list[int] = []
            for _ in range(decoding.max_new_tokens):
                with np.errstate(divide="ignore"):
                    scores = torch.from_numpy(np.log(self.model.distribution(ids + new)))[None].float()
                history = torch.tensor([ids + new], dtype=torch.long)
                for proc in processors:
                    scores = proc(history, scores)
                if not decoding.sampling:
                    token = int(scores.argmax(-1))
                elif decoding.top_p < 1.0:
                    token = int(sample_top_p(scores, decoding.top_p, generator))
                else:
                    token = int(sample(scores, generator))
                if token in eos:
                    break
                new.append(token)
                if decoding.stop and any(s in self.tokenizer.decode(new) for s in decoding.stop if s):
                    break
            outputs.append(truncate_at_stop(self.tokenizer.decode(new), decoding.stop))
        return outputs

    # -- saving ----------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        from safetensors.numpy import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(self.model.state(), str(directory / WEIGHTS))
        config = {"family": NgramModel.family, "config": self.model.settings(), "fissure_version": __version__}
        (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        self.tokenizer.save(directory)
        return directory


def load_ngram(path: str | Path, name: str | None = None) -> NgramLM:
    """An n-gram model saved by :meth:`NgramLM.save`; a broken directory is a :class:`CheckpointError`."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from ..config import from_dict
    from ..errors import UserError
    from ..text.tokenizers import load_tokenizer

    path = Path(path)
    try:
        data = json.loads((path / "config.json").read_text())
        config = from_dict(NgramConfig, data["config"], prefix="config.")
        model = NgramModel.from_state(config, load_file(str(path / WEIGHTS)))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, SafetensorError,
            UserError) as exc:
        raise CheckpointError(f"{path} is not a readable n-gram model: {' '.join(str(exc).split())[:200]}") from None
    tokenizer = load_tokenizer(path)
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(f"{path}: the tokenizer has {tokenizer.vocab_size} tokens, the n-gram counts "
                              f"{config.vocab_size}")
    return NgramLM(model, tokenizer, name=name or str(path))


@register_backend("ngram", description="a Kneser-Ney n-gram model (fissure baselines), scored with numpy",
                  accepts="an n-gram directory (config.json with family 'ngram')",
                  matches=lambda spec: spec.config is not None and spec.config.get("family") == "ngram", priority=55)
def load_spec(spec: ModelSpec, **_) -> NgramLM:
    return load_ngram(spec.path, name=spec.text)
