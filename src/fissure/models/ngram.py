"""An n-gram language model with interpolated Kneser-Ney smoothing, over any integer ids (bytes or
tokens), counted and scored with numpy. Reads top to bottom: the formulas, the counts, the scores.

The formulas (Chen & Goodman 1998, "An empirical study of smoothing techniques", section 3; the
notation of their eq. 17-20). For a history ``h`` of ``k - 1`` ids and the next id ``w``:

    p_k(w | h) = max(a_k(h w) - D_k(a), 0) / A_k(h)  +  gamma_k(h) * p_{k-1}(w | h')

- ``h'`` is ``h`` without its oldest id; ``a_k`` is the *KN count* of the k-gram ``h w``: its raw
  count ``c(h w)`` at the highest order ``k = n``, its *continuation count* ``N1+(. h w)`` (how
  many distinct ids precede it) at every lower order;
- ``A_k(h) = sum_w a_k(h w)``: ``c(h .)`` at the top, ``N1+(. h .)`` below;
- ``D_k(a)`` is the discount: one number ``d`` (``discount``, default 0.75), or with
  ``modified=True`` three per order, ``D1, D2, D3+`` for KN counts 1, 2 and 3 or more, estimated
  from the counts of counts ``n_r`` of that order: ``Y = n1 / (n1 + 2 n2)``,
  ``D1 = 1 - 2Y n2/n1``, ``D2 = 2 - 3Y n3/n2``, ``D3+ = 3 - 4Y n4/n3`` (Chen & Goodman eq. 26);
  where an order's counts of counts give a ``D_r`` outside ``(0, r)`` (tiny data) that order
  uses ``discount`` instead;
- ``gamma_k(h) = sum_{w: a_k(h w) > 0} min(D_k(a_k(h w)), a_k(h w)) / A_k(h)``: exactly the
  mass the discounts removed (``d * N1+(h .) / A_k(h)`` for one discount ``d <= 1``), so every
  ``p_k(. | h)`` sums to one;
- a history never seen at order ``k`` (``A_k(h) = 0``) backs off whole: ``p_k = p_{k-1}``;
- the recursion ends at the unigrams. With ``interpolate_uniform=True`` (Chen & Goodman) the
  unigram level is discounted too and interpolated with the uniform distribution ``1 / V``, so
  every id of the vocabulary keeps some probability; with ``False`` (NLTK's
  ``KneserNeyInterpolated``) ``p_1(w) = a_1(w) / A_1``, undiscounted, and an id never seen after
  another id gets probability zero.

Training sequences are padded as NLTK's ``padded_everygram_pipeline`` pads sentences: ``n - 1``
``bos_id`` before and ``n - 1`` ``eos_id`` after; every k-gram (``k = 1..n``) inside a padded
sequence is counted. A scored sequence is read after ``n - 1`` ``bos_id`` too.

Counting: a k-gram is identified level by level as ``(id of its (k-1)-gram prefix) * V + last
id``; ``np.unique`` over those int64 keys gives the k-gram types of the whole corpus at once, sorted
so that the k-grams of one history are a contiguous run. Scoring looks the keys up with
``np.searchsorted``. No Python loop runs per token.

Stored without pickle: :meth:`NgramModel.state` is a dict of int64 arrays (for safetensors) and
:meth:`NgramModel.settings` a JSON-able dict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class NgramConfig:
    order: int = 3
    vocab_size: int = 257  # ids 0..vocab_size-1, bos_id and eos_id included
    bos_id: int = 0
    eos_id: int = 0
    discount: float = 0.75  # one discount for every order (NLTK's parameter; NLTK's own default is 0.1)
    modified: bool = False  # modified KN: D1, D2, D3+ per order from the counts of counts
    interpolate_uniform: bool = True  # the unigrams discounted and mixed with 1/V (False: NLTK's unigrams)

    def __post_init__(self) -> None:
        if not isinstance(self.order, int) or isinstance(self.order, bool) or not 1 <= self.order <= 16:
            raise ValueError(f"order must be an integer from 1 to 16, not {self.order!r}")
        if not isinstance(self.vocab_size, int) or not 2 <= self.vocab_size <= 2**31:
            raise ValueError(f"vocab_size must be an integer from 2 to 2**31, not {self.vocab_size!r}")
        for name in ("bos_id", "eos_id"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise ValueError(f"{name} must be an id below vocab_size ({self.vocab_size}), not {value!r}")
        if not isinstance(self.discount, (int, float)) or not 0 <= self.discount <= 1:
            raise ValueError(f"discount must be a number in [0, 1], not {self.discount!r}")


@dataclass
class _Level:
    """The k-grams of one order ``k``: sorted keys ``prefix_id * V + w``, their KN counts, and per
    history (a (k-1)-gram id) the total ``A`` and the discounted mass ``G`` (``gamma = G / A``)."""

    keys: np.ndarray  # int64, sorted: the k-gram types
    counts: np.ndarray  # int64: a_k of each k-gram (raw at the top order, continuation below)
    discounts: np.ndarray = field(default_factory=lambda: np.zeros(4))  # D(a) for a = 0, 1, 2, 3+
    totals: np.ndarray | None = None  # A_k(h) per history id
    removed: np.ndarray | None = None  # G_k(h) per history id


class NgramModel:
    family = "ngram"

    def __init__(self, config: NgramConfig):
        self.config = config
        self.levels: list[_Level] = []  # levels[k - 1] holds the k-grams

    # -- counting --------------------------------------------------------------------------
    def _padded(self, sequences: Sequence[Sequence[int]], right: bool) -> tuple[np.ndarray, np.ndarray]:
        """All sequences padded and concatenated, and each position's offset inside its own sequence."""
        c, pad = self.config, self.config.order - 1
        parts, offsets = [], []
        for seq in sequences:
            body = np.asarray(seq, dtype=np.int64).reshape(-1)
            if body.size and (body.min() < 0 or body.max() >= c.vocab_size):
                raise ValueError(f"ids must lie in [0, {c.vocab_size}), found {int(body.min())}..{int(body.max())}")
            row = np.concatenate([np.full(pad, c.bos_id), body, np.full(pad if right else 0, c.eos_id)])
            parts.append(row)
            offsets.append(np.arange(row.size))
        if not parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(parts).astype(np.int64), np.concatenate(offsets)

    def fit(self, sequences: Sequence[Sequence[int]]) -> NgramModel:
        """Count every k-gram (k = 1..order) of the padded ``sequences`` and set up the discounts."""
        n, V = self.config.order, self.config.vocab_size
        tokens, offset = self._padded(sequences, right=True)
        if tokens.size == 0:
            raise ValueError("fit needs at least one token to count (an order-1 model adds no padding)")
        gram = np.zeros(tokens.size, np.int64)  # id of the (k-1)-gram ending at each position (k = 1: empty)
        ids_by_level, raw = [], []
        for k in range(1, n + 1):
            valid = offset >= k - 1  # a k-gram ending here lies inside its sequence
            prefix = np.zeros(tokens.size, np.int64) if k == 1 else np.concatenate([[0], gram[:-1]])
            keys = prefix * V + tokens
            types, inverse, count = np.unique(keys[valid], return_inverse=True, return_counts=True)
            gram = np.full(tokens.size, -1, np.int64)
            gram[valid] = inverse
            ids_by_level.append(gram)
            raw.append((types, count))
        self.levels = []
        for k in range(1, n + 1):
            types, count = raw[k - 1]
            if k < n:  # continuation counts: distinct (k+1)-grams whose suffix is this k-gram
                below, above = ids_by_level[k - 1], ids_by_level[k]
                both = above >= 0
                # the (k+1)-gram ending at i has as suffix the k-gram ending at i: pairs (suffix, gram)
                pairs = np.unique(below[both] * (int(above.max()) + 1) + above[both])
                count = np.bincount(pairs // (int(above.max()) + 1), minlength=types.size)
            self.levels.append(_Level(types, count.astype(np.int64)))
        self._prepare()
        return self

    def _prepare(self) -> None:
        """Discounts, totals and removed mass of every level, from keys and KN counts."""
        c, V = self.config, self.config.vocab_size
        for k, level in enumerate(self.levels, start=1):
            level.discounts = self._discounts(level.counts)
            if k == 1 and not c.interpolate_uniform:
                level.discounts = np.zeros(4)  # NLTK: the unigram distribution is not discounted
            n_hist = 1 if k == 1 else self.levels[k - 2].keys.size
            history = level.keys // V
            a = level.counts
            level.totals = np.bincount(history, weights=a, minlength=n_hist)
            taken = np.minimum(level.discounts[np.minimum(a, 3)], a)
            level.removed = np.bincount(history, weights=taken, minlength=n_hist)

    def _discounts(self, counts: np.ndarray) -> np.ndarray:
        """``D(a)`` for ``a = 0, 1, 2, 3+``: one discount, or modified KN's from the counts of counts."""
        d = float(self.config.discount)
        if not self.config.modified:
            return np.array([0.0, d, d, d])
        n1, n2, n3, n4 = (int((counts == r).sum()) for r in (1, 2, 3, 4))
        if min(n1, n2, n3) == 0:  # too little data to estimate: the one discount
            return np.array([0.0, d, d, d])
        y = n1 / (n1 + 2 * n2)
        estimated = [1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3]
        if not all(0 < x < r for r, x in enumerate(estimated, start=1)):  # small or odd data: the one discount
            return np.array([0.0, d, d, d])
        return np.array([0.0, *estimated])

    # -- scoring ---------------------------------------------------------------------------
    def _lookup(self, level: _Level, keys: np.ndarray) -> np.ndarray:
        """Index of each key in ``level`` (``-1`` where it is not a known k-gram)."""
        where = np.searchsorted(level.keys, keys)
        found = where < level.keys.size
        found[found] = level.keys[where[found]] == keys[found]
        return np.where(found, where, -1)

    def _bottom(self, unigram: np.ndarray) -> np.ndarray:
        """p_1(w) for the unigram indices ``unigram`` (-1: an id never seen), the uniform below it
        when interpolating."""
        level, V = self.levels[0], self.config.vocab_size
        total = level.totals[0]
        if total == 0:
            return np.full(unigram.shape, 1.0 / V)
        a = np.where(unigram >= 0, level.counts[np.maximum(unigram, 0)], 0)
        p = np.maximum(a - level.discounts[np.minimum(a, 3)], 0) / total
        if self.config.interpolate_uniform:
            p = p + level.removed[0] / total / V
        return p

    def sequence_logprobs(self, seq: Sequence[int], context: Sequence[int] = ()) -> np.ndarray:
        """Natural-log probability of each id of ``seq``, read after ``order - 1`` ``bos_id`` and
        ``context``; one vectorised pass per order."""
        c = self.config
        context = list(context)
        tokens, _ = self._padded([context + list(seq)], right=False)
        start = c.order - 1 + len(context)  # the first scored position
        V = c.vocab_size
        gram = np.zeros(tokens.size, np.int64)  # the (k-1)-gram ending at each position (k = 1: empty)
        p = None
        for k, level in enumerate(self.levels, start=1):
            history = np.zeros(tokens.size, np.int64) if k == 1 else np.concatenate([[-1], gram[:-1]])
            keys = np.maximum(history, 0) * V + tokens
            here = np.where(history >= 0, self._lookup(level, keys), -1)
            if k > 1:  # n-grams start at the beginning of the padded sequence at the earliest
                here[: k - 1] = -1
            hs, ws = history[start:], here[start:]
            if k == 1:
                p = self._bottom(ws)
            else:
                total = np.where(hs >= 0, level.totals[np.maximum(hs, 0)], 0.0)
                removed = np.where(hs >= 0, level.removed[np.maximum(hs, 0)], 0.0)
                a = np.where(ws >= 0, level.counts[np.maximum(ws, 0)], 0)
                seen = total > 0
                safe = np.where(seen, total, 1.0)
                mixed = np.maximum(a - level.discounts[np.minimum(a, 3)], 0) / safe + removed / safe * p
                p = np.where(seen, mixed, p)
            gram = here
        with np.errstate(divide="ignore"):
            return np.log(p)

    def distribution(self, context: Sequence[int]) -> np.ndarray:
        """``p(. | context)`` over the whole vocabulary (float64, sums to one): the model's last
        ``order - 1`` ids of ``order - 1`` ``bos_id`` + ``context`` as the history."""
        c, V = self.config, self.config.vocab_size
        history = ([c.bos_id] * (c.order - 1) + list(context))[len(context):]  # the last order - 1 ids
        unigram = np.full(V, -1, np.int64)
        unigram[self.levels[0].keys % V] = np.arange(self.levels[0].keys.size)
        p = self._bottom(unigram)
        for k in range(2, c.order + 1):
            h = self._gram_id(history[len(history) - (k - 1):])  # the history of order k: the last k - 1 ids
            level = self.levels[k - 1]
            if h < 0 or level.totals[h] == 0:
                continue
            lo, hi = np.searchsorted(level.keys, [h * V, (h + 1) * V])
            a = level.counts[lo:hi]
            q = p * (level.removed[h] / level.totals[h])
            q[level.keys[lo:hi] % V] += np.maximum(a - level.discounts[np.minimum(a, 3)], 0) / level.totals[h]
            p = q
        return p

    def _gram_id(self, ids: Sequence[int]) -> int:
        """Index of the k-gram ``ids`` among the k-grams of its order (-1 if never seen)."""
        prev = 0
        for k, token in enumerate(ids, start=1):  # the trie, from the left
            prev = int(self._lookup(self.levels[k - 1], np.array([prev * self.config.vocab_size + token]))[0])
            if prev < 0:
                return -1
        return prev

    # -- saving ----------------------------------------------------------------------------
    def settings(self) -> dict:
        return asdict(self.config)

    def state(self) -> dict[str, np.ndarray]:
        """The counts as int64 arrays (keys and KN counts per order): all a checkpoint needs."""
        out = {}
        for k, level in enumerate(self.levels, start=1):
            out[f"order{k}.keys"] = level.keys
            out[f"order{k}.counts"] = level.counts
        return out

    @classmethod
    def from_state(cls, config: NgramConfig, state: dict[str, np.ndarray]) -> NgramModel:
        model = cls(config)
        for k in range(1, config.order + 1):
            keys, counts = state.get(f"order{k}.keys"), state.get(f"order{k}.counts")
            if keys is None or counts is None or keys.shape != counts.shape or keys.ndim != 1:
                raise ValueError(f"order {k}: keys and counts missing or of different shapes")
            if keys.size and (np.any(np.diff(keys) <= 0) or keys.min() < 0 or counts.min() < 0):
                raise ValueError(f"order {k}: keys must be sorted and distinct, counts non-negative")
            model.levels.append(_Level(keys.astype(np.int64), counts.astype(np.int64)))
        model._prepare()
        return model
