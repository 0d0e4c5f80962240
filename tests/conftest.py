import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests use one thread per process: deterministic and immune to a busy second core.
torch.set_num_threads(1)


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
