import json
import math

import pytest
import torch

from fissure.errors import CheckpointError, ConfigError
from fissure.models import GPT, GPTConfig
from fissure.text.dataset import TokenFile, write_tokens
from fissure.text.tokenizers import CharTokenizer
from fissure.train import TrainConfig, Trainer
from fissure.train.checkpoint import load_model_from_checkpoint, save_checkpoint
from fissure.train.trainer import learning_rate, make_optimizer

TEXT = ("the quick brown fox jumps over the lazy dog. " * 40 + "pack my box with five dozen liquor jugs. " * 40)


@pytest.fixture
def data(tmp_path):
    tok = CharTokenizer.from_texts([TEXT])
    write_tokens([TEXT[: len(TEXT) * 9 // 10]], tok, tmp_path / "train.bin")
    write_tokens([TEXT[len(TEXT) * 9 // 10 :]], tok, tmp_path / "val.bin")
    return tok, TokenFile(tmp_path / "train.bin"), TokenFile(tmp_path / "val.bin")


def small_model(vocab, seed=0, **kw):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, block_size=32, n_layer=2, n_head=2, n_embd=32, **kw))


def cfg(**kw):
    base = dict(max_steps=12, batch_size=4, lr=3e-3, warmup_steps=3, eval_every=4, eval_batches=2, progress=False)
    return TrainConfig(**{**base, **kw})


def test_training_lowers_validation_loss(data):
    tok, train, val = data
    trainer = Trainer(small_model(tok.vocab_size), cfg(max_steps=60, eval_every=60), train, val, tokenizer=tok)
    before = trainer.evaluate()
    result = trainer.train()
    assert result.val_loss < before - 0.5


def test_resume_equals_uninterrupted_run(data, tmp_path):
    tok, train, val = data
    # dropout on, so the global torch RNG matters too
    straight = Trainer(small_model(tok.vocab_size, dropout=0.1), cfg(), train, val, tokenizer=tok, seed=5).train()

    first = Trainer(small_model(tok.vocab_size, dropout=0.1), cfg(max_steps=12), train, val, tokenizer=tok, seed=5,
                    checkpoint_dir=tmp_path / "ckpt")
    first.train(until=6)  # an interruption half way; the schedule still spans 12 steps

    model = load_model_from_checkpoint(tmp_path / "ckpt")
    model.train()
    resumed = Trainer(model, cfg(), train, val, tokenizer=tok, seed=999)
    resumed.resume(tmp_path / "ckpt")
    result = resumed.train()
    assert [h["step"] for h in result.history] == list(range(1, 13))
    got = [h["train_loss"] for h in result.history]
    want = [h["train_loss"] for h in straight.history]
    assert got == pytest.approx(want, rel=0, abs=1e-6)
    assert result.val_loss == pytest.approx(straight.val_loss, abs=1e-6)


def test_truncated_checkpoint_is_refused(data, tmp_path):
    tok, _, _ = data
    path = save_checkpoint(tmp_path / "ckpt", small_model(tok.vocab_size), tok)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        load_model_from_checkpoint(path)


def test_missing_files_are_named(tmp_path):
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(CheckpointError, match="missing model.safetensors"):
        load_model_from_checkpoint(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="not found"):
        load_model_from_checkpoint(tmp_path / "nope")


def test_crash_while_saving_keeps_previous_checkpoint(data, tmp_path):
    tok, _, _ = data
    model = small_model(tok.vocab_size)
    path = save_checkpoint(tmp_path / "ckpt", model, tok)
    before = (path / "model.safetensors").read_bytes()

    class Exploding:
        def save(self, d):
            raise RuntimeError("disk full")

    with torch.no_grad():
        model.tok_emb.weight.add_(1.0)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, model, Exploding())
    assert (path / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in path.iterdir()) == [".complete", "config.json", "model.safetensors",
                                                      "tokenizer.json"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ckpt.tmp-")]  # the failed write's leftover
    load_model_from_checkpoint(path)  # a reader recovers: the complete checkpoint stays, the leftover goes
    assert sorted(p.name for p in tmp_path.iterdir() if "ckpt" in p.name) == ["ckpt"]


def test_a_kill_between_the_two_renames_is_recovered(data, tmp_path):
    """The moments a kill can hit: old moved aside but new not in place, or only temporaries left;
    the newest complete version comes back, incomplete ones are ignored."""
    import shutil

    from fissure.train.checkpoint import recover_checkpoint

    tok, train, val = data
    trainer = Trainer(small_model(tok.vocab_size), cfg(max_steps=8, eval_every=8), train, val, tokenizer=tok,
                      checkpoint_dir=tmp_path / "ckpt")
    trainer.train(until=2)
    trainer.save()
    trainer.train(until=4)
    trainer.save()  # step 4 at ckpt
    path = tmp_path / "ckpt"
    shutil.move(path, tmp_path / ".ckpt.old-1")  # killed after moving the old one aside...
    shutil.copytree(tmp_path / ".ckpt.old-1", tmp_path / ".ckpt.tmp-2")  # ...with a newer, complete temp beside it
    state = json.loads((tmp_path / ".ckpt.tmp-2" / "trainer_state.json").read_text())
    (tmp_path / ".ckpt.tmp-2" / "trainer_state.json").write_text(json.dumps({**state, "step": 6}))
    shutil.copytree(tmp_path / ".ckpt.old-1", tmp_path / ".ckpt.tmp-3")
    (tmp_path / ".ckpt.tmp-3" / ".complete").unlink()  # an unfinished write, even "newer", never wins
    (tmp_path / ".ckpt.tmp-3" / "trainer_state.json").write_text(json.dumps({**state, "step": 7}))
    recover_checkpoint(path)
    assert json.loads((path / "trainer_state.json").read_text())["step"] == 6
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".ckpt")) == []
    resumed = Trainer(small_model(tok.vocab_size), cfg(max_steps=8, eval_every=8), train, val, tokenizer=tok)
    resumed.model.load_state_dict(load_model_from_checkpoint(path).state_dict())
    resumed.resume(path)
    assert resumed.step == 6


@pytest.mark.parametrize("damage, message", [
    ("shape", "has shape"), ("nan", "NaN or infinity"), ("extra", "unexpected optimizer tensor"),
    ("rng", "RNG state 'torch'"), ("step", "step must be a non-negative integer"),
    ("best", "best_val_loss must be a finite number"),
])
def test_corrupt_trainer_state_is_refused_before_use(data, tmp_path, damage, message):
    from safetensors.torch import load_file, save_file

    tok, train, val = data
    trainer = Trainer(small_model(tok.vocab_size), cfg(max_steps=6, eval_every=6), train, val, tokenizer=tok,
                      checkpoint_dir=tmp_path / "ckpt")
    trainer.train(until=2)
    path = trainer.save()
    opt = load_file(str(path / "optimizer.safetensors"))
    state = json.loads((path / "trainer_state.json").read_text())
    if damage == "shape":
        opt["0.exp_avg"] = opt["0.exp_avg"][:-1].contiguous()  # fused AdamW read past the end of this before
    elif damage == "nan":
        opt["1.exp_avg_sq"] = torch.full_like(opt["1.exp_avg_sq"], float("nan"))
    elif damage == "extra":
        opt["99.exp_avg"] = torch.zeros(3)
    elif damage == "rng":
        save_file({"torch": torch.zeros(7, dtype=torch.uint8)}, str(path / "rng_state.safetensors"))
    else:
        state["step" if damage == "step" else "best_val_loss"] = "64" if damage == "step" else float("nan")
        (path / "trainer_state.json").write_text(json.dumps(state))
    save_file(opt, str(path / "optimizer.safetensors"))
    fresh = Trainer(small_model(tok.vocab_size), cfg(max_steps=6, eval_every=6), train, val, tokenizer=tok)
    with pytest.raises(CheckpointError, match=message):
        fresh.resume(path)


def test_resuming_a_finished_run_is_a_clear_error(data, tmp_path):
    tok, train, val = data
    trainer = Trainer(small_model(tok.vocab_size), cfg(max_steps=2, eval_every=2), train, val, tokenizer=tok,
                      checkpoint_dir=tmp_path / "ckpt")
    trainer.train()
    again = Trainer(small_model(tok.vocab_size), cfg(max_steps=2, eval_every=2), train, val, tokenizer=tok)
    with pytest.raises(ConfigError, match="finished all 2 steps"):
        again.resume(tmp_path / "ckpt")


def test_checkpoint_round_trip_keeps_tied_weights_and_logits(data, tmp_path):
    tok, _, _ = data
    model = small_model(tok.vocab_size).eval()
    path = save_checkpoint(tmp_path / "ckpt", model, tok)
    loaded = load_model_from_checkpoint(path)
    x = torch.randint(0, tok.vocab_size, (2, 16))
    assert torch.equal(model(x), loaded(x))
    assert loaded.lm_head.weight.data_ptr() == loaded.tok_emb.weight.data_ptr()


def test_schedule_warmup_then_cosine():
    c = TrainConfig(max_steps=100, warmup_steps=10, lr=1.0, min_lr=0.1)
    assert learning_rate(0, c) == pytest.approx(0.1)
    assert learning_rate(9, c) == pytest.approx(1.0)
    assert learning_rate(55, c) == pytest.approx(0.1 + 0.5 * (1 + math.cos(math.pi * 0.5)) * 0.9)
    assert learning_rate(100, c) == pytest.approx(0.1)


def test_weight_decay_only_on_matrices():
    model = small_model(50)
    opt = make_optimizer(model, TrainConfig(weight_decay=0.1))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])


def test_grad_accumulation_matches_big_batch(data):
    tok, train, val = data

    class Fixed:
        """Always the same 8 windows, so 1x8 and 2x4 see the same data."""

        def __init__(self):
            g = torch.Generator().manual_seed(0)
            self.x, self.y = train.sample_batch(8, 32, g)
            self.calls = 0

        def sample_batch(self, batch_size, block_size, generator):
            i = (self.calls * batch_size) % 8
            self.calls += 1
            return self.x[i : i + batch_size], self.y[i : i + batch_size]

    a = Trainer(small_model(tok.vocab_size), cfg(max_steps=1, batch_size=8, grad_clip=0), Fixed(), None, tokenizer=tok)
    b = Trainer(small_model(tok.vocab_size), cfg(max_steps=1, batch_size=4, grad_accum=2, grad_clip=0), Fixed(), None,
                tokenizer=tok)
    a.train(), b.train()
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_early_stopping_stops(data):
    tok, train, val = data
    # lr 0: the validation loss never improves after the first evaluation
    t = Trainer(small_model(tok.vocab_size), cfg(max_steps=100, lr=0.0, min_lr=0.0, eval_every=2,
                                                 early_stopping_patience=2), train, val, tokenizer=tok)
    result = t.train()
    assert result.stopped_early and result.steps == 6


def test_bf16_autocast_trains(data):
    tok, train, val = data
    t = Trainer(small_model(tok.vocab_size), cfg(max_steps=30, dtype="bf16", eval_every=30), train, val, tokenizer=tok)
    before = t.evaluate()
    assert t.train().val_loss < before
