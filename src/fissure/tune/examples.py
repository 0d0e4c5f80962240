"""Checked tuning data as tokens: training examples with the tokens that carry loss marked.

- chats: the model's own chat template renders the whole conversation once; a token carries loss
  when its characters fall inside an assistant turn (from the turn's first character to the end
  of the template's closing tag, so the model also learns to stop), after the turn's ``prefix``
  where it has one (a forced start of the reply, read but not learnt: safety-recovery examples,
  Qi et al. 2024);
- prompt/completion pairs: ``start + prompt + completion + eos``, loss on completion and eos (the
  split is made as lm-eval does, so the completion's first token is the one the model would see);
- preference pairs: two such examples sharing a prompt (a conversational pair: two chats sharing
  their prompt messages, loss on the assistant reply);
- labelled texts: ``start + text``, and the label's index.

Examples longer than ``max_length`` tokens are cut to it; how many were cut (and dropped, when
nothing learnable was left) is counted and reported, not hidden.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..errors import DataError
from ..train.batches import Example, Pair


@dataclass
class Truncation:
    max_length: int
    counts: Counter = field(default_factory=Counter)

    def cut(self, example: Example) -> Example | None:
        if len(example.ids) <= self.max_length:
            return example
        self.counts["truncated"] += 1
        ids, supervised = example.ids[:self.max_length], example.supervised[:self.max_length]
        if not any(supervised[1:]):
            self.counts["dropped"] += 1
            return None
        return Example(ids, supervised)

    def note(self, total: int) -> str | None:
        if not self.counts["truncated"]:
            return None
        return (f"{self.counts['truncated']} of {total} examples were longer than max_length={self.max_length} "
                f"tokens and were cut ({self.counts['dropped']} dropped: nothing to learn was left)")


def chat_example(tokenizer, messages: list[dict]) -> Example:
    """A conversation rendered by the tokenizer's chat template, loss on the assistant turns."""
    try:
        text = tokenizer.render_chat(messages, add_generation_prompt=False)
    except (AttributeError, ValueError):
        raise DataError("the model has no chat template: give prompt/completion pairs instead of chats") from None
    spans = []
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            opened = tokenizer.render_chat(messages[:i], add_generation_prompt=True)
            closed = tokenizer.render_chat(messages[:i + 1], add_generation_prompt=False)
            if not (text.startswith(opened) and text.startswith(closed)):
                raise DataError("the chat template does not render a conversation as the sum of its turns")
            prefix = message.get("prefix", "")
            if prefix and text[len(opened):len(opened) + len(prefix)] != prefix:
                raise DataError("the chat template does not render an assistant's content right after its "
                                "opening: a 'prefix' cannot be placed")
            spans.append((len(opened) + len(prefix), len(closed)))
    ids, offsets = tokenizer.encode_with_offsets(text)
    supervised = [any(s <= a < e for s, e in spans) for a, _ in offsets]
    return Example(ids, supervised)


def pair_example(split_pair, eos_id: int, prompt: str, completion: str) -> Example:
    """``start + prompt + completion + eos`` with loss on ``completion + eos``."""
    context, continuation = split_pair(prompt, completion)
    ids = [*context, *continuation, eos_id]
    return Example(ids, [False] * len(context) + [True] * (len(continuation) + 1))


def build_examples(lm, kind: str, rows: list[dict], max_length: int) -> tuple[list, str | None]:
    """Examples (or preference pairs) of ``rows`` for the model served by ``lm`` (a TorchLM), and a
    note on truncation."""
    tok, cut = lm.tokenizer, Truncation(max_length)
    out = []
    for row in rows:
        if kind == "chat":
            example = cut.cut(chat_example(tok, row["messages"]))
        elif kind == "pairs":
            example = cut.cut(pair_example(lm.split_pair, tok.eos_id, row["prompt"], row["completion"]))
        elif kind == "preferences":
            if isinstance(row["prompt"], list):  # TRL's conversational form
                chosen = cut.cut(chat_example(tok, row["prompt"] + row["chosen"]))
                rejected = cut.cut(chat_example(tok, row["prompt"] + row["rejected"]))
            else:
                chosen = cut.cut(pair_example(lm.split_pair, tok.eos_id, row["prompt"], row["chosen"]))
                rejected = cut.cut(pair_example(lm.split_pair, tok.eos_id, row["prompt"], row["rejected"]))
            example = Pair(chosen, rejected) if chosen and rejected else None
        else:
            raise ValueError(f"no examples for data of kind {kind!r}")
        if example is not None:
            out.append(example)
    if not out:
        raise DataError(f"no example fits max_length={max_length} tokens")
    return out, cut.note(len(rows))


def labelled_rows(lm, rows: list[dict], text_column: str, label_column: str, labels: list[str],
                  max_length: int) -> tuple[list[tuple[list[int], int]], str | None]:
    """``([start, *tokens], class index)`` per row, cut to ``max_length`` tokens."""
    index = {label: i for i, label in enumerate(labels)}
    out, cut = [], 0
    for row in rows:
        ids = [lm.start_token, *lm.tokenizer.encode(row[text_column])]
        if len(ids) > max_length:
            ids, cut = ids[:max_length], cut + 1
        out.append((ids, index[str(row[label_column])]))
    note = f"{cut} of {len(rows)} texts were longer than max_length={max_length} tokens and were cut" if cut else None
    return out, note
