"""``fissure.pipeline(task, model=...)``: HF ``pipeline(...)``'s call signatures and output shapes
over fissure's models, so code written against transformers' pipelines runs here unchanged.

    >>> import fissure
    >>> generate = fissure.pipeline("text-generation", model="smollm2")
    >>> generate("Once upon a time", max_new_tokens=20)
    [{'generated_text': 'Once upon a time ...'}]

Tasks (HF's names; ``sentiment-analysis`` is an alias of ``text-classification`` as in HF):

- ``text-generation``: any model spec ``fissure.load`` accepts (or a loaded ``LanguageModel``);
  a string gives ``[{"generated_text": ...}]``, a chat (list of messages) gives the chat with the
  new assistant message appended, a list of either gives one such list per input.
  ``return_full_text`` (default True) puts the prompt in front, as HF does. Decoding takes
  :class:`~fissure.decode.Decoding`'s (HF ``generate``'s) keyword arguments; the default is greedy.
- ``text-classification``: a classifier checkpoint written by ``fissure tune`` on labelled data;
  ``[{"label", "score"}]`` per text, or with ``top_k`` every label sorted by score (HF's legacy and
  ``top_k`` shapes, both).

- ``fill-mask``: a BERT (a fissure checkpoint trained with ``task = "mlm"``, or an HF BERT
  directory); ``top_k`` (default 5) ``{score, token, token_str, sequence}`` per ``[MASK]``: one list
  for one mask, a list per mask for several, and one such result per text for a list of texts.

- ``translation`` (and HF's ``translation_xx_to_yy`` names): a fissure seq2seq checkpoint or an HF
  Marian directory; ``[{"translation_text": ...}]``, one per text; ``max_length`` as HF counts it
  (the decoder start token included) or any ``Decoding`` argument (``num_beams``...).

Every pipeline also takes ``batch_size``. Scores are softmax probabilities.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ConfigError

ALIASES = {"sentiment-analysis": "text-classification"}


class Pipeline:
    task: str

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task={self.task!r}, model={self.name!r})"


class TextGeneration(Pipeline):
    task = "text-generation"

    def __init__(self, model, batch_size: int = 8):
        from .backends import LanguageModel, load

        self.lm = model if isinstance(model, LanguageModel) else load(model, batch_size=batch_size)
        self.name = self.lm.capabilities.name

    def __call__(self, inputs, *, return_full_text: bool = True, num_return_sequences: int = 1, **decoding):
        from .decode import Decoding

        single = isinstance(inputs, str) or _is_chat(inputs)
        prompts = [inputs] if single else list(inputs)
        if not prompts or not all(isinstance(p, str) or _is_chat(p) for p in prompts):
            raise ConfigError("text-generation takes a string, a chat (a list of {'role', 'content'} messages) "
                              "or a list of either")
        settings = Decoding(**decoding)
        if num_return_sequences < 1:
            raise ConfigError(f"num_return_sequences must be at least 1, not {num_return_sequences}")
        if num_return_sequences > 1 and not settings.sampling:
            raise ConfigError("num_return_sequences > 1 needs sampling (do_sample=True): greedy decoding returns "
                              "the same text every time")
        replies = self.lm.generate([p for p in prompts for _ in range(num_return_sequences)], settings)
        out = []
        for i, prompt in enumerate(prompts):
            out.append([{"generated_text": _full(prompt, reply, return_full_text)}
                        for reply in replies[i * num_return_sequences:(i + 1) * num_return_sequences]])
        return out[0] if single else out


def _is_chat(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m and "content" in m
                                                           for m in value)


def _full(prompt, reply: str, return_full_text: bool):
    if isinstance(prompt, str):
        return prompt + reply if return_full_text else reply
    message = {"role": "assistant", "content": reply}
    return [*prompt, message] if return_full_text else reply


class TextClassification(Pipeline):
    task = "text-classification"

    def __init__(self, model, batch_size: int = 8):
        from .tune.classifier import load_classifier

        self.classifier = load_classifier(model)
        self.name, self.batch_size = str(model), batch_size

    def __call__(self, inputs, **kwargs):
        unknown = set(kwargs) - {"top_k"}
        if unknown:
            raise ConfigError(f"text-classification takes top_k, not {', '.join(sorted(unknown))}")
        single = isinstance(inputs, str)
        texts = [inputs] if single else list(inputs)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ConfigError("text-classification takes a string or a list of strings")
        labels = self.classifier.labels
        probs = self.classifier.probabilities(texts, self.batch_size)
        if "top_k" not in kwargs:  # HF's legacy shape: the best label per text, a list even for one text
            return [{"label": labels[int(p.argmax())], "score": float(p.max())} for p in probs]
        ranked = [sorted(({"label": label, "score": float(s)} for label, s in zip(labels, p)),
                         key=lambda d: d["score"], reverse=True)[:kwargs["top_k"]] for p in probs]
        return ranked[0] if single else ranked


class FillMask(Pipeline):
    task = "fill-mask"

    def __init__(self, model, batch_size: int = 8):
        from .backends.masked_lm import load_masked_lm

        self.model, self.tokenizer = load_masked_lm(model)
        self.name = str(model)

    def __call__(self, inputs, top_k: int = 5):
        from .decode.fill_mask import fill_mask

        if isinstance(inputs, str):
            return fill_mask(self.model, self.tokenizer, inputs, top_k)
        if not inputs or not all(isinstance(t, str) for t in inputs):
            raise ConfigError("fill-mask takes a string or a list of strings")
        return [fill_mask(self.model, self.tokenizer, text, top_k) for text in inputs]


class Translation(Pipeline):
    task = "translation"

    def __init__(self, model, batch_size: int = 8):
        from .backends.translation import load_translator

        self.translator = load_translator(model)
        self.name = str(model)

    def __call__(self, inputs, *, max_length: int | None = None, **decoding):
        from .decode import Decoding

        single = isinstance(inputs, str)
        texts = [inputs] if single else list(inputs)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ConfigError("translation takes a string or a list of strings")
        if max_length is not None:  # HF counts the decoder start token in max_length
            decoding.setdefault("max_new_tokens", max_length - 1)
        translations = self.translator.translate(texts, Decoding(**decoding))
        return [{"translation_text": t} for t in translations]


TASKS: dict[str, Callable[..., Pipeline]] = {"text-generation": TextGeneration,
                                             "text-classification": TextClassification, "fill-mask": FillMask,
                                             "translation": Translation}


def pipeline(task: str, model: Any = None, *, batch_size: int = 8, **kwargs) -> Pipeline:
    """A callable for ``task`` on ``model`` (a model spec, a path or a loaded model)."""
    name = "translation" if task.startswith("translation_") else ALIASES.get(task, task)
    if name not in TASKS:
        raise ConfigError(f"unknown pipeline task {task!r}; tasks: {', '.join(sorted([*TASKS, *ALIASES]))}")
    if model is None:
        raise ConfigError(f"pipeline({task!r}) needs model=: a model spec (e.g. 'smollm2') or a checkpoint path")
    return TASKS[name](model if not isinstance(model, Path) else str(model), batch_size=batch_size, **kwargs)
