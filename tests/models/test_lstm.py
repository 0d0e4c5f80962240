"""The LSTM language model: scored through `fissure eval` it equals a direct forward pass and
cross-entropy; its recurrent state works as the KV cache generation needs; it trains through
`fissure train` with `[model] family = "lstm"`."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from fissure.cli import app
from fissure.decode import Decoding, generate
from fissure.models import LSTM, LSTMConfig
from fissure.text.tokenizers import CharTokenizer
from fissure.train.checkpoint import load_checkpoint, save_checkpoint

runner = CliRunner()
TEXTS = ["def add(a, b):\n    return a + b", "class Point:\n    x: int = 0\n    y: int = 0\n" * 3 + "# end",
         "import os\nprint(os.getcwd())"]  # as read_documents cleans them (no edge whitespace)


def _model(vocab: int, **kw) -> LSTM:
    torch.manual_seed(0)
    model = LSTM(LSTMConfig(vocab_size=vocab, block_size=16, n_layer=2, n_embd=24, **kw)).eval()
    with torch.no_grad():  # sharper than the default init, so tokens are told apart
        for p in model.parameters():
            p.mul_(4)
    return model


def test_eval_equals_direct_cross_entropy(tmp_path):
    tokenizer = CharTokenizer.from_texts(TEXTS)
    model = _model(tokenizer.vocab_size)
    ckpt = save_checkpoint(tmp_path / "ckpt", model, tokenizer)
    (tmp_path / "data").mkdir()
    data = tmp_path / "data" / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    window = 8
    result = runner.invoke(app, ["eval", str(ckpt), "--text", str(data), "--window", str(window), "--json",
                                 "--out-dir", str(tmp_path / "runs"), "--threads", "1"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout.strip().splitlines()[-1])
    # direct: each text after <|endoftext|>, targets in disjoint blocks of `window`, each block read
    # from a fresh state after the `window` tokens before its last target (lm-eval's rolling windows:
    # the last, shorter block keeps a full window of context)
    nll, tokens, nbytes = 0.0, 0, 0
    with torch.no_grad():
        for text in TEXTS:
            seq = torch.tensor([tokenizer.eos_id, *tokenizer.encode(text)])
            for first in range(1, len(seq), window):  # targets seq[first:last + 1]
                last = min(first + window, len(seq)) - 1
                inputs = seq[max(0, last - window):last]
                n = last + 1 - first
                logits = model(inputs[None])[0, -n:]
                nll += F.cross_entropy(logits, seq[first:last + 1], reduction="sum").item()
                tokens += n
            nbytes += len(text.encode("utf-8"))
    assert any((len(tokenizer.encode(t)) + 1) % window != 1 for t in TEXTS)  # a short last block is tested
    assert got["tokens"] == tokens and got["bytes"] == nbytes
    assert got["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    assert got["bits_per_byte"] == pytest.approx(nll / nbytes / math.log(2), rel=1e-5)


def test_state_is_a_cache_and_left_padding_is_skipped():
    model = _model(40)
    seq = torch.randint(1, 40, (1, 12), generator=torch.Generator().manual_seed(1))
    full = model(seq)
    state = model.new_kv_cache(1)
    steps = torch.cat([model(seq[:, :5], kv_cache=state), *(model(seq[:, i:i + 1], kv_cache=state)
                                                            for i in range(5, 12))], dim=1)
    torch.testing.assert_close(steps, full, rtol=1e-5, atol=1e-5)
    assert state.length == 12
    # a left-padded row gives the logits of its real tokens alone
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), seq[:, :6]], dim=1)
    mask = torch.tensor([[0, 0, 0] + [1] * 6])
    torch.testing.assert_close(model(padded, attention_mask=mask)[:, 3:], full[:, :6], rtol=1e-5, atol=1e-5)
    # so a batch of prompts generates what each prompt generates alone (greedy and beam search)
    prompts = [[5, 6, 7, 8, 9], [11, 12], [3]]
    for decoding in (Decoding(max_new_tokens=6), Decoding(max_new_tokens=5, num_beams=3)):
        batch = generate(model, prompts, decoding, eos_token_id=0).sequences
        assert batch == [generate(model, [p], decoding, eos_token_id=0).sequences[0] for p in prompts]


def test_checkpoint_round_trip_untied(tmp_path):
    tokenizer = CharTokenizer.from_texts(TEXTS)
    model = _model(tokenizer.vocab_size, tie_weights=False, dropout=0.1)
    again, _ = load_checkpoint(save_checkpoint(tmp_path / "c", model, tokenizer))
    assert isinstance(again, LSTM) and not again.config.tie_weights
    ids = torch.tensor([tokenizer.encode(TEXTS[0])])
    torch.testing.assert_close(again(ids), model(ids))


def test_run_config_family(tmp_path):
    from fissure.config import ConfigError, dump_toml, load_toml
    from fissure.train.pipeline import build_model, load_run_config, run_config_dict

    cfg = load_run_config({"data": {"builtin": "stdlib"}, "model": {"family": "lstm", "n_embd": 32, "n_layer": 1}})
    assert isinstance(cfg.model, LSTMConfig) and cfg.model.n_embd == 32
    (tmp_path / "c.toml").write_text(dump_toml(run_config_dict(cfg)))
    assert load_run_config(load_toml(tmp_path / "c.toml")) == cfg
    assert isinstance(build_model(cfg, 300), LSTM)
    with pytest.raises(ConfigError, match="model.family"):
        load_run_config({"data": {"builtin": "stdlib"}, "model": {"family": "rnn"}})
    with pytest.raises(ConfigError, match="n_head"):  # an LSTM has no heads
        load_run_config({"data": {"builtin": "stdlib"}, "model": {"family": "lstm", "n_head": 2}})


def test_fissure_train_lstm_learns(tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("".join(TEXTS) * 20)
    config = tmp_path / "lstm.toml"
    config.write_text('[data]\npaths = ["%s"]\nval_fraction = 0.5\ndedup = false\n[tokenizer]\nkind = "char"\n'
                      '[model]\nfamily = "lstm"\nblock_size = 32\nn_layer = 1\nn_embd = 32\n'
                      '[train]\nmax_steps = 60\nbatch_size = 8\nlr = 1e-2\nwarmup_steps = 5\neval_every = 60\n'
                      'eval_batches = 2\nthreads = 1\nprogress = false\n' % data)
    result = runner.invoke(app, ["train", str(config), "--out-dir", str(tmp_path / "runs"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["val_loss"] < summary["val_loss_before"] - 1.0  # a repeated text is learnt
    model, _ = load_checkpoint(summary["checkpoint"])
    assert isinstance(model, LSTM)
