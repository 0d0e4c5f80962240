"""Translation end to end through the CLI: train a tiny encoder-decoder on English-German gettext
messages, translate, score with sacrebleu against the copy-the-source baseline; and the bad inputs."""

import json
from pathlib import Path

import pytest
import sacrebleu
from typer.testing import CliRunner

from fissure.cli import app
from fissure.text.parallel import LOCALE_DIR

runner = CliRunner()
EXAMPLE = Path(__file__).parents[2] / "examples" / "translate-en-de.toml"
HAS_DE = any((Path(LOCALE_DIR) / "de" / "LC_MESSAGES").glob("*.mo"))

# The budget: a small model on every en-de message of 3-12 words (25k training pairs), 1,300 steps of 96
# pairs on 1 thread: about 5 minutes, the smallest budget measured to pass copy-the-source (docs/translation.md)
BUDGET = ["--set", "data.max_words=12", "--set", "tokenizer.vocab_size=1000", "--set", "model.n_embd=96",
          "--set", "model.intermediate_size=256", "--set", "model.n_layer=2", "--set", "model.n_decoder_layer=2",
          "--set", "model.block_size=48", "--set", "train.max_steps=1300", "--set", "train.batch_size=96",
          "--set", "train.lr=3e-3", "--set", "train.warmup_steps=40", "--set", "train.eval_every=1300",
          "--set", "train.save_every=0", "--set", "train.threads=1", "--set", "train.progress=false"]


def last_json(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not HAS_DE, reason="no German gettext catalogues on this machine")
def test_train_translate_and_score_against_copy_baseline(tmp_path):
    summary = last_json(runner.invoke(app, ["train", str(EXAMPLE), "--out-dir", str(tmp_path), "--json", *BUDGET]))
    assert summary["val_loss"] < summary["val_loss_before"] - 1.0
    # the run scores its test split: beam search well above copying the source (its whole interval)
    table = {row["decoding"]: row for row in summary["test"]}
    copy_bleu, beam = table["copy source"]["bleu"]["score"], table["beam4"]["bleu"]
    print(f"test split after training: beam 4 BLEU {beam['score']:.2f} [{beam['interval']['low']:.2f}, "
          f"{beam['interval']['high']:.2f}], greedy {table['greedy']['bleu']['score']:.2f}, copy {copy_bleu:.2f}")
    assert beam["interval"]["low"] > copy_bleu
    checkpoint = summary["checkpoint"]
    sources = Path(summary["test_files"]["sources"]).read_text().splitlines()
    references = Path(summary["test_files"]["references"]).read_text().splitlines()
    assert len(sources) == len(references) == summary["data"]["test_pairs"] > 50

    translated = last_json(runner.invoke(app, ["translate", checkpoint, "Open the file", "Save the file as",
                                               "--num-beams", "4", "--json", "--out-dir", str(tmp_path)]))
    assert len(translated["translations"]) == 2 and all(translated["translations"])
    quantized = last_json(runner.invoke(app, ["translate", checkpoint, "Open the file", "Save the file as", "--dtype",
                                              "int8", "--json", "--out-dir", str(tmp_path)]))
    assert len(quantized["translations"]) == 2 and all(quantized["translations"])
    wrong = runner.invoke(app, ["translate", checkpoint, "Open the file", "--dtype", "int2", "--out-dir", str(tmp_path)])
    assert wrong.exit_code == 2 and "unknown dtype 'int2'" in wrong.output and "Traceback" not in wrong.output

    scored = last_json(runner.invoke(app, ["eval", checkpoint, "--sources", summary["test_files"]["sources"],
                                           "--references", summary["test_files"]["references"], "--decoding",
                                           "greedy", "--bootstrap", "200", "--json", "--out-dir", str(tmp_path)]))
    copy, greedy = scored["table"]
    samples = [json.loads(line) for line in (Path(scored["run_dir"]) / "samples.jsonl").read_text().splitlines()]
    # the reported scores are sacrebleu's, recomputed here from the saved translations
    ours = sacrebleu.corpus_bleu([s["greedy"] for s in samples], [references])
    baseline = sacrebleu.corpus_bleu(sources, [references])
    assert greedy["bleu"]["score"] == pytest.approx(ours.score)
    assert copy["bleu"]["score"] == pytest.approx(baseline.score)
    assert greedy["bleu"]["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    low, high = greedy["bleu"]["interval"]["low"], greedy["bleu"]["interval"]["high"]
    assert low <= greedy["bleu"]["score"] <= high
    print(f"test split: greedy BLEU {ours.score:.2f} chrF {greedy['chrf']['score']:.2f}; copy-the-source BLEU "
          f"{baseline.score:.2f} chrF {copy['chrf']['score']:.2f} ({ours.format(signature=True)})")
    assert greedy["bleu"]["score"] > copy["bleu"]["score"]


def one_line_error(result, pattern):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and pattern in result.output


def test_unknown_language_pair_lists_the_pairs_found(tmp_path):
    (tmp_path / "locale" / "fr" / "LC_MESSAGES").mkdir(parents=True)
    (tmp_path / "locale" / "fr" / "LC_MESSAGES" / "x.mo").write_bytes(b"")
    result = runner.invoke(app, ["train", str(EXAMPLE), "--out-dir", str(tmp_path), "--set", "data.pair=en-xx",
                                 "--set", "data.locale_dir=" + str(tmp_path / "locale")])
    one_line_error(result, "no gettext catalogues for the language pair 'en-xx'")
    assert "pairs found: en-fr" in result.output
    assert not list(tmp_path.glob("train-*"))  # no run directory for a mistake found early


def test_unaligned_files_name_both_line_counts(tmp_path):
    (tmp_path / "s.en").write_text("a b c\nd e f\ng h i\n")
    (tmp_path / "r.de").write_text("a b c\n")
    result = runner.invoke(app, ["train", str(EXAMPLE), "--out-dir", str(tmp_path), "--set",
                                 f"data.sources={tmp_path / 's.en'}", "--set", f"data.references={tmp_path / 'r.de'}"])
    one_line_error(result, "has 3 lines but")
    assert "has 1" in result.output
    assert not list(tmp_path.glob("train-*"))


def test_translate_refuses_a_gpt_checkpoint(tmp_path):
    result = runner.invoke(app, ["translate", str(tmp_path / "nope"), "hello"])
    one_line_error(result, "not a model directory")
