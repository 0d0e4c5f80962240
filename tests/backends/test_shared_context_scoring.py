"""Continuations that share a context are scored from one cached run of the context: the same
log-likelihoods and greediness as scoring each pair on its own (the full-forward path, itself
tested against transformers), for contexts with several continuations of different lengths."""

import pytest

import fissure


@pytest.mark.parametrize("spec", ["llama", "gpt"])
def test_shared_context_equals_each_pair_alone(tiny_llama, tmp_path, spec):
    if spec == "llama":
        lm = fissure.load(str(tiny_llama[0]))
    else:
        from fissure.backends import TorchLM
        from fissure.models import GPT, GPTConfig
        from fissure.text.tokenizers import CharTokenizer

        tok = CharTokenizer.from_texts(["abcdefghijklmnopqrstuvwxyz ,.'"])
        lm = TorchLM(GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=16)).eval(),
                     tok, name="gpt")
    contexts = ["the cat sat on the", "once upon a time there was"]
    openings = [" mat", " a very long answer indeed", " x", " sorry, i can't"]
    pairs = [(c, o) for c in contexts for o in openings] + [("alone here", " yes")]
    calls = []
    hook = lm.model.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    together = lm.loglikelihood(pairs)
    hook.remove()
    # each shared context once (one row), then its continuations (one row each); the lone pair alone
    assert [c[0] for c in calls] == [1, len(openings), 1, len(openings), 1]
    for pair, got in zip(pairs, together):
        alone = lm.loglikelihood([pair])[0]
        assert got.tokens == alone.tokens and got.is_greedy == alone.is_greedy
        assert got.logprob == pytest.approx(alone.logprob, abs=1e-4, rel=1e-5)
