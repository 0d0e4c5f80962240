"""TorchLM.loglikelihood runs each distinct context once: choices after one context (a judge's
answer letters, multiple-choice options) read its last logits, and only a continuation of two or
more tokens gets a row of its own; every score equals a full forward pass over the pair."""

import pytest
import torch

from fissure.backends.torch_lm import TorchLM
from fissure.models import GPT, GPTConfig
from fissure.text.tokenizers import CharTokenizer


class RowCounter(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.rows, self.max_positions = model, 0, model.max_positions

    def new_kv_cache(self, *args, **kw):
        return self.model.new_kv_cache(*args, **kw)

    def forward(self, ids, **kw):
        self.rows += ids.shape[0]
        return self.model(ids, **kw)


def full_forward(lm, model, context, continuation):
    """The continuation's log-likelihood and greediness from one plain forward pass, no cache."""
    ctx, cont = lm.split_pair(context, continuation)
    seq = ctx + cont
    with torch.no_grad():
        logprobs = model(torch.tensor([seq[:-1]]))[0, -len(cont):].float().log_softmax(-1)
    target = torch.tensor(cont)
    return float(logprobs.gather(-1, target[:, None]).sum()), bool((logprobs.argmax(-1) == target).all())


def test_shared_contexts_are_computed_once_and_score_as_a_full_forward():
    tok = CharTokenizer.from_texts(["the cat sat on the mat, a dog ran"])
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()
    model = RowCounter(gpt)
    lm = TorchLM(model, tok, name="tiny", batch_size=2)
    pairs = [("the ca", "t"), ("the ca", "r"), ("the ca", "n"), ("a dog", " ran"), ("the c", "at")]
    together = lm.loglikelihood(pairs)
    # two contexts run ("the ca" extends "the c": its pairs continue that one), then a row for each
    # pair with two or more tokens after its run context: "the c"+"at", "a dog"+" ran", "the c"+"a"+t/r/n
    assert model.rows == 2 + 5
    for pair, got in zip(pairs, together):
        logprob, greedy = full_forward(lm, gpt, *pair)
        assert got.logprob == pytest.approx(logprob, abs=1e-5) and got.is_greedy == greedy
        assert got.tokens == len(pair[1])
    assert together[0].logprob != together[1].logprob
