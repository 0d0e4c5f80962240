"""Translation batches: length grouping draws every pair as often as plain sampling does, pads far
less, and depends only on the generator (so a resumed run draws the same batches)."""

import collections

import torch
from scipy.stats import chisquare

from fissure.text.parallel import Pair
from fissure.train.batches import IGNORE
from fissure.train.translation import ParallelBatches


class WordTokenizer:
    """One id per word: ``x<i>`` is ``100 + i`` (names pair i), any other word 1; EOS = 0."""
    eos_id = 0

    def encode_batch(self, texts):
        return [[100 + int(w[1:]) if w.startswith("x") else 1 for w in t.split()] for t in texts]


def pairs(n=60):
    """Sources of 1-29 words; targets a few words longer (translations' lengths follow their sources')."""
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 30, (n,), generator=gen).tolist()
    extra = torch.randint(0, 4, (n,), generator=gen).tolist()
    return [Pair(" ".join(["w"] * s + [f"x{i}"]), " ".join(["w"] * (s + e)))
            for i, (s, e) in enumerate(zip(lengths, extra))]


def padding_share(data, draws=300):
    gen, real, total = torch.Generator().manual_seed(1), 0, 0
    for _ in range(draws):
        src, mask, tgt_in, labels = data.sample_batch(8, 64, gen)
        real += int(mask.sum()) + int((labels != IGNORE).sum())
        total += src.numel() + labels.numel()
    return 1 - real / total


def test_grouped_batches_pad_less_and_draw_every_pair_equally():
    data = pairs()
    plain, grouped = ParallelBatches(data, WordTokenizer(), 64), ParallelBatches(data, WordTokenizer(), 64, True)
    assert padding_share(grouped) < 0.5 * padding_share(plain)
    draws, gen = collections.Counter(), torch.Generator().manual_seed(2)
    for _ in range(1500):
        src, mask, _, _ = grouped.sample_batch(8, 64, gen)
        draws.update(int(row[int(m.sum()) - 2]) - 100 for row, m in zip(src, mask))  # the word before EOS
    assert sorted(draws) == list(range(len(data)))
    assert chisquare([draws[i] for i in range(len(data))]).pvalue > 1e-3  # uniform over pairs


def test_grouped_draws_depend_only_on_the_generator():
    data = ParallelBatches(pairs(), WordTokenizer(), 64, True)
    a, b = torch.Generator().manual_seed(3), torch.Generator()
    for _ in range(5):
        data.sample_batch(8, 64, a)
    b.set_state(a.get_state())  # a resumed run restores the generator's state
    for _ in range(5):
        for x, y in zip(data.sample_batch(8, 64, a), data.sample_batch(8, 64, b)):
            assert torch.equal(x, y)
