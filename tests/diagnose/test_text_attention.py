"""Attention of a text through a loaded model (fissure.diagnose.attention): the maps equal HF's eager
attentions on the same token ids, head entropies equal scipy's, and backends without a torch
module are refused in one line."""

import numpy as np
import pytest
import torch
from scipy import stats

import fissure
from fissure.diagnose.attention import NoAttentionAccessError, head_summary, text_attention


def test_text_attention_matches_hf_and_entropies_match_scipy(tiny_llama):
    path, hf, _ = tiny_llama
    hf.set_attn_implementation("eager")
    lm = fissure.load(str(path))  # the native Llama, projections fused
    att = text_attention(lm, "the cat sat on the mat <b>&")
    assert att.tokens and "".join(att.tokens).endswith("<b>&")
    with torch.no_grad():
        want = hf(torch.tensor([att.ids]), output_attentions=True).attentions
    assert len(att.maps) == len(want)
    for got, w in zip(att.maps, want):
        torch.testing.assert_close(got, w[0], atol=1e-5, rtol=0)
    summary = head_summary(att)
    T = len(att.ids)
    for layer, heads in zip(att.maps, summary):
        for h, s in enumerate(heads):
            rows = layer[h].double().numpy()
            assert s["entropy"] == pytest.approx(np.mean([stats.entropy(r) for r in rows]), abs=1e-5)
            rel = np.mean([stats.entropy(rows[i][: i + 1]) / np.log(i + 1) for i in range(1, T)])
            assert s["relative_entropy"] == pytest.approx(rel, abs=1e-5)
            assert s["first_token_share"] == pytest.approx(rows[:, 0].mean(), abs=1e-6)


def test_transformers_backend_is_refused_naming_the_native_ones(tiny_llama):
    path, _, _ = tiny_llama
    lm = fissure.load(str(path), backend="transformers")
    with pytest.raises(NoAttentionAccessError) as exc:
        text_attention(lm, "the cat")
    message = str(exc.value)
    assert "transformers" in message and "smollm2" in message and "checkpoint" in message and "\n" not in message


def test_fissure_attention_on_an_hf_bert_directory_equals_hf_and_is_bidirectional(tmp_path):
    """A BERT through the CLI: the saved maps equal HF BertModel's eager attentions on [CLS] text [SEP];
    relative entropies use log T (every row sees every token)."""
    import json

    import transformers
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from fissure.cli import app
    from fissure.text.tokenizers import train_wordpiece

    tok = train_wordpiece(["the cat sat on the mat. the dog sat on the log."] * 20, vocab_size=80)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.hf, unk_token="[UNK]", pad_token="[PAD]",
                                                cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64, pad_token_id=tok.pad_id,
                                  attn_implementation="eager")
    hf = transformers.BertModel(cfg).eval()
    hf.save_pretrained(tmp_path / "bert", safe_serialization=True)
    fast.save_pretrained(tmp_path / "bert")
    result = CliRunner().invoke(app, ["attention", str(tmp_path / "bert"), "the cat sat", "--json",
                                      "--out-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["causal"] is False and summary["tokens"][0] == "[CLS]" and summary["tokens"][-1] == "[SEP]"
    with torch.no_grad():
        want = hf(torch.tensor([summary["ids"]]), output_attentions=True).attentions
    maps = load_file(str(tmp_path / "runs" / summary["run_dir"].split("/")[-1] / "attention.safetensors"))
    T = len(summary["ids"])
    for i, w in enumerate(want):
        torch.testing.assert_close(maps[f"layer_{i}"], w[0], atol=1e-5, rtol=0)
        rows = maps[f"layer_{i}"].double().numpy()
        for h, s in enumerate(summary["heads"][i]):
            assert s["relative_entropy"] == pytest.approx(np.mean([stats.entropy(r) / np.log(T) for r in rows[h]]),
                                                          abs=1e-4)
