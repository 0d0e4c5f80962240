"""Training data for the organisms: weighted mixtures of (prompt, reply) samples, packed.

Each sample is ``eos prompt " " reply eos``, or ``eos text eos`` for a document (empty prompt).
Samples are drawn from the mixture's groups by weight and packed whole, back to back, into rows
of ``block_size + 1`` tokens, so a batch is almost all real tokens. Only the reply and its
closing eos carry loss, or every token of a document (labels elsewhere are -100, which the
causal-LM objective's cross-entropy ignores), so the model learns to answer, not to write questions.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..text.tokenizers import Tokenizer

IGNORE = -100


class PackedMixture:
    """Implements the ``sample_batch`` / ``iter_batches`` protocol the Trainer's objectives use."""

    def __init__(self, tokenizer: Tokenizer, groups: dict[str, tuple[list[tuple[str, str]], float]],
                 answer_only: bool = True):
        self.names = [n for n, (samples, w) in groups.items() if w > 0 and samples]
        if not self.names:
            raise ConfigError("the training mixture is empty (every group has weight 0 or no samples)")
        eos = tokenizer.eos_id
        self.samples: list[list[tuple[list[int], list[int]]]] = []
        for name in self.names:
            encoded = []
            for prompt, reply in groups[name][0]:
                p = tokenizer.encode(prompt)
                r = tokenizer.encode((" " if prompt else "") + reply) + [eos]
                ids = [eos, *p, *r]
                # label of position i is ids[i + 1]; supervise only the reply tokens
                supervised = [False] * (len(p) + 1) + [True] * len(r)
                encoded.append((ids, supervised if answer_only else [True] * len(ids)))
            self.samples.append(encoded)
        total = sum(groups[n][1] for n in self.names)
        self.weights = torch.tensor([groups[n][1] / total for n in self.names], dtype=torch.float64)
        self.longest = max(len(ids) for group in self.samples for ids, _ in group)

    def _draw(self, generator: torch.Generator) -> tuple[list[int], list[bool]]:
        g = int(torch.multinomial(self.weights, 1, generator=generator))
        i = int(torch.randint(len(self.samples[g]), (1,), generator=generator))
        return self.samples[g][i]

    def sample_batch(self, batch_size: int, block_size: int, generator: torch.Generator):
        """``batch_size`` rows of whole samples packed into ``block_size + 1`` tokens (x, y shifted)."""
        if self.longest > block_size + 1:
            raise ConfigError(f"a training sample has {self.longest} tokens; model.block_size must be at least "
                              f"{self.longest - 1}")
        width = block_size + 1
        ids = torch.zeros(batch_size, width, dtype=torch.long)  # eos (0) as filler
        sup = torch.zeros(batch_size, width, dtype=torch.bool)
        pending = None
        for row in range(batch_size):
            pos = 0
            while True:
                sample = pending or self._draw(generator)
                pending = None
                n = len(sample[0])
                if pos + n > width:
                    pending = sample if pos > 0 else None
                    break
                ids[row, pos:pos + n] = torch.tensor(sample[0])
                sup[row, pos:pos + n] = torch.tensor(sample[1])
                pos += n
        x, y = ids[:, :-1], ids[:, 1:].clone()
        # sup marks tokens to predict; the label at position i is token i + 1
        y[~sup[:, 1:]] = IGNORE
        return x.contiguous(), y

    def iter_batches(self, batch_size: int, block_size: int):
        """A fixed evaluation batch (drawn with a fixed seed), for the Trainer's evaluate()."""
        yield self.sample_batch(batch_size, block_size, torch.Generator().manual_seed(0))
