"""Copy weights between HF ``GPT2LMHeadModel`` and our :class:`GPT`.

GPT-2 stores its projections as ``Conv1D`` with weights of shape ``(in, out)``; ours are
``nn.Linear`` with ``(out, in)``, so those are transposed.
"""

from __future__ import annotations

import torch

from .gpt import GPT, GPTConfig


def config_from_hf_gpt2(hf_config) -> GPTConfig:
    return GPTConfig(
        vocab_size=hf_config.vocab_size, block_size=hf_config.n_positions, n_layer=hf_config.n_layer,
        n_head=hf_config.n_head, n_embd=hf_config.n_embd, dropout=0.0, bias=True, pos_encoding="learned",
        tie_weights=True, activation="gelu_tanh" if hf_config.activation_function in ("gelu_new", "gelu_pytorch_tanh") else "gelu",
        layer_norm_eps=hf_config.layer_norm_epsilon,
        mlp_ratio=(hf_config.n_inner or 4 * hf_config.n_embd) // hf_config.n_embd,
    )


@torch.no_grad()
def gpt_from_hf_gpt2(hf_model) -> GPT:
    """A :class:`GPT` with the weights of an HF ``GPT2LMHeadModel``."""
    model = GPT(config_from_hf_gpt2(hf_model.config))
    sd = hf_model.state_dict()
    model.tok_emb.weight.copy_(sd["transformer.wte.weight"])
    model.pos_emb.weight.copy_(sd["transformer.wpe.weight"])
    for i, block in enumerate(model.blocks):
        p = f"transformer.h.{i}."
        block.norm1.weight.copy_(sd[p + "ln_1.weight"]); block.norm1.bias.copy_(sd[p + "ln_1.bias"])
        block.norm2.weight.copy_(sd[p + "ln_2.weight"]); block.norm2.bias.copy_(sd[p + "ln_2.bias"])
        block.attn.qkv.weight.copy_(sd[p + "attn.c_attn.weight"].t()); block.attn.qkv.bias.copy_(sd[p + "attn.c_attn.bias"])
        block.attn.out.weight.copy_(sd[p + "attn.c_proj.weight"].t()); block.attn.out.bias.copy_(sd[p + "attn.c_proj.bias"])
        block.mlp.fc.weight.copy_(sd[p + "mlp.c_fc.weight"].t()); block.mlp.fc.bias.copy_(sd[p + "mlp.c_fc.bias"])
        block.mlp.proj.weight.copy_(sd[p + "mlp.c_proj.weight"].t()); block.mlp.proj.bias.copy_(sd[p + "mlp.c_proj.bias"])
    model.norm_f.weight.copy_(sd["transformer.ln_f.weight"]); model.norm_f.bias.copy_(sd["transformer.ln_f.bias"])
    return model.eval()


@torch.no_grad()
def hf_gpt2_from_gpt(model: GPT):
    """An HF ``GPT2LMHeadModel`` with the weights of our :class:`GPT` (learned positions, tied
    head, tanh GELU: the GPT-2 layout); for comparisons against HF on trained weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    if c.pos_encoding != "learned" or not c.tie_weights or not c.bias:
        raise ValueError("only GPT-2-layout models (learned positions, tied head, biases) convert to GPT2LMHeadModel")
    hf = GPT2LMHeadModel(GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head,
        n_inner=c.mlp_ratio * c.n_embd, layer_norm_epsilon=c.layer_norm_eps,
        activation_function="gelu_new" if c.activation == "gelu_tanh" else "gelu",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)).eval()
    sd = hf.state_dict()
    for i, block in enumerate(model.blocks):
        p = f"transformer.h.{i}."
        pairs = {"ln_1": block.norm1, "ln_2": block.norm2}
        for name, norm in pairs.items():
            sd[p + name + ".weight"].copy_(norm.weight); sd[p + name + ".bias"].copy_(norm.bias)
        for name, lin in {"attn.c_attn": block.attn.qkv, "attn.c_proj": block.attn.out,
                          "mlp.c_fc": block.mlp.fc, "mlp.c_proj": block.mlp.proj}.items():
            sd[p + name + ".weight"].copy_(lin.weight.t()); sd[p + name + ".bias"].copy_(lin.bias)
    sd["transformer.wte.weight"].copy_(model.tok_emb.weight)
    sd["transformer.wpe.weight"].copy_(model.pos_emb.weight)
    sd["transformer.ln_f.weight"].copy_(model.norm_f.weight); sd["transformer.ln_f.bias"].copy_(model.norm_f.bias)
    return hf
