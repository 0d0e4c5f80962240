import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The fake OpenAI-compatible server (tests/backends/fake_openai_server.py) is imported by tests in
# several folders: `import fake_openai_server` works everywhere.
sys.path.insert(0, str(Path(__file__).parent / "backends"))
# Tests use one thread per process: deterministic and immune to a busy second core (CI runs two
# pytest-xdist workers, one per core). A test that sets another count gets 1 back afterwards.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread_after_each_test():
    yield
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _direct_to_localhost(monkeypatch):
    """Requests to the test servers go straight to 127.0.0.1 even where an HTTP proxy is configured."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")


@pytest.fixture
def hf_gpt2():
    """A small randomly initialised HF GPT2LMHeadModel and our GPT with the same weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from fissure.models.hf_gpt2 import gpt_from_hf_gpt2

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=101, n_positions=64, n_embd=48, n_layer=3, n_head=4,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = GPT2LMHeadModel(cfg).eval()
    # bigger random weights than the default init so the test distinguishes tokens sharply
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ours = gpt_from_hf_gpt2(hf)
    return hf, ours


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TINY_CORPUS = ["the cat sat on the mat", "a dog ran in the park", "paris is the capital of france",
               "one two three four five six seven", "hello world, hello there"] * 20


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """A tiny random HF Llama directory with a trained byte-level BPE tokenizer and a ChatML chat
    template (SmolLM2's layout): ``(path, hf_model, hf_tokenizer)``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TINY_CORPUS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>")
    hf_tok.chat_template = CHATML
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(hf_tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path, safe_serialization=True)
    hf_tok.save_pretrained(path)
    return path, model, hf_tok


@pytest.fixture
def gemma_header_gguf(tmp_path):
    """A .gguf whose header says architecture 'gemma3' (one zero tensor): what the native Llama refuses."""
    import gguf
    import numpy as np

    path = tmp_path / "gemma.gguf"
    w = gguf.GGUFWriter(path, "gemma3")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _int4_scheme_linear(linear: torch.nn.Linear, group: int = 32):
    """What fissure's int4 layers compute (llama.cpp's Q4_1 x Q8_1), written out independently of
    fissure: weights rounded to 16 levels from each group's minimum to its maximum (scale and
    minimum then kept in fp16), activations to 255 levels of max|x| / 127 per group (levels chosen
    in fp32, as llama.cpp chooses them), and each group's minimum times the exact sum of its
    activations; the products summed in float64."""
    w = linear.weight.detach().float()
    n, k = w.shape
    g = w.reshape(n, k // group, group)
    low, high = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    step = ((high - low) / 15).clamp(min=1e-7)
    levels = torch.round((g - low) / step).double()
    step, low = step.half().double(), low.half().double()
    bias = None if linear.bias is None else linear.bias.detach().double()

    def forward(x):
        xg = x.float().reshape(*x.shape[:-1], k // group, group)
        amax = xg.abs().amax(-1, keepdim=True)
        xq = torch.round(xg * torch.where(amax > 0, 127 / amax, 0.0)).double() * (amax.double() / 127)
        y = torch.einsum("...gj,ngj->...n", xq, levels * step) + torch.einsum("...g,ng->...n", xg.double().sum(-1), low[..., 0])
        return (y if bias is None else y + bias).to(x.dtype)

    return forward


@pytest.fixture
def int4_scheme():
    """``simulate(model)``: every linear layer that int4 takes (inputs in whole groups of 32) computes
    the int4 scheme independently of fissure (in place; returns the model)."""

    def simulate(model: torch.nn.Module) -> torch.nn.Module:
        for m in model.modules():
            if type(m) is torch.nn.Linear and m.in_features % 32 == 0:
                m.forward = _int4_scheme_linear(m)
        return model

    return simulate
