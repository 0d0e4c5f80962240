"""TorchLM.loglikelihood computes each distinct input once: choices after one context (a judge's
answer letters, multiple-choice options) share a forward pass and get the numbers they would get
one by one."""

import pytest
import torch

from fissure.backends.torch_lm import TorchLM
from fissure.models import GPT, GPTConfig
from fissure.text.tokenizers import CharTokenizer


class RowCounter(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.rows, self.max_positions = model, 0, model.max_positions

    def forward(self, ids, **kw):
        self.rows += ids.shape[0]
        return self.model(ids, **kw)


def test_shared_contexts_are_computed_once_and_score_as_one_by_one():
    tok = CharTokenizer.from_texts(["the cat sat on the mat, a dog ran"])
    torch.manual_seed(0)
    model = RowCounter(GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)))
    lm = TorchLM(model, tok, name="tiny", batch_size=2)
    pairs = [("the ca", "t"), ("the ca", "r"), ("the ca", "n"), ("a dog", " ran"), ("the c", "at")]
    together = lm.loglikelihood(pairs)
    # "the ca"+"t" and "the c"+"at" read the same tokens too: 2 distinct inputs in all
    assert model.rows == 2
    alone = [lm.loglikelihood([p])[0] for p in pairs]
    for a, b in zip(together, alone):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-5) and (a.is_greedy, a.tokens) == (b.is_greedy, b.tokens)
    assert together[0].logprob != together[1].logprob
