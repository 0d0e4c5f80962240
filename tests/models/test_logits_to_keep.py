"""``logits_to_keep`` (HF's argument): the last k positions' logits, equal to the full forward's,
for every model generate() drives; the cache advances over the whole input either way."""

import pytest
import torch

from fissure.models import GPT, LSTM, GPTConfig, LSTMConfig
from fissure.models.llama import Llama, LlamaConfig

MODELS = {
    "gpt": lambda: GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16)),
    "llama": lambda: Llama(LlamaConfig(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=16,
                                       intermediate_size=24)),
    "lstm": lambda: LSTM(LSTMConfig(vocab_size=50, n_layer=2, n_embd=16)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("keep", [1, 3])
def test_last_positions_equal_the_full_forward_and_the_cache_advances(name, keep):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_kv_cache(2, 16)
        kept = model(ids, kv_cache=cache, logits_to_keep=keep)
        assert kept.shape == (2, keep, 50)
        torch.testing.assert_close(kept, full[:, -keep:])
        nxt = torch.randint(0, 50, (2, 1))
        torch.testing.assert_close(model(nxt, kv_cache=cache), model(torch.cat([ids, nxt], 1))[:, -1:], atol=1e-5,
                                   rtol=1e-4)


def test_torchlm_ends_replies_at_every_end_token_of_the_models_config():
    """A Llama whose config lists two end tokens (as Llama 3's): TorchLM stops at either and strips it."""
    from fissure.backends.torch_lm import TorchLM
    from fissure.decode import Decoding, generate
    from fissure.text.tokenizers import CharTokenizer

    torch.manual_seed(1)
    tok = CharTokenizer.from_texts(["abcdefghijklmnopqrstuvwxyz "])
    model = Llama(LlamaConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=16,
                              intermediate_size=24))
    prompt = tok.encode("abc")
    free = generate(model, [prompt], Decoding(max_new_tokens=12), eos_token_id=None).sequences[0]
    first_new = next(t for t in free if t != tok.eos_id)
    model.config.eos_token_id = [tok.vocab_size - 1, first_new]  # the model's second end token comes first
    lm = TorchLM(model, tok, name="two-ends")
    cut = free.index(first_new)
    assert lm.end_tokens(Decoding()) == (tok.eos_id, tok.vocab_size - 1, first_new)
    assert lm.generate_from_ids([prompt], Decoding(max_new_tokens=12)) == [tok.decode(free[:cut])]
    assert lm.end_tokens(Decoding(eos_token_id=5)) == (5,)  # an explicit choice replaces the model's
