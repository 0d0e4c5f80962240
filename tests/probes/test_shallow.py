"""Shallow alignment: KL by reply position against torch.distributions, and the prefill attack's
forced tokens checked by decoding."""

import copy

import pytest
import torch
from torch.distributions import Categorical, kl_divergence as torch_kl

import fissure
from fissure.backends import TorchLM
from fissure.decode import Decoding
from fissure.probes.shallow import kl_by_position, kl_divergence, prefill

torch.set_num_threads(2)
PAIRS = [("the cat sat on", " the mat"), ("paris is the capital", " of france"), ("hello", " world, hello there")]


@pytest.fixture(scope="module")
def models(tiny_llama):
    path, _, _ = tiny_llama
    base = fissure.load(str(path))
    tuned_model = copy.deepcopy(base.model)
    with torch.no_grad():
        for p in tuned_model.parameters():
            p.add_(torch.randn_like(p, generator=torch.Generator().manual_seed(0)) * 0.05)
    return TorchLM(tuned_model, base.tokenizer, name="tuned"), base


def test_kl_equals_torch_distributions():
    g = torch.Generator().manual_seed(1)
    p, q = torch.randn(4, 7, 50, generator=g), torch.randn(4, 7, 50, generator=g)
    torch.testing.assert_close(kl_divergence(p, q), torch_kl(Categorical(logits=p), Categorical(logits=q)))


def test_kl_by_position_is_each_positions_kl_averaged_over_pairs(models):
    tuned, base = models
    rows = kl_by_position(tuned, base, PAIRS, positions=4, batch_size=2)
    assert [r["position"] for r in rows] == [0, 1, 2, 3]
    for r in rows:
        by_hand = []
        for context, reply in PAIRS:
            ctx, cont = tuned.split_pair(context, reply)
            if r["position"] < len(cont):
                ids = torch.tensor([ctx + cont[:r["position"]]])
                with torch.no_grad():
                    p, q = tuned.model(ids)[0, -1], base.model(ids)[0, -1]
                by_hand.append(torch_kl(Categorical(logits=p.float()), Categorical(logits=q.float())).item())
        assert r["n"] == len(by_hand) and r["kl"] == pytest.approx(sum(by_hand) / len(by_hand), rel=1e-4, abs=1e-6)
    same = kl_by_position(base, base, PAIRS, positions=3)
    assert all(r["kl"] == pytest.approx(0.0, abs=1e-6) for r in same)


@pytest.mark.parametrize("k", [0, 1, 2, 4])
def test_prefill_forces_exactly_the_first_k_reply_tokens(models, k):
    _, lm = models
    decoding = Decoding(max_new_tokens=5)
    out = prefill(lm, PAIRS, k, decoding)
    for (context, reply), text in zip(PAIRS, out):
        ctx, cont = lm.split_pair(context, reply)
        forced = lm.tokenizer.decode(cont[:k])
        assert lm.tokenizer.encode(forced) == cont[:k]  # decoding the forced text gives back those tokens
        assert text.startswith(forced)
        assert text[len(forced):] == lm.generate_from_ids([ctx + cont[:k]], decoding)[0]
