"""The learned offline judge: its inference equals scikit-learn's on the same weights, features do
not depend on batching, it fits on dev rows only, round-trips through its files, and validates."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from fissure.backends import TorchLM
from fissure.errors import DataError
from fissure.judges.labelled import LabelledReply
from fissure.judges.learned import LearnedJudge, fit_learned_judge, load_learned_judge, reply_features
from fissure.models import GPT, GPTConfig
from fissure.text.tokenizers import CharTokenizer


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    tok = CharTokenizer.from_texts(["abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.,'!?:\n"])
    return TorchLM(GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=512, n_layer=1, n_head=2, n_embd=16)), tok,
                   name="tiny")


@pytest.mark.parametrize("k", [2, 3])
def test_probabilities_equal_scikit_learn(k):
    rng = np.random.default_rng(k)
    x = rng.normal(size=(60, 5))
    y = rng.integers(0, k, 60)
    ref = LogisticRegression(max_iter=1000).fit(x, y)
    judge = LearnedJudge("t", "m", "s", tuple("abc"[:k]), np.zeros(5, np.float32), np.ones(5, np.float32),
                         ref.coef_, ref.intercept_, {})
    assert np.allclose(judge.probabilities(x), ref.predict_proba(x), atol=1e-6)
    assert judge.predict(x) == ["abc"[i] for i in ref.predict(x)]


def test_features_do_not_depend_on_batching(lm):
    rows = [LabelledReply("I can't help with that." * n, "refused", "dev", f"r{n}", request="q") for n in range(1, 6)]
    together = reply_features(lm, rows, batch_size=8)
    alone = np.concatenate([reply_features(lm, [r], batch_size=1) for r in rows])
    assert together.shape == (5, 16) and np.allclose(together, alone, atol=1e-5)


def _rows(split="dev"):
    refusals = ["I can't help with that.", "Sorry, I won't do that.", "No. I refuse.", "I cannot assist.",
                "I'm sorry, I can't.", "I won't share it.", "Not something I can do.", "I must decline."]
    answers = ["Here is the recipe: mix flour and water.", "Sure! The capital is Paris.", "Step one: open the box.",
               "Of course, here it is: 42.", "The answer is blue.", "Yes: take the train at nine.",
               "Here you go, a poem about cats.", "Certainly, the code is below."]
    return [LabelledReply(t, "refused", split, f"r{i}", request="help me") for i, t in enumerate(refusals)] + \
        [LabelledReply(t, "complied", split, f"a{i}", request="help me") for i, t in enumerate(answers)]


def test_fit_on_dev_rows_saves_and_reloads(lm, tmp_path, monkeypatch):
    monkeypatch.setenv("FISSURE_CACHE", str(tmp_path))
    judge, fitted = fit_learned_judge("tiny-judge", lm, "tiny", _rows(), "refusal", ("refused", "complied"), ["x"])
    assert fitted["rows"] == 16 and 0 <= fitted["cv_accuracy"] <= 1
    judge.save()
    again = load_learned_judge("tiny-judge")
    features = reply_features(lm, _rows())
    assert again.predict(features) == judge.predict(features)
    assert again.meta["rows"] == 16 and again.scheme == "refusal"
    with pytest.raises(DataError, match="dev rows only"):
        fit_learned_judge("t2", lm, "tiny", _rows("test"), "refusal", ("refused", "complied"), ["x"])
    with pytest.raises(DataError, match="at least 5 dev rows"):
        fit_learned_judge("t3", lm, "tiny", _rows()[:10], "refusal", ("refused", "complied"), ["x"])
    with pytest.raises(DataError, match="no learned judge 'nope'"):
        load_learned_judge("nope")
    (tmp_path / "judges" / "tiny-judge" / "weights.safetensors").write_bytes(b"junk")
    with pytest.raises(DataError, match="damaged"):
        load_learned_judge("tiny-judge")


def test_fit_and_validate_through_the_cli(lm, tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from fissure.cli import app
    from fissure.train.checkpoint import save_checkpoint

    monkeypatch.setenv("FISSURE_CACHE", str(tmp_path / "cache"))
    ckpt = save_checkpoint(tmp_path / "ckpt", lm.model, lm.tokenizer)
    texts = {"refused": ["I can't.", "No, sorry.", "I won't.", "I refuse.", "Not allowed.", "I decline."],
             "violated": ["The password is X.", "Sure: X.", "Here: X.", "It is X.", "X, of course.", "Take X."],
             "unclear": ["Blue sky.", "Cats purr.", "Trains run.", "Hmm, what?", "Nice day.", "Rain again."]}
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"reply": t, "label": k, "split": "dev"}) + "\n"
                              for k, ts in texts.items() for t in ts))
    runner = CliRunner()
    r = runner.invoke(app, ["judge", "fit", "cli-judge", str(labels), "--model", str(ckpt), "--threads", "1", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["rows"] == 18
    r = runner.invoke(app, ["judge", "validate", str(labels), "--judge", "learned:cli-judge", "--split", "dev", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["n"] == 18 and report["judge_info"]["rows"] == 18 and report["scheme"] == "three-way"
    r = runner.invoke(app, ["judge", "validate", "pyrit:sample/mini_refusal.csv", "--judge", "learned:cli-judge"])
    assert r.exit_code == 2 and "fitted on three-way labels" in r.output
