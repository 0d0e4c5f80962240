"""The fused Llama's transposed output head: the same logits and greedy tokens as the nn.Linear it
copies, and int8 quantisation of a fused model still quantises the head."""

import torch

from fissure.decode import Decoding, generate
from fissure.models.blocks import OutputHead
from fissure.models.llama import Llama, LlamaConfig
from fissure.models.quantize import Int8Linear, quantize_int8


def tiny(tie: bool) -> Llama:
    torch.manual_seed(0)
    return Llama(LlamaConfig(vocab_size=300, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                             intermediate_size=48, tie_weights=tie)).eval()


def test_fused_head_gives_the_same_logits_and_tokens():
    for tie in (True, False):
        model = tiny(tie)
        ids = torch.randint(0, 300, (3, 9))
        with torch.no_grad():
            before = model(ids)
            greedy = generate(model, ids.tolist(), Decoding(max_new_tokens=8)).sequences
            model.fuse_projections()
            assert isinstance(model.lm_head, OutputHead) and model.lm_head.weight_t.shape == (32, 300)
            assert (model.lm_head.weight is model.tok_emb.weight) == tie
            torch.testing.assert_close(model(ids), before, atol=1e-5, rtol=1e-5)
        assert generate(model, ids.tolist(), Decoding(max_new_tokens=8)).sequences == greedy
        assert model.num_params() == tiny(tie).num_params()  # the transposed copy is a buffer, the weight still tied


def test_int8_quantises_a_fused_head():
    plain, fused = tiny(True), tiny(True).fuse_projections()
    quantize_int8(plain)
    quantize_int8(fused)
    assert isinstance(fused.lm_head, Int8Linear)
    ids = torch.randint(0, 300, (2, 7))
    with torch.no_grad():
        assert torch.equal(plain.lm_head.weight_int8, fused.lm_head.weight_int8)
        torch.testing.assert_close(fused(ids), plain(ids), atol=2e-2, rtol=0)


def test_a_fused_head_follows_training_and_passes_gradients():
    """Trained after fusing (an optimizer step changes the weight in place): one-row steps use the
    new weight, not the copy taken at fuse time, and gradients reach the head."""
    model = tiny(True).fuse_projections()
    ids = torch.randint(0, 300, (1, 3))
    with torch.no_grad():
        model(ids)  # takes the transposed copy
    model.train()
    loss = model(ids).logsumexp(-1).mean()
    loss.backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    model.eval()
    with torch.no_grad():
        h = model.hidden_states(ids)
        torch.testing.assert_close(model.lm_head(h[:, -1:]), h[:, -1:] @ model.tok_emb.weight.t())
