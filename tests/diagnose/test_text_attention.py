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
