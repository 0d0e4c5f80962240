"""fissure tune end to end on a tiny Llama: adapter checkpoints, merge, HF interop, resume, bad input."""

import json
import shutil
from pathlib import Path

import pytest
import torch

import fissure
from fissure.backends import BackendError
from fissure.errors import ConfigError, DataError
from fissure.train import Trainer
from fissure.train.checkpoint import read_adapter, save_checkpoint, weights_sha256, write_adapter, write_tuned_meta
from fissure.train.lora import LoraSpec, apply_lora, resolve_targets
from fissure.tune import load_tune_config, read_tuning_data, run_tune
from fissure.tune.examples import build_examples
from fissure.tune.merge import merge_adapter

WORDS = ["cat", "dog", "park", "mat", "hello", "world", "paris", "france", "one", "two", "three", "four"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def chats(path: Path) -> Path:
    return write_jsonl(path, [{"messages": [{"role": "user", "content": f"say {w}"},
                                            {"role": "assistant", "content": f"{w} {w} {w}"}]} for w in WORDS])


def config(model, data, **train):
    base = {"max_steps": 4, "batch_size": 4, "eval_every": 2, "eval_batches": 2, "progress": False, "dtype": "fp32",
            "threads": 1}
    return load_tune_config({"model": str(model), "data": str(data), "max_length": 48, "lora": {"rank": 4},
                             "train": {**base, **train}})


def tune(tmp_path, cfg, **kw):
    data = read_tuning_data(cfg.data, cfg.text_column, cfg.label_column, cfg.labels)
    run_dir = tmp_path / f"run-{len(list(tmp_path.glob('run-*')))}"
    run_dir.mkdir()
    return run_tune(cfg, data, run_dir, **kw), run_dir


@pytest.fixture
def base_copy(tiny_llama, tmp_path):
    path = tmp_path / "base"
    shutil.copytree(tiny_llama[0], path)
    return path


def adapted(base, seed=0):
    """The base with a LoRA adapter whose B is random (so it changes the output), unmerged."""
    lm = fissure.load(str(base), fuse=False)
    sha = weights_sha256(lm.model)
    torch.manual_seed(seed)
    spec = LoraSpec(rank=4, alpha=8, dropout=0.0, targets=resolve_targets(lm.model, ["attention", "mlp"]))
    apply_lora(lm.model, spec)
    with torch.no_grad():
        for n, p in lm.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    return lm, spec, sha


def save_adapter(lm, spec, sha, base, path):
    from dataclasses import asdict

    def write(directory):
        write_adapter(directory, lm.model)
        write_tuned_meta(directory, {"kind": "adapter", "base": str(base), "base_sha256": sha, "method": "lora",
                                     "lora": asdict(spec)})
    return save_checkpoint(path, writer=write)


def test_adapter_reload_merge_and_transformers_give_the_same_logits(base_copy, tmp_path):
    from transformers import LlamaForCausalLM

    lm, spec, sha = adapted(base_copy)
    x = torch.randint(0, lm.model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = lm.model(x)
        base_logits = fissure.load(str(base_copy)).model(x)
    assert (want - base_logits).abs().max() > 1e-3  # the adapter matters
    ckpt = save_adapter(lm, spec, sha, base_copy, tmp_path / "adapter")
    assert sorted(p.name for p in ckpt.iterdir()) == [".complete", "adapter_config.json",
                                                      "adapter_model.safetensors", "fissure.json"]
    with torch.no_grad():
        reloaded = fissure.load(str(ckpt)).model(x)  # base + adapter, merged and fused for decoding
    assert (reloaded - want).abs().max() < 1e-5
    merged = merge_adapter(ckpt, tmp_path / "merged")
    with torch.no_grad():
        hf_logits = LlamaForCausalLM.from_pretrained(merged).eval()(input_ids=x).logits
        ours = fissure.load(str(merged)).model(x)
    assert (hf_logits - want).abs().max() < 1e-5 and (ours - want).abs().max() < 1e-5
    assert json.loads((merged / "fissure.json").read_text())["merged_from"] == str(ckpt)


def test_adapter_on_a_changed_or_missing_base_is_a_clear_error(base_copy, tmp_path):
    from safetensors.torch import load_file, save_file

    lm, spec, sha = adapted(base_copy)
    ckpt = save_adapter(lm, spec, sha, base_copy, tmp_path / "adapter")
    weights = load_file(str(base_copy / "model.safetensors"))
    weights["model.norm.weight"] = weights["model.norm.weight"] * 1.01
    save_file(weights, str(base_copy / "model.safetensors"))
    with pytest.raises(BackendError, match="trained on a base .* with other weights"):
        fissure.load(str(ckpt))
    shutil.rmtree(base_copy)
    with pytest.raises(BackendError, match="unknown model"):
        fissure.load(str(ckpt))


def test_lora_sft_run_writes_an_adapter_every_verb_loads(tiny_llama, tmp_path):
    cfg = config(tiny_llama[0], chats(tmp_path / "chats.jsonl"), max_steps=8, lr=1e-2)
    summary, run_dir = tune(tmp_path, cfg)
    assert summary["objective"] == "sft" and summary["data"]["kind"] == "chat"
    assert summary["val_loss"] < summary["val_loss_before"]  # it learned the assistant turns
    meta, state = read_adapter(summary["checkpoint"])
    assert meta["base"] == str(Path(tiny_llama[0]).resolve()) and len(meta["base_sha256"]) == 64
    assert set(meta["lora"]["targets"]) == {"q_proj", "k_proj", "v_proj", "out", "gate", "up", "down"}
    assert summary["trainable_parameters"] == sum(t.numel() for t in state.values())
    tuned, base = fissure.load(summary["checkpoint"]), fissure.load(str(tiny_llama[0]))
    prompt = tuned.render([{"role": "user", "content": "say cat"}])
    (after,), (before,) = (m.loglikelihood([(prompt, "cat cat cat<|im_end|>")]) for m in (tuned, base))
    assert after.logprob > before.logprob + 1.0  # the adapter, loaded back, says what it was taught


def test_resumed_lora_run_equals_an_uninterrupted_one(tiny_llama, tmp_path, monkeypatch):
    data = chats(tmp_path / "chats.jsonl")
    straight, _ = tune(tmp_path, config(tiny_llama[0], data, max_steps=6, lr=1e-2))
    train = Trainer.train
    monkeypatch.setattr(Trainer, "train", lambda self, until=None: train(self, until=3))  # "killed" after step 3
    first, _ = tune(tmp_path, config(tiny_llama[0], data, max_steps=6, lr=1e-2))
    monkeypatch.setattr(Trainer, "train", train)
    assert first["steps"] == 3
    resumed, _ = tune(tmp_path, config(tiny_llama[0], data, max_steps=6, lr=1e-2), resume=Path(first["checkpoint"]))
    assert resumed["steps"] == 6
    a, b = read_adapter(straight["checkpoint"])[1], read_adapter(resumed["checkpoint"])[1]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["val_loss"] == straight["val_loss"]


def test_full_tuning_of_a_llama_writes_a_directory_transformers_loads(tiny_llama, tmp_path):
    from transformers import LlamaForCausalLM

    text = tmp_path / "notes.txt"
    text.write_text("\n\n".join(f"the {w} sat on the mat and the dog ran in the park" for w in WORDS * 20))
    summary, _ = tune(tmp_path, load_tune_config({
        "model": str(tiny_llama[0]), "data": str(text), "method": "full", "max_length": 16,
        "train": {"max_steps": 3, "batch_size": 2, "eval_every": 3, "eval_batches": 1, "progress": False,
                  "dtype": "fp32", "lr": 1e-3}}))
    ckpt = Path(summary["checkpoint"])
    assert summary["objective"] == "causal_lm" and summary["method"] == "full"
    hf = LlamaForCausalLM.from_pretrained(ckpt).eval()
    x = torch.randint(0, hf.config.vocab_size, (1, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = fissure.load(str(ckpt)).model(x)
        assert (hf(input_ids=x).logits - ours).abs().max() < 1e-5
        assert (tiny_llama[1](input_ids=x).logits - ours).abs().max() > 1e-4  # the weights moved
    assert json.loads((ckpt / "fissure.json").read_text())["kind"] == "full"


def test_classification_reports_metrics_on_held_out_rows(tiny_llama, tmp_path):
    rows = [{"text": "the cat sat on the mat" if i % 2 else "a dog ran in the park", "label": "cat" if i % 2 else "dog"}
            for i in range(40)]
    data = write_jsonl(tmp_path / "labelled.jsonl", rows)
    summary, _ = tune(tmp_path, config(tiny_llama[0], data, max_steps=15, lr=1e-2, batch_size=8))
    report = summary["classification"]
    assert summary["objective"] == "classify" and report["classes"] == ["cat", "dog"] and report["n"] == 4
    assert report["accuracy"]["estimate"] == 1.0  # two texts, one per class: trivially separable
    assert sum(map(sum, report["confusion_matrix"])) == 4


def test_dpo_run_moves_the_reward_margin_up(tiny_llama, tmp_path):
    rows = [{"prompt": f"the {w}", "chosen": " sat on the mat", "rejected": " ran in the park"} for w in WORDS]
    data = write_jsonl(tmp_path / "prefs.jsonl", rows)
    summary, _ = tune(tmp_path, config(tiny_llama[0], data, max_steps=10, lr=1e-2))
    assert summary["objective"] == "dpo"
    assert summary["dpo"]["val"]["reward_margin"] > 0 and summary["val_loss"] < summary["val_loss_before"]


@pytest.mark.parametrize("rows, message", [
    ([{"text": "a", "label": "x"}, {"label": "b"}], "row 2 has no 'text'"),
    ([{"messages": [{"role": "user", "content": "hi"}]}], "no assistant turn"),
    ([{"prompt": "p", "chosen": "same", "rejected": "same"}], "identical"),
    ([{"question": "q", "answer": "a"}], "found columns question, answer"),
    ([{"messages": [{"role": "robot", "content": "hi"}]}], "role"),
])
def test_bad_rows_are_one_line_errors(tmp_path, rows, message):
    with pytest.raises(DataError, match=message):
        read_tuning_data(str(write_jsonl(tmp_path / "d.jsonl", rows)))


def test_bad_files_are_one_line_errors(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty"):
        read_tuning_data(str(tmp_path / "empty.jsonl"))
    (tmp_path / "latin1.csv").write_bytes("text,label\ncaf\xe9,a\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_tuning_data(str(tmp_path / "latin1.csv"))
    (tmp_path / "labels.csv").write_text("text,label\nx,good\ny,bad\nz,meh\n")
    with pytest.raises(DataError, match="label 'meh' is not in the label set"):
        read_tuning_data(str(tmp_path / "labels.csv"), labels=["bad", "good"])
    with pytest.raises(DataError, match="no data at"):
        read_tuning_data(str(tmp_path / "nope.jsonl"))


def test_lora_targets_that_match_nothing_list_the_modules(tiny_llama):
    lm = fissure.load(str(tiny_llama[0]), fuse=False)
    with pytest.raises(ConfigError, match="matches no Linear module; the model has: down, gate, k_proj, out"):
        resolve_targets(lm.model, ["c_attn_x"])
    assert resolve_targets(lm.model, ["o_proj", "q_proj"]) == ["out", "q_proj"]  # HF names work too


def test_too_long_examples_are_cut_and_counted(tiny_llama, tmp_path):
    lm = fissure.load(str(tiny_llama[0]), fuse=False)
    rows = [{"prompt": "the cat " * n, "completion": " sat"} for n in (1, 2, 30, 60)]
    examples, note = build_examples(lm, "pairs", rows, max_length=24)
    assert note.startswith("2 of 4 examples were longer than max_length=24") and "2 dropped" in note
    assert len(examples) == 2 and all(len(e.ids) <= 24 for e in examples)


def test_catalogue_domains_are_tuning_data():
    topics = read_tuning_data("topics")
    assert topics.kind == "labelled" and topics.labels == ["business", "entertainment", "politics", "sports", "tech"]
    assert {r["label"] for r in topics.rows} == set(topics.labels) and all(r["text"] for r in topics.rows)
    legal = read_tuning_data("legal")
    assert legal.kind == "text" and len(legal) >= 10 and legal.source == "data:legal"
    with pytest.raises(DataError, match="a domain of `fissure data list`"):
        read_tuning_data("leagl")


def test_multitask_mixture_logs_task_losses_and_gradient_cosines(tiny_llama, tmp_path):
    data = chats(tmp_path / "chats.jsonl")
    copy = tmp_path / "same.jsonl"
    copy.write_text(data.read_text())
    rows = [{"text": "the cat sat" if i % 2 else "a dog ran", "label": "cat" if i % 2 else "dog"} for i in range(20)]
    labelled = write_jsonl(tmp_path / "labelled.jsonl", rows)
    cfg = load_tune_config({"model": str(tiny_llama[0]), "data": str(data), "extra_data": [str(copy), str(labelled)],
                            "weights": [0.4, 0.4, 0.2], "max_length": 48, "lora": {"rank": 4, "dropout": 0.0},
                            "train": {"max_steps": 2, "batch_size": 4, "eval_every": 2, "eval_batches": 1,
                                      "progress": False, "dtype": "fp32"}})
    datas = [read_tuning_data(s) for s in (cfg.data, *cfg.extra_data)]
    run_dir = tmp_path / "multi"
    run_dir.mkdir()
    summary = run_tune(cfg, datas, run_dir)
    assert summary["objective"] == "multitask"
    assert [(t["name"], t["objective"]) for t in summary["tasks"]] == [("chats", "sft"), ("same", "sft"),
                                                                      ("labelled", "classify")]
    last = summary["history"][-1]
    assert set(last["task_val_loss"]) == {"chats", "same", "labelled"}
    cos = last["gradient_cosine"]
    assert set(cos) == {"chats|same", "chats|labelled", "same|labelled"}
    assert cos["chats|same"] > 0.999  # the same task twice (same batch): the same direction
    assert cos["chats|labelled"] < 0.9
    assert all(-1 - 1e-5 <= c <= 1 + 1e-5 for c in cos.values())
    assert (Path(summary["checkpoint"]) / "head-labelled.safetensors").is_file()
    assert "classification_labelled" in summary
    with pytest.raises(ConfigError, match="one non-negative weight per data source"):
        load_tune_config({"data": "x", "extra_data": ["y"], "weights": [1.0]})


@pytest.mark.parametrize("method", ["lora", "full"])
def test_hf_models_train_through_transformers(tiny_llama, tmp_path, method):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(tiny_llama[0])
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=2))
    path = tmp_path / "gpt2"
    hf.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    text = tmp_path / "notes.txt"
    text.write_text("\n\n".join(f"the {w} sat on the mat and the dog ran in the park" for w in WORDS * 20))
    cfg = load_tune_config({"model": str(path), "data": str(text), "method": method, "max_length": 24,
                            "train": {"max_steps": 3, "batch_size": 2, "eval_every": 3, "eval_batches": 1,
                                      "progress": False, "dtype": "fp32", "lr": 1e-3}})
    summary, _ = tune(tmp_path, cfg)
    lm = fissure.load(summary["checkpoint"])
    assert lm.capabilities.backend == "transformers"
    if method == "lora":
        assert set(read_adapter(summary["checkpoint"])[0]["lora"]["targets"]) == {"c_attn", "c_proj", "c_fc"}
    x = torch.randint(0, len(tok), (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (lm.model(x) - hf(input_ids=x).logits).abs().max() > 1e-4  # tuned: not the base any more


def test_lora_on_our_gpt_targets_its_fused_projections(tmp_path):
    from fissure.models import GPT, GPTConfig
    from fissure.text.tokenizers import CharTokenizer
    from fissure.train.checkpoint import save_checkpoint as save

    text = "\n\n".join(f"the {w} sat on the mat" for w in WORDS * 20)
    tok = CharTokenizer.from_texts([text])
    torch.manual_seed(0)
    ckpt = save(tmp_path / "gpt", GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2,
                                                 n_embd=32)), tok)
    (tmp_path / "notes.txt").write_text(text)
    cfg = load_tune_config({"model": str(ckpt), "data": str(tmp_path / "notes.txt"), "max_length": 32,
                            "train": {"max_steps": 2, "batch_size": 2, "eval_every": 2, "eval_batches": 1,
                                      "progress": False, "dtype": "fp32"}})
    summary, _ = tune(tmp_path, cfg)
    assert set(read_adapter(summary["checkpoint"])[0]["lora"]["targets"]) == {"qkv", "out", "fc", "proj"}
    assert fissure.load(summary["checkpoint"]).capabilities.backend == "native"
    with pytest.raises(ConfigError, match="exceeds the model's context of 64"):
        tune(tmp_path, load_tune_config({"model": str(ckpt), "data": str(tmp_path / "notes.txt"),
                                         "max_length": 100}))


def test_gradient_checkpointing_gives_the_same_gradients(tiny_llama):
    from fissure.models.hf_llama import load_hf_llama_dir
    from fissure.train.trainer import set_gradient_checkpointing

    x = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    grads = []
    for checkpointing in (False, True):
        model = load_hf_llama_dir(tiny_llama[0]).train()
        if checkpointing:
            set_gradient_checkpointing(model)
        model(x).float().logsumexp(-1).mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert model.gradient_checkpointing
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def conversational(w: str) -> dict:
    return {"prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"the {w}"}],
            "chosen": [{"role": "assistant", "content": "sat on the mat"}],
            "rejected": [{"role": "assistant", "content": "ran in the park"}]}


def test_conversational_preference_rows_render_as_trl_renders_them(tiny_llama, tmp_path):
    """TRL's conversational DPO rows (prompt messages, chosen/rejected assistant messages): each side
    is the chat rendered by the model's template, loss exactly on the text TRL's
    ``maybe_apply_chat_template`` makes the chosen/rejected completion."""
    from trl.data_utils import maybe_apply_chat_template

    path, _, hf_tok = tiny_llama
    row = conversational("cat")
    data = read_tuning_data(str(write_jsonl(tmp_path / "prefs.jsonl", [row])))
    assert data.kind == "preferences"
    lm = fissure.load(str(path))
    (pair,), _ = build_examples(lm, data.kind, data.rows, max_length=256)
    reference = maybe_apply_chat_template(row, hf_tok)
    for side, example in (("chosen", pair.chosen), ("rejected", pair.rejected)):
        supervised = [t for t, s in zip(example.ids, example.supervised) if s]
        assert lm.tokenizer.decode(supervised) == reference[side]
        assert lm.tokenizer.decode(example.ids) == reference["prompt"] + reference[side]


def test_conversational_dpo_run_moves_the_reward_margin_up(tiny_llama, tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", [conversational(w) for w in WORDS])
    summary, _ = tune(tmp_path, config(tiny_llama[0], data, max_steps=10, lr=1e-2))
    assert summary["objective"] == "dpo"
    assert summary["dpo"]["val"]["reward_margin"] > 0 and summary["val_loss"] < summary["val_loss_before"]


@pytest.mark.parametrize("change, message", [
    ({"prompt": [{"role": "assistant", "content": "hi"}]}, "must end with a user message"),
    ({"chosen": [{"role": "user", "content": "x"}]}, "assistant messages only"),
    ({"rejected": [{"role": "assistant", "content": "sat on the mat"}]}, "identical"),
    ({"prompt": [{"role": "user"}]}, "needs a role"),
    ({"chosen": []}, "non-empty list"),
])
def test_bad_conversational_rows_are_one_line_errors(tmp_path, change, message):
    with pytest.raises(DataError, match=message):
        read_tuning_data(str(write_jsonl(tmp_path / "d.jsonl", [{**conversational("cat"), **change}])))


def test_dpo_tuned_from_an_sft_adapter_stacks_on_it(tiny_llama, tmp_path):
    """SFT then DPO (the lab's ``sft_dpo``): DPO's base is the SFT checkpoint, so the stacked model
    differs from the merged SFT model by one rank-r update per target weight (stacked on the raw
    base instead, the difference would be DPO's update minus SFT's: rank up to 2r), and it loads
    through transformers as it loads here."""
    from transformers import LlamaForCausalLM

    sft, sft_dir = tune(tmp_path, config(tiny_llama[0], chats(tmp_path / "c.jsonl"), max_steps=6, lr=1e-2))
    prefs = write_jsonl(tmp_path / "p.jsonl", [conversational(w) for w in WORDS])
    dpo, dpo_dir = tune(tmp_path, config(sft_dir / "checkpoint", prefs, max_steps=6, lr=1e-2))
    assert read_adapter(dpo["checkpoint"])[0]["base"] == str((sft_dir / "checkpoint").resolve())
    assert dpo["val_loss_before"] == pytest.approx(0.6931, abs=1e-3)  # reference = start = the SFT model
    assert dpo["dpo"]["val"]["reward_margin"] > 0
    sft_w = LlamaForCausalLM.from_pretrained(merge_adapter(Path(sft["checkpoint"]), tmp_path / "m-sft")).state_dict()
    hf = LlamaForCausalLM.from_pretrained(merge_adapter(Path(dpo["checkpoint"]), tmp_path / "m-dpo")).eval()
    base_w = tiny_llama[1].state_dict()
    ranks = {name: (int(torch.linalg.matrix_rank(w - sft_w[name])), int(torch.linalg.matrix_rank(w - base_w[name])))
             for name, w in hf.state_dict().items() if name.endswith("q_proj.weight")}
    assert len(ranks) == 2 and all(on_sft <= 4 < on_base for on_sft, on_base in ranks.values()), ranks
    x = torch.randint(0, hf.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (hf(input_ids=x).logits - fissure.load(dpo["checkpoint"]).model(x)).abs().max() < 1e-4
