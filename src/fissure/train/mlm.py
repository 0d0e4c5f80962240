"""BERT's pretraining objectives: masked language modelling (MLM) and next-sentence prediction (NSP).

- **Pairs** (:func:`build_pairs`, after Google's ``create_pretraining_data.py``): each document's
  sentences are packed into chunks of up to ``block_size - 3`` tokens; a chunk is cut into
  segment A and segment B at a random sentence boundary, and with probability 0.5 B is replaced by
  sentences from a random *other* document (NSP label 1, "random"; label 0 is "B follows A", HF's
  ``next_sentence_label`` convention). Chunks of a single sentence have no boundary to cut at and
  serve only as the random B of other pairs, so the labels stay balanced. Without NSP a chunk is one
  segment of up to ``block_size - 2`` tokens. Pairs are built once per run (seeded); masking is
  drawn anew for every batch (dynamic masking, as RoBERTa).
- **Masking** (:func:`mask_tokens`): each token is selected with probability 0.15 (never a special
  token or padding); of the selected, 80% become ``[MASK]``, 10% a random non-special token, 10%
  stay as they were, and the model is scored on all selected positions. With ``whole_word`` a word
  is selected or not as a whole: the draw of its first piece decides for all its pieces. Word
  starts come from WordPiece itself: a piece starting with ``##`` continues the word before it.
- **Loss** (:class:`MaskedLM`): MLM cross-entropy over the selected positions, plus NSP
  cross-entropy when the pairs carry NSP labels.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import DataError
from .batches import IGNORE
from .cross_entropy import cross_entropy

NSP_IS_NEXT, NSP_RANDOM = 0, 1


# --------------------------------------------------------------------------- sentence pairs

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_PARAGRAPH = re.compile(r"\n\s*\n")


def split_sentences(text: str) -> list[str]:
    """Sentences of a document: paragraphs (blank lines) cut after ``.``, ``!`` or ``?`` followed by
    whitespace, each sentence's whitespace collapsed. A rule, not a parser: "e.g. this" is cut too,
    which costs NSP a little and MLM nothing."""
    out = []
    for paragraph in _PARAGRAPH.split(text):
        for sentence in _SENTENCE_END.split(paragraph):
            sentence = " ".join(sentence.split())
            if sentence:
                out.append(sentence)
    return out


@dataclass(frozen=True)
class Pair:
    """One pretraining row: ``[CLS] A [SEP] B [SEP]`` (or ``[CLS] A [SEP]``), segment ids, NSP label."""

    ids: list[int]
    token_types: list[int]
    nsp_label: int


def _truncate(a: list[int], b: list[int], max_tokens: int) -> None:
    """Drop tokens from the end of the longer segment until both fit (in place)."""
    while len(a) + len(b) > max_tokens:
        (a if len(a) > len(b) else b).pop()


def build_pairs(documents: Sequence[Sequence[list[int]]], block_size: int, cls_id: int, sep_id: int,
                nsp: bool, rng: random.Random) -> list[Pair]:
    """Pretraining rows from documents given as lists of tokenized sentences (in document order)."""
    documents = [[s for s in doc if s] for doc in documents]
    documents = [doc for doc in documents if doc]
    max_tokens = block_size - (3 if nsp else 2)
    if max_tokens < 2:
        raise DataError(f"model.block_size={block_size} is too short for BERT rows ([CLS] A [SEP] B [SEP])")
    pairs = []
    for d, doc in enumerate(documents):
        chunk, length = [], 0
        for i, sentence in enumerate(doc):
            chunk.append(sentence)
            length += len(sentence)
            if length < max_tokens and i < len(doc) - 1:
                continue
            if not nsp:
                a = [t for s in chunk for t in s][:max_tokens]
                pairs.append(Pair([cls_id, *a, sep_id], [0] * (len(a) + 2), NSP_IS_NEXT))
            elif len(chunk) >= 2:
                cut = rng.randint(1, len(chunk) - 1)
                a = [t for s in chunk[:cut] for t in s]
                if rng.random() < 0.5 and len(documents) > 1:
                    label, b = NSP_RANDOM, _random_segment(documents, d, max_tokens - len(a), rng)
                else:
                    label, b = NSP_IS_NEXT, [t for s in chunk[cut:] for t in s]
                _truncate(a, b, max_tokens)
                if a and b:
                    pairs.append(Pair([cls_id, *a, sep_id, *b, sep_id], [0] * (len(a) + 2) + [1] * (len(b) + 1),
                                      label))
            chunk, length = [], 0
    return pairs


def _random_segment(documents: Sequence[Sequence[list[int]]], avoid: int, target: int, rng: random.Random) -> list[int]:
    """Sentences from a random start in a random document other than ``avoid``, about ``target`` tokens."""
    other = rng.randrange(len(documents) - 1)
    doc = documents[other + (other >= avoid)]
    start, out = rng.randrange(len(doc)), []
    for sentence in doc[start:]:
        out.extend(sentence)
        if len(out) >= max(target, 1):
            break
    return out


class PretrainingPairs:
    """Batches ``(input_ids, attention_mask, token_type_ids, nsp_labels)`` of :class:`Pair` rows,
    right-padded, with what masking needs to know about the vocabulary."""

    def __init__(self, pairs: Sequence[Pair], tokenizer, nsp: bool, label: str = "pretraining pairs"):
        if not pairs:
            raise DataError(f"{label}: no pairs (too little text: BERT pairs need documents of two or more sentences "
                            "with NSP, or any text without)")
        self.pairs, self.nsp, self.label = list(pairs), nsp, label
        self.pad_id, self.mask_id, self.vocab_size = tokenizer.pad_id, tokenizer.mask_id, tokenizer.vocab_size
        special = sorted(tokenizer.special_ids)
        self.special_ids = torch.tensor(special, dtype=torch.long)
        keep = torch.ones(tokenizer.vocab_size, dtype=torch.bool)
        keep[self.special_ids] = False
        self.random_ids = keep.nonzero()[:, 0]  # what a 10% "random token" is drawn from
        self.continues_word = torch.tensor(tokenizer.continues_word, dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, index: Sequence[int]):
        rows = [self.pairs[i] for i in index]
        width = max(len(r.ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        types = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r.ids)] = torch.tensor(r.ids)
            types[i, :len(r.ids)] = torch.tensor(r.token_types)
            mask[i, :len(r.ids)] = 1
        return ids, mask, types, torch.tensor([r.nsp_label for r in rows], dtype=torch.long)

    def sample_batch(self, batch_size: int, block_size: int, generator: torch.Generator):
        return self.batch(torch.randint(len(self), (batch_size,), generator=generator).tolist())

    def iter_batches(self, batch_size: int, block_size: int):
        for start in range(0, len(self), batch_size):
            yield self.batch(range(start, min(start + batch_size, len(self))))


# --------------------------------------------------------------------------- masking

def mask_tokens(ids: torch.Tensor, maskable: torch.Tensor, generator: torch.Generator, *, mask_id: int,
                random_ids: torch.Tensor, mask_prob: float = 0.15, mask_share: float = 0.8,
                random_share: float = 0.1, word_start: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels)``: BERT's masking of ``ids`` ``(B, T)``.

    A token is selected with probability ``mask_prob`` where ``maskable`` (not special, not padding);
    ``labels`` holds the original id at selected positions and ``IGNORE`` elsewhere. A selected token
    becomes ``mask_id`` with probability ``mask_share``, a token drawn uniformly from ``random_ids``
    with probability ``random_share``, and stays itself otherwise. With ``word_start`` ``(B, T)``
    (True at the first piece of each word) every piece of a word shares its first piece's draw.
    """
    B, T = ids.shape
    draw = torch.rand(B, T, generator=generator)
    if word_start is not None:
        positions = torch.arange(T).expand(B, T)
        first_piece = torch.cummax(torch.where(word_start, positions, 0), dim=1).values
        draw = draw.gather(1, first_piece)
    selected = (draw < mask_prob) & maskable
    labels = torch.where(selected, ids, IGNORE)
    how = torch.rand(B, T, generator=generator)
    to_mask = selected & (how < mask_share)
    to_random = selected & (how >= mask_share) & (how < mask_share + random_share)
    random_tokens = random_ids[torch.randint(len(random_ids), (B, T), generator=generator)]
    inputs = torch.where(to_mask, mask_id, torch.where(to_random, random_tokens, ids))
    return inputs, labels


# --------------------------------------------------------------------------- the objective

class MaskedLM:
    """BERT pretraining on :class:`PretrainingPairs`: MLM cross-entropy (+ NSP cross-entropy when
    the pairs carry NSP labels). Masks are drawn from the trainer's batch generator in training
    (so a resumed run draws the same ones) and from a fixed seed in evaluation (every evaluation
    scores the same masks)."""

    name = "mlm"

    def __init__(self, mask_prob: float = 0.15, whole_word: bool = False, eval_seed: int = 0):
        if not 0 < mask_prob < 1:
            raise ValueError(f"mask_prob must be between 0 and 1 (exclusive), not {mask_prob}")
        self.mask_prob, self.whole_word, self.eval_seed = mask_prob, whole_word, eval_seed
        self.last: dict = {}

    def masked(self, data: PretrainingPairs, batch, generator: torch.Generator):
        ids, attention_mask, types, nsp_labels = batch
        maskable = attention_mask.bool() & ~torch.isin(ids, data.special_ids)
        word_start = ~data.continues_word[ids] if self.whole_word else None
        inputs, labels = mask_tokens(ids, maskable, generator, mask_id=data.mask_id, random_ids=data.random_ids,
                                     mask_prob=self.mask_prob, word_start=word_start)
        return inputs, attention_mask, types, labels, nsp_labels if data.nsp else None

    def sample_batch(self, data, batch_size, block_size, generator):
        return self.masked(data, data.sample_batch(batch_size, block_size, generator), generator)

    def eval_batches(self, data, batch_size, block_size, max_batches):
        generator = torch.Generator().manual_seed(self.eval_seed)
        for i, batch in enumerate(data.iter_batches(batch_size, block_size)):
            if i >= max_batches:
                break
            yield self.masked(data, batch, generator)

    def loss(self, model, batch):
        inputs, attention_mask, types, labels, nsp_labels = batch
        selected = labels != IGNORE
        mlm_logits, nsp_logits = model(inputs, attention_mask=attention_mask, token_type_ids=types,
                                       mlm_positions=selected)
        if selected.any():
            mlm = cross_entropy(mlm_logits, labels[selected])
        else:  # nothing drawn (a tiny batch): no MLM signal, but a graph to backpropagate
            mlm = mlm_logits.float().sum() * 0.0
        self.last = {"mlm_loss": mlm.item()}
        if nsp_labels is None:
            return mlm
        nsp = cross_entropy(nsp_logits, nsp_labels)
        self.last.update(nsp_loss=nsp.item(), nsp_accuracy=(nsp_logits.argmax(-1) == nsp_labels).float().mean().item())
        return mlm + nsp

    def tokens_in(self, batch):
        return batch[0].numel()
