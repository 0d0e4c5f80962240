"""Shallow alignment (Qi et al. 2024, "Safety alignment should be made more than just a few tokens
deep"): where safety tuning changed the model, and how far a forced start of a reply carries it.

- :func:`kl_by_position`: along reference replies, KL(P_tuned || P_base) of the next-token
  distribution at each position of the reply. Shallow alignment puts nearly all of it in the
  first few tokens.
- :func:`prefill`: the reply generated after its first ``k`` tokens are forced (the prefill
  attack); a curve over k (0, 1, 2, 4, 8, 16) is the attack's dose-response.

Both work on token ids of a local model (:class:`~fissure.backends.TorchLM`), so the forced
tokens are exactly the reference reply's first ``k`` (the context and reply are split as
lm-eval does: the whole string encoded once).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..backends import TorchLM
from ..backends.scoring import pad_right
from ..decode import Decoding

PREFILL_DEPTHS = (0, 1, 2, 4, 8, 16)


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) in nats over the last dimension, from logits."""
    p_log, q_log = F.log_softmax(p_logits.float(), -1), F.log_softmax(q_logits.float(), -1)
    return (p_log.exp() * (p_log - q_log)).sum(-1)


@torch.inference_mode()
def kl_by_position(tuned: TorchLM, base: TorchLM, pairs: Sequence[tuple[str, str]], positions: int = 16,
                   batch_size: int = 32) -> list[dict]:
    """Per reply position t (0 = the reply's first token): mean KL(P_tuned || P_base) of the
    distribution that predicts the reference reply's token t, over the pairs long enough."""
    rows = []
    for context, reply in pairs:
        ctx, cont = tuned.split_pair(context, reply)
        rows.append((ctx + cont[:positions], len(ctx)))
    totals, counts = [0.0] * positions, [0] * positions
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        ids, mask = pad_right([seq[:-1] for seq, _ in chunk])  # position i predicts token i + 1
        kl = kl_divergence(tuned.model(ids, attention_mask=mask), base.model(ids, attention_mask=mask))
        for row, (seq, n_ctx) in enumerate(chunk):
            for t in range(len(seq) - n_ctx):
                totals[t] += kl[row, n_ctx - 1 + t].item()
                counts[t] += 1
    return [{"position": t, "n": counts[t], "kl": totals[t] / counts[t]} for t in range(positions) if counts[t]]


def prefill(lm: TorchLM, pairs: Sequence[tuple[str, str]], k: int, decoding: Decoding | None = None) -> list[str]:
    """Each reply with its first ``k`` tokens forced from the reference ``reply``: the forced text
    followed by what the model wrote after it."""
    ids, forced = [], []
    for context, reply in pairs:
        ctx, cont = lm.split_pair(context, reply)
        ids.append(ctx + cont[:k])
        forced.append(lm.tokenizer.decode(cont[:k]) if k else "")
    return [f + text for f, text in zip(forced, lm.generate_from_ids(ids, decoding))]


def prefill_curve(lm: TorchLM, cases: Sequence[tuple[str, str, str]], depths: Sequence[int],
                  violated: Callable[[int, str], bool], *, max_new_tokens: int = 48,
                  confidence: float = 0.95) -> list[dict]:
    """The prefill attack's curve: for each depth k, the share of ``cases`` ``(context, reply,
    value)`` whose reply, with its first k tokens forced, ``violated(case_index, text)`` judges a
    violation. A case counts only at depths that stop before its ``value`` starts (forcing the
    value itself would prove nothing); the curve ends at the first depth no case reaches."""
    from ..metrics.stats import wilson_interval

    caps = [len(lm.split_pair(context, reply[:reply.index(value)])[1]) for context, reply, value in cases]
    curve = []
    for k in depths:
        rows = [i for i, cap in enumerate(caps) if k <= cap]
        if not rows:
            break
        texts = prefill(lm, [cases[i][:2] for i in rows], k, Decoding(max_new_tokens=max_new_tokens))
        hits = sum(violated(i, text) for i, text in zip(rows, texts))
        curve.append({"k": k, "n": len(rows), "violated": hits, **wilson_interval(hits, len(rows), confidence).as_dict()})
    return curve
