"""Fine-tuning against independent references: a full step against transformers + torch AdamW, LoRA
against peft on the HF model, DPO against the paper's formula, SFT masks against the template."""

import copy
import math
import re

import pytest
import torch
import torch.nn.functional as F

from fissure.models.hf_gpt2 import gpt_from_hf_gpt2
from fissure.models.hf_llama import hf_to_native_name, load_hf_llama_dir
from fissure.train import TrainConfig, Trainer
from fissure.train.batches import IGNORE, shifted
from fissure.train.lora import LoraSpec, apply_lora
from fissure.train.objectives import dpo_loss, sequence_logprobs


class FixedBatch:
    """Training data that always yields the same batch (the reference step sees exactly it)."""

    def __init__(self, x, y):
        self.batch = (x, y)

    def sample_batch(self, batch_size, block_size, generator):
        return self.batch

    def iter_batches(self, batch_size, block_size):
        yield self.batch


def one_step(model, x, y, **config):
    cfg = TrainConfig(max_steps=1, batch_size=x.shape[0], warmup_steps=0, grad_clip=0.0, dtype="fp32",
                      progress=False, eval_every=1, **config)
    Trainer(model, cfg, FixedBatch(x, y), block_size=x.shape[1]).train()


def reference_step(hf, ids, labels, lr, weight_decay) -> dict:
    """One step done with plain transformers (its own labels= loss) and torch's AdamW; the gradients."""
    hf.train()
    decay = [p for p in hf.parameters() if p.dim() >= 2]
    rest = [p for p in hf.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    hf(input_ids=ids, labels=labels).loss.backward()
    grads = {n: p.grad.clone() for n, p in hf.named_parameters()}
    opt.step()
    return grads


def assert_same_step(ours: dict, theirs: dict, grads: dict, before: dict, zero_gradient: dict | None = None) -> None:
    """Parameters within 1e-5 of the reference's, except where the gradient is below 1e-6: Adam's
    first update is lr * g / (|g| + 1e-8) there, so float32 rounding of g (~1e-9) alone moves the
    update by up to ~lr/20. Such entries must be rare (measured: 1 of 8,192 in one matrix), once the
    entries ``zero_gradient`` marks (a gradient that is zero in exact arithmetic, float32 rounding
    noise of either sign here) are set aside."""
    ill_conditioned = 0
    for name, p in ours.items():
        close = (p - theirs[name]).abs() <= 1e-5
        tiny = grads[name].abs() < 1e-6
        assert bool((close | tiny).all()), name
        exempt = (zero_gradient or {}).get(name, torch.zeros_like(close))
        ill_conditioned += int((~close & ~exempt).sum())
    assert ill_conditioned <= 1e-3 * sum(p.numel() for p in ours.values())
    assert max((ours[k] - before[k]).abs().max().item() for k in before) > 1e-4  # the step really moved them


def batch_with_ignored_targets(vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, 12), generator=g)
    labels = ids.clone()
    labels[:, :4] = IGNORE  # the prompt carries no loss
    labels[2, 9:] = IGNORE  # a shorter row
    return ids, labels


def test_full_step_on_llama_equals_transformers_and_adamw(tiny_llama):
    path, hf, _ = tiny_llama
    ours = load_hf_llama_dir(path)
    before = copy.deepcopy(ours.state_dict())
    ids, labels = batch_with_ignored_targets(hf.config.vocab_size)
    one_step(ours, ids[:, :-1], labels[:, 1:], lr=1e-3, weight_decay=0.1)
    ref = copy.deepcopy(hf)
    grads = reference_step(ref, ids, labels, lr=1e-3, weight_decay=0.1)
    assert_same_step(dict(ours.named_parameters()), {hf_to_native_name(n): p for n, p in ref.named_parameters()},
                     {hf_to_native_name(n): g for n, g in grads.items()}, before)


def test_full_step_on_gpt_equals_transformers_and_adamw(hf_gpt2):
    hf, ours = hf_gpt2
    ids, labels = batch_with_ignored_targets(hf.config.vocab_size, seed=1)
    before = copy.deepcopy(ours.state_dict())
    one_step(ours, ids[:, :-1], labels[:, 1:], lr=1e-3, weight_decay=0.1)
    ref = copy.deepcopy(hf)
    grads = reference_step(ref, ids, labels, lr=1e-3, weight_decay=0.1)
    as_weights = copy.deepcopy(hf)  # the gradients in our layout: convert a model whose weights are them
    for name, p in as_weights.named_parameters():
        p.data.copy_(grads[name])
    # the key bias adds q . b to every score of a query alike, which softmax ignores: its gradient is zero
    d = hf.config.n_embd
    key_bias = {f"blocks.{i}.attn.qkv.bias": torch.arange(3 * d).ge(d) & torch.arange(3 * d).lt(2 * d)
                for i in range(hf.config.n_layer)}
    assert_same_step(ours.state_dict(), gpt_from_hf_gpt2(ref).state_dict(), gpt_from_hf_gpt2(as_weights).state_dict(),
                     before, zero_gradient=key_bias)


def _peft_name_to_ours(name: str) -> str:
    m = re.fullmatch(r"base_model\.model\.(model\.layers\.\d+\.\w+\.\w+)\.(lora_[AB])\.default\.weight", name)
    native = hf_to_native_name(m.group(1) + ".weight").removesuffix(".weight")
    return f"{native}.{m.group(2)}.default.weight"


def test_lora_forward_and_gradients_equal_peft_on_the_hf_model(tiny_llama):
    from peft import LoraConfig, get_peft_model

    path, hf, _ = tiny_llama
    theirs = get_peft_model(copy.deepcopy(hf), LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    with torch.no_grad():
        for n, p in theirs.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)  # B starts at zero; make the adapter matter
    ours = load_hf_llama_dir(path)
    apply_lora(ours, LoraSpec(rank=4, alpha=8, dropout=0.0, targets=["attention", "mlp"]))
    params = dict(ours.named_parameters())
    lora = {n: p for n, p in theirs.named_parameters() if "lora_" in n}
    assert len(lora) == len([n for n in params if "lora_" in n]) == 2 * 7 * 2
    with torch.no_grad():
        for n, p in lora.items():
            params[_peft_name_to_ours(n)].copy_(p)
    x = torch.randint(0, hf.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(2))
    a, b = theirs(input_ids=x).logits, ours(x)
    assert (a - b).abs().max().item() < 1e-5
    assert (a - hf(input_ids=x).logits).abs().max().item() > 1e-3  # the adapter changes the output
    (a ** 2).mean().backward()
    (b ** 2).mean().backward()
    for n, p in lora.items():
        g = params[_peft_name_to_ours(n)].grad
        assert torch.allclose(g, p.grad, atol=1e-6, rtol=1e-4), n
    assert all(not p.requires_grad for n, p in params.items() if "lora_" not in n)  # only the adapter trains


def test_dpo_loss_is_the_papers_formula():
    pc, pr = torch.tensor([-10.0, -4.0, -7.5]), torch.tensor([-12.0, -3.0, -7.5])
    rc, rr = torch.tensor([-11.0, -3.5, -8.0]), torch.tensor([-11.5, -3.2, -7.0])
    beta = 0.3
    loss, stats = dpo_loss(pc, pr, rc, rr, beta)
    by_hand = []
    for i in range(3):
        z = beta * ((pc[i].item() - rc[i].item()) - (pr[i].item() - rr[i].item()))
        by_hand.append(-math.log(1 / (1 + math.exp(-z))))
    assert loss.item() == pytest.approx(sum(by_hand) / 3, rel=1e-6)
    margins = [beta * ((pc[i] - rc[i]) - (pr[i] - rr[i])).item() for i in range(3)]
    assert stats["reward_margin"] == pytest.approx(sum(margins) / 3, rel=1e-6)
    assert stats["reward_accuracy"] == pytest.approx(sum(m > 0 for m in margins) / 3)
    assert stats["reward_chosen"] == pytest.approx(beta * (pc - rc).mean().item(), rel=1e-6)


def test_sequence_logprobs_sum_only_the_targets():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    targets = torch.tensor([[1, 2, IGNORE, 3, IGNORE], [IGNORE, 0, 6, 6, 5]])
    got = sequence_logprobs(logits, targets)
    lp = F.log_softmax(logits, -1)
    want = [sum(lp[b, t, targets[b, t]].item() for t in range(5) if targets[b, t] != IGNORE) for b in range(2)]
    assert got.tolist() == pytest.approx(want, rel=1e-6)


def test_a_forced_prefix_is_read_but_not_learnt(tiny_llama, tmp_path):
    """A safety-recovery row (Qi et al. 2024): the assistant turn opens with a forced start; the
    loss falls on the rest of the turn only. Checked against the template's own tokens."""
    import json

    from fissure.backends.tokenizer import HFTokenizer
    from fissure.errors import DataError
    from fissure.tune.data import read_tuning_data
    from fissure.tune.examples import chat_example

    _, _, hf_tok = tiny_llama
    tok = HFTokenizer(hf_tok)
    forced, rest = "the cat", " sat in the park"
    chat = [{"role": "user", "content": "hello there"},
            {"role": "assistant", "content": forced + rest, "prefix": forced}]
    plain = chat_example(tok, [chat[0], {"role": "assistant", "content": forced + rest}])
    example = chat_example(tok, chat)
    assert example.ids == plain.ids == list(hf_tok.apply_chat_template(
        [{k: v for k, v in m.items() if k != "prefix"} for m in chat], tokenize=True, return_dict=True)["input_ids"])
    dropped = [i for i, (a, b) in enumerate(zip(plain.supervised, example.supervised)) if a and not b]
    assert hf_tok.decode([example.ids[i] for i in dropped]) == forced  # exactly the forced words
    assert all(b <= a for a, b in zip(plain.supervised, example.supervised))
    for bad in ({"role": "assistant", "content": "the dog ran", "prefix": "the cat"},
                {"role": "assistant", "content": "the cat", "prefix": "the cat"},
                {"role": "user", "content": "the cat sat", "prefix": "the cat"}):
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps({"messages": [chat[0], bad]}) + "\n")
        with pytest.raises(DataError, match="'prefix' must be the start of an assistant"):
            read_tuning_data(str(path))


def test_sft_mask_of_a_two_turn_chat_equals_the_template_positions(tiny_llama):
    from fissure.backends.tokenizer import HFTokenizer
    from fissure.tune.examples import chat_example

    _, _, hf_tok = tiny_llama
    tok = HFTokenizer(hf_tok)
    chat = [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "the cat sat"},
            {"role": "user", "content": "and the dog"}, {"role": "assistant", "content": "ran in the park"}]
    example = chat_example(tok, chat)
    ids = list(hf_tok.apply_chat_template(chat, tokenize=True, add_generation_prompt=False,
                                          return_dict=True)["input_ids"])
    assert example.ids == ids  # the same tokens as the template's own tokenization
    start, end, newline = (hf_tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>", "Ċ"))
    header = [start, *hf_tok.encode("assistant", add_special_tokens=False), newline]
    by_hand, i = [False] * len(ids), 0
    while i < len(ids):
        if ids[i:i + len(header)] != header:
            i += 1
            continue
        j = i + len(header)
        while ids[j] != end:
            by_hand[j], j = True, j + 1
        by_hand[j] = by_hand[j + 1] = True  # <|im_end|> and the newline the template puts after it
        i = j + 2
    # by hand: the assistant's words, its <|im_end|> and the newline after it, and nothing else
    marks = [i for i, s in enumerate(example.supervised) if s]
    want = [i for i, s in enumerate(by_hand) if s]
    assert marks == want
    assert [hf_tok.decode([ids[i]]) for i in marks if ids[i] not in (end, newline)] \
        == [hf_tok.decode([t]) for t in hf_tok.encode("the cat sat", add_special_tokens=False)
            + hf_tok.encode("ran in the park", add_special_tokens=False)]
    x, y = shifted([example], pad_id=0)
    assert (y != IGNORE).sum().item() == len(marks)
