import torch

from fissure.models import GPT, GPTConfig
from fissure.models.quantize import Int8Linear, quantize_int8


def test_int8_linear_is_close_to_float():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96)
    q = Int8Linear(lin)
    x = torch.randn(5, 7, 64)
    ref = lin(x)
    err = (q(x).float() - ref).abs().max() / ref.abs().max()
    assert err < 0.02
    assert q.weight_int8.dtype == torch.int8 and q.weight_int8.abs().max() == 127


def test_quantised_model_keeps_its_predictions():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=200, block_size=32, n_layer=2, n_head=2, n_embd=64)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)  # sharper predictions than the tiny init
    x = torch.randint(0, 200, (3, 20))
    with torch.no_grad():
        ref = model(x)
        quantize_int8(model)
        got = model(x).float()
    assert all(isinstance(m, Int8Linear) for m in (model.lm_head, model.blocks[0].attn.qkv))
    agree = (ref.argmax(-1) == got.argmax(-1)).float().mean()
    assert agree > 0.9
    total_variation = 0.5 * (got.softmax(-1) - ref.softmax(-1)).abs().sum(-1)
    assert total_variation.mean() < 0.05
