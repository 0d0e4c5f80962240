"""Speculative decoding: greedy output equal to HF's greedy output of the target (native Llama and our
GPT; self-drafts and independent random drafts; batches with padding and early eos), the sampled
distribution equal to the target's exact processed distribution (chi-square; HF's logits processors
as the reference), the acceptance rate, the self-draft module, the KV-cache crop and bad drafts."""

import json

import pytest
import torch
from scipy.stats import chisquare
from typer.testing import CliRunner

import fissure
from fissure.backends import SpeculativeLM, TorchLM, speculative
from fissure.cli import app
from fissure.decode import Decoding
from fissure.decode.speculative import DraftError, first_layers, speculative_generate
from fissure.models import GPT, GPTConfig, Llama, LlamaConfig
from fissure.models.attention import KVCache

PROMPTS = [[5, 17, 3, 9, 44], [8, 2], [60, 61, 62, 63, 64, 65, 66, 67], [1]]


def random_gpt(vocab, n_layer=1, n_embd=16, scale=0.0, seed=1, block_size=64):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab, block_size=block_size, n_layer=n_layer, n_head=2, n_embd=n_embd)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model


def hf_greedy(hf, prompt, n, eos=None):
    """HF's own greedy continuation of one unpadded prompt, cut after eos (as fissure returns it)."""
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                          do_sample=False, max_new_tokens=n, eos_token_id=eos, pad_token_id=0)
    new = out[0, len(prompt):].tolist()
    return new[: new.index(eos) + 1] if eos is not None and eos in new else new


# -- greedy: the target's own output, whatever the draft ----------------------------------------
@pytest.mark.parametrize("draft_kind", ["layers:1", "layers:2", "random", "target"])
@pytest.mark.parametrize("gamma,adaptive", [(1, False), (4, False), (3, True)])
def test_greedy_equals_hf_greedy_on_gpt(hf_gpt2, draft_kind, gamma, adaptive):
    hf, ours = hf_gpt2
    draft = {"random": random_gpt(101, scale=0.05), "target": ours}.get(draft_kind)
    if draft is None:
        draft = first_layers(ours, int(draft_kind.split(":")[1]))
    d = Decoding(max_new_tokens=24)
    expected = [hf_greedy(hf, p, 24) for p in PROMPTS]
    batched = speculative_generate(ours, draft, PROMPTS, d, gamma=gamma, adaptive=adaptive)
    assert batched.sequences == expected  # left padding, rows in one batch
    for prompt, want in zip(PROMPTS, expected):
        alone = speculative_generate(ours, draft, [prompt], d, gamma=gamma, adaptive=adaptive)
        assert alone.sequences == [want] and alone.finish_reasons == ["length"]
        assert 0 <= alone.acceptance_rate <= 1 and alone.drafted > 0
        if draft_kind == "target":
            assert alone.acceptance_rate == 1.0


def test_greedy_with_eos_and_repetition_penalty_equals_hf(hf_gpt2):
    """Rows end at different rounds (an eos some produce early, some never) and leave the batch;
    the repetition penalty sees each row's own history, in the draft and in the target."""
    hf, ours = hf_gpt2
    free = hf_greedy(hf, PROMPTS[0], 20)
    eos = free[3]
    d = Decoding(max_new_tokens=20, repetition_penalty=1.3)
    with torch.no_grad():
        expected = []
        for p in PROMPTS:
            out = hf.generate(torch.tensor([p]), do_sample=False, max_new_tokens=20, eos_token_id=eos,
                              pad_token_id=0, repetition_penalty=1.3)[0, len(p):].tolist()
            expected.append(out[: out.index(eos) + 1] if eos in out else out)
    for draft in (first_layers(ours, 1), random_gpt(101, scale=0.05)):
        result = speculative_generate(ours, draft, PROMPTS, d, gamma=3, eos_token_id=eos)
        assert result.sequences == expected
        assert result.finish_reasons == ["eos" if eos in e else "length" for e in expected]
        assert "eos" in result.finish_reasons and "length" in result.finish_reasons


def test_greedy_equals_hf_greedy_on_native_llama(tiny_llama):
    path, hf, hf_tok = tiny_llama
    lm = fissure.load(path)
    prompts = ["the cat sat", "paris is", "one two three four five", "hello"]
    expected = []
    for p in prompts:
        new = hf_greedy(hf, lm.prompt_ids(p), 16, eos=hf_tok.eos_token_id)
        expected.append(lm.tokenizer.decode([t for t in new if t != hf_tok.eos_token_id]))
    torch.manual_seed(3)
    c = lm.model.config
    other = Llama(LlamaConfig(vocab_size=c.vocab_size, block_size=c.block_size, n_layer=1, n_head=2, n_kv_head=1,
                              n_embd=32, intermediate_size=64)).eval()
    random_draft = TorchLM(other, lm.tokenizer, name="random-llama")
    d = Decoding(max_new_tokens=16)
    for draft in ("layers:1", random_draft):
        for gamma in (2, 5):
            spec = speculative(lm, draft, gamma=gamma)
            assert isinstance(spec, SpeculativeLM) and spec.model is lm.model
            assert spec.generate(prompts, d) == expected
            assert [spec.generate([p], d)[0] for p in prompts] == expected
            assert 0 <= spec.acceptance_rate <= 1


# -- sampling: the target's distribution, whatever the draft --------------------------------------
def exact_two_token_distribution(model, prompt, hf_processors):
    """P(a, b | prompt) of a model after HF's logits processors, by full forward passes."""
    V = model.config.vocab_size
    probs = torch.zeros(V, V, dtype=torch.float64)
    with torch.no_grad():
        first = hf_processors(torch.tensor([prompt]), model(torch.tensor([prompt]))[:, -1].float()).softmax(-1)[0]
        for a in range(V):
            seq = torch.tensor([prompt + [a]])
            second = hf_processors(seq, model(seq)[:, -1].float()).softmax(-1)[0]
            probs[a] = first[a].double() * second.double()
    return probs.flatten()


def chi_square(counts, probs):
    """p-value of the counts against probs (0 if an impossible outcome occurred), bins expected
    fewer than 5 times pooled into one."""
    if bool((counts[probs == 0] > 0).any()):
        return 0.0
    counts, probs = counts[probs > 0].double(), probs[probs > 0]
    expected = probs * counts.sum()
    small = expected < 5
    obs = torch.cat([counts[~small], counts[small].sum()[None]])
    exp = torch.cat([expected[~small], expected[small].sum()[None]])
    if not bool(small.any()):
        obs, exp = obs[:-1], exp[:-1]
    return chisquare(obs.numpy(), (exp * obs.sum() / exp.sum()).numpy()).pvalue  # sums agree despite rounding


@pytest.mark.parametrize("settings,batch", [({}, 1), (dict(temperature=1.5, top_k=4, top_p=0.9,
                                                           repetition_penalty=1.3), 1), ({}, 3)])
def test_sampled_distribution_is_the_targets(settings, batch):
    from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                              TopKLogitsWarper, TopPLogitsWarper)

    V, prompt = 6, [1, 2, 3]
    target = random_gpt(V, n_layer=2, n_embd=16, scale=0.2, seed=0, block_size=16)
    draft = random_gpt(V, n_layer=1, n_embd=8, scale=0.2, seed=7, block_size=16)
    procs = LogitsProcessorList()
    if "repetition_penalty" in settings:
        procs.append(RepetitionPenaltyLogitsProcessor(settings["repetition_penalty"]))
    if "temperature" in settings:
        procs += [TemperatureLogitsWarper(settings["temperature"]), TopKLogitsWarper(settings["top_k"]),
                  TopPLogitsWarper(settings["top_p"])]
    p = exact_two_token_distribution(target, prompt, procs)
    q = exact_two_token_distribution(draft, prompt, procs)
    # three new tokens, two drafted in the first round: both draft positions are accepted or rejected
    n = 1500
    counts = torch.zeros(V * V, dtype=torch.long)
    drafted = accepted = 0
    for seed in range(n // batch):
        d = Decoding(max_new_tokens=3, do_sample=True, seed=seed, **settings)
        out = speculative_generate(target, draft, [prompt] * batch, d, gamma=2)
        for seq in out.sequences:
            counts[seq[0] * V + seq[1]] += 1
        drafted, accepted = drafted + out.drafted, accepted + out.accepted
    assert chi_square(counts, p) > 1e-3
    assert chi_square(counts, q) < 1e-6  # the test can tell the draft's distribution from the target's
    assert 0 < accepted < drafted  # drafts were both accepted and rejected


def test_acceptance_is_total_when_the_draft_is_the_target(hf_gpt2):
    _, ours = hf_gpt2
    for d in (Decoding(max_new_tokens=17), Decoding(max_new_tokens=17, do_sample=True, top_k=20, seed=0)):
        out = speculative_generate(ours, ours, PROMPTS, d, gamma=4)
        assert out.acceptance_rate == 1.0 and out.drafted == out.accepted > 0
        assert all(len(s) == 17 for s in out.sequences)


# -- the self-draft and the cache ---------------------------------------------------------------
def test_first_layers_is_the_target_truncated_and_leaves_the_target_whole(hf_gpt2):
    hf, ours = hf_gpt2
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        before = ours(ids)
        draft = first_layers(ours, 1)
        # HF's GPT-2 with only its first block, then its final norm and head
        h = hf.transformer.wte(ids) + hf.transformer.wpe(torch.arange(ids.shape[1]))[None]
        out = hf.transformer.h[0](h)
        h = out[0] if isinstance(out, tuple) else out
        expected = hf.lm_head(hf.transformer.ln_f(h))
        torch.testing.assert_close(draft(ids), expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours(ids), before)
    assert len(ours.blocks) == 3 and len(draft.blocks) == 1 and len(draft.new_kv_cache(1).k) == 1
    assert draft.lm_head.weight is ours.lm_head.weight


def test_kv_cache_crop():
    cache = KVCache(n_layer=1, batch=1, n_kv_head=1, head_dim=2, max_len=8)
    cache.update(0, torch.ones(1, 1, 5, 2), torch.ones(1, 1, 5, 2))
    cache.advance(5)
    cache.crop(3)
    k, _ = cache.update(0, torch.full((1, 1, 1, 2), 7.0), torch.zeros(1, 1, 1, 2))
    assert k.shape[2] == 4 and k[0, 0, 3].tolist() == [7.0, 7.0]  # the new position overwrote position 3
    with pytest.raises(ValueError):
        cache.crop(6)


# -- mistakes --------------------------------------------------------------------------------------
def test_bad_drafts_are_one_line_errors(tiny_llama, tmp_path):
    from fissure.text.tokenizers import CharTokenizer
    from fissure.train.checkpoint import save_checkpoint

    lm = fissure.load(tiny_llama[0])
    tok = CharTokenizer.from_texts(["the cat sat on the mat"])
    ckpt = save_checkpoint(tmp_path / "char-gpt", random_gpt(tok.vocab_size), tok)
    with pytest.raises(DraftError, match=r"another tokenizer .* vocab \d+ vs \d+"):
        speculative(lm, str(ckpt))
    for spec in ("layers:0", "layers:2"):
        with pytest.raises(DraftError, match="1 to 1 of the target's 2 layers"):
            speculative(lm, spec)
    for spec in ("dtype:fp32", "dtype:int2"):
        with pytest.raises(DraftError, match="must be one of bf16, int8, int4"):
            speculative(lm, spec)
    with pytest.raises(DraftError, match="the target is already quantised"):  # it would copy int8 as int8
        speculative(fissure.load(tiny_llama[0], dtype="int8"), "dtype:int4")
    short = random_gpt(lm.model.config.vocab_size, block_size=8)
    with pytest.raises(DraftError, match="draft: prompt .* exceeds the model's context of 8"):
        speculative_generate(lm.model, short, [[5, 6, 7]], Decoding(max_new_tokens=6))
    with pytest.raises(fissure.errors.GenerationError, match="gamma"):
        speculative(lm, "layers:1", gamma=0).generate(["the"], Decoding(max_new_tokens=2))
    result = CliRunner().invoke(app, ["generate", str(tiny_llama[0]), "--prompt", "the", "--draft", str(ckpt),
                                      "--out-dir", str(tmp_path / "runs"), "--json"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "another tokenizer" in result.output and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_a_quantized_copy_drafts_the_targets_greedy_output_and_leaves_the_target_in_fp32(tiny_llama, dtype):
    lm = fissure.load(tiny_llama[0])
    prompts, decoding = ["the cat sat", "paris is", "one two three four"], Decoding(max_new_tokens=16)
    plain = lm.generate(prompts, decoding)
    fast = speculative(lm, f"dtype:{dtype}", gamma=4)
    assert fast.generate(prompts, decoding) == plain
    assert all(p.dtype == torch.float32 for p in lm.model.parameters())  # the target is not the draft
    kinds = {type(m).__name__ for m in fast.draft.modules()}
    assert ("Int4Linear" in kinds) == (dtype == "int4") and ("Int8Linear" in kinds) == (dtype == "int8")
    assert "Linear" not in kinds
    print(f"dtype:{dtype} acceptance {fast.acceptance_rate:.3f}")
    if dtype == "int8":  # an int8 copy proposes mostly the target's own tokens (measured 0.86)
        assert fast.acceptance_rate > 0.5
    # int4 is not asserted here: this random model's logits are flat (median top-2 gap 0.09) against
    # int4's error (up to 0.36), so its copy agrees rarely (0.07); on SmolLM2 see benchmarks/README.md


def test_cli_generate_with_a_draft_prints_the_targets_texts_and_the_acceptance_rate(tiny_llama, tmp_path):
    runner = CliRunner()
    args = ["generate", str(tiny_llama[0]), "--prompt", "the cat", "--prompt", "paris is", "--max-new-tokens", "12",
            "--out-dir", str(tmp_path), "--json"]
    plain = json.loads(runner.invoke(app, args).stdout)
    fast = runner.invoke(app, args + ["--draft", "layers:1", "--gamma", "3"])
    assert fast.exit_code == 0, fast.output
    fast = json.loads(fast.stdout)
    assert fast["texts"] == plain["texts"]
    assert 0 <= fast["acceptance_rate"] <= 1 and fast["draft"] == "layers:1" and fast["gamma"] == 3
    assert set(plain) <= set(fast)  # every key of the plain output is kept
