"""Training data made of whole examples (not windows of a token stream), already tokenized.

Each class implements the ``sample_batch`` / ``iter_batches`` protocol the Trainer's objectives
use (as :class:`~fissure.text.dataset.TokenFile` does for windows of text):

- :class:`SupervisedExamples`: token ids with a mask of the tokens that carry loss (SFT: the
  completion or the assistant turns), right-padded per batch; the label of every other position
  is ``IGNORE``, which cross-entropy skips;
- :class:`PreferencePairs`: a prompt with a chosen and a rejected completion (DPO), each with
  its loss mask, and the reference model's log-probabilities once they are computed;
- :class:`LabelledSequences`: token ids and a class label (sequence classification).

Right padding never changes a real token's logits under causal attention, and batches are drawn
only from the generator the Trainer passes in, so a resumed run draws the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ..errors import DataError

IGNORE = -100


def _pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def _draw(n: int, batch_size: int, generator: torch.Generator) -> list[int]:
    return torch.randint(n, (batch_size,), generator=generator).tolist()


@dataclass(frozen=True)
class Example:
    ids: list[int]
    supervised: list[bool]  # supervised[i]: token ids[i] is a target (predicted from ids[:i])

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.supervised) or len(self.ids) < 2 or not any(self.supervised[1:]):
            raise DataError("an example needs at least two tokens and one supervised token after the first")


def shifted(examples: Sequence[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``x`` and targets ``y`` (``IGNORE`` where nothing is learned) of a right-padded batch."""
    ids = _pad([e.ids for e in examples], pad_id)
    keep = _pad([[int(s) for s in e.supervised] for e in examples], 0).bool()
    y = ids[:, 1:].clone()
    y[~keep[:, 1:]] = IGNORE
    return ids[:, :-1].contiguous(), y


class SupervisedExamples:
    def __init__(self, examples: Sequence[Example], pad_id: int, label: str = "examples"):
        if not examples:
            raise DataError(f"{label}: no examples")
        self.examples, self.pad_id, self.label = list(examples), pad_id, label

    def __len__(self) -> int:
        return len(self.examples)

    def sample_batch(self, batch_size: int, block_size: int, generator: torch.Generator):
        return shifted([self.examples[i] for i in _draw(len(self), batch_size, generator)], self.pad_id)

    def iter_batches(self, batch_size: int, block_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self), batch_size):
            yield shifted(self.examples[start:start + batch_size], self.pad_id)


@dataclass(frozen=True)
class Pair:
    chosen: Example
    rejected: Example


class _ByIndex:
    """Batches built by ``self.batch(indices)``: random rows for training, in order for evaluation."""

    def sample_batch(self, batch_size: int, block_size: int, generator: torch.Generator):
        return self.batch(_draw(len(self), batch_size, generator))

    def iter_batches(self, batch_size: int, block_size: int):
        for start in range(0, len(self), batch_size):
            yield self.batch(range(start, min(start + batch_size, len(self))))


class PreferencePairs(_ByIndex):
    """Batches ``(x, y)`` of chosen rows then rejected rows, and the reference log-probabilities
    of each (``reference``: one (chosen, rejected) pair of floats per pair, set before training)."""

    def __init__(self, pairs: Sequence[Pair], pad_id: int, label: str = "preference pairs"):
        if not pairs:
            raise DataError(f"{label}: no preference pairs")
        self.pairs, self.pad_id, self.label = list(pairs), pad_id, label
        self.reference: list[tuple[float, float]] | None = None

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, index: Sequence[int]):
        pairs = [self.pairs[i] for i in index]
        x, y = shifted([p.chosen for p in pairs] + [p.rejected for p in pairs], self.pad_id)
        if self.reference is None:
            return x, y, None
        ref = torch.tensor([self.reference[i] for i in index], dtype=torch.float64)
        return x, y, torch.cat([ref[:, 0], ref[:, 1]])


class LabelledSequences(_ByIndex):
    """Batches ``(ids, attention_mask, labels)`` for sequence classification."""

    def __init__(self, rows: Sequence[tuple[list[int], int]], pad_id: int, label: str = "labelled texts"):
        if not rows:
            raise DataError(f"{label}: no labelled texts")
        self.rows, self.pad_id, self.label = list(rows), pad_id, label

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, index: Sequence[int]):
        rows = [self.rows[i] for i in index]
        ids = _pad([r[0] for r in rows], self.pad_id)
        mask = _pad([[1] * len(r[0]) for r in rows], 0)
        return ids, mask, torch.tensor([r[1] for r in rows], dtype=torch.long)


class Mixture:
    """Rows drawn from several sources by weight (each row's source drawn from the generator):
    domain text with a share of general text replayed, say. The sources yield ``(x, y)`` rows of
    the same width (windows of text)."""

    def __init__(self, sources: Sequence, weights: Sequence[float]):
        if len(sources) != len(weights) or not sources or min(weights) < 0 or sum(weights) <= 0:
            raise DataError("a mixture needs one non-negative weight per source, not all zero")
        self.sources = list(sources)
        self.weights = torch.tensor(weights, dtype=torch.float64) / sum(weights)

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources)

    def sample_batch(self, batch_size: int, block_size: int, generator: torch.Generator):
        picks = torch.multinomial(self.weights, batch_size, replacement=True, generator=generator).tolist()
        rows = [self.sources[i].sample_batch(1, block_size, generator) for i in picks]
        return tuple(torch.cat(parts) for parts in zip(*rows))

    def iter_batches(self, batch_size: int, block_size: int):
        """Evaluation batches of the first source (the one being learned)."""
        yield from self.sources[0].iter_batches(batch_size, block_size)
