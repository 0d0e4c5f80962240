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
