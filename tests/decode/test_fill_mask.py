"""fill_mask against HF's own ``pipeline("fill-mask")`` on a random HF BERT and a WordPiece tokenizer
(the same weights loaded into our Bert through load_masked_lm)."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from fissure.backends.masked_lm import load_masked_lm  # noqa: E402
from fissure.decode.fill_mask import MAX_MASKS, fill_mask  # noqa: E402
from fissure.errors import UserError  # noqa: E402
from fissure.text.tokenizers import train_wordpiece  # noqa: E402

torch.set_num_threads(1)

TEXT = ("the cat sat on the mat. the dog sat on the log. a bird sang in the tree and the cat watched it. "
        "the sun rose over the hills while the river ran to the sea.")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf-bert")
    tok = train_wordpiece([TEXT] * 20, vocab_size=120)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.hf, unk_token="[UNK]", pad_token="[PAD]",
                                                cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                                  pad_token_id=tok.pad_id)
    model = transformers.BertForMaskedLM(cfg).eval()
    with torch.no_grad():  # spread the predictions so that the top tokens differ clearly
        model.cls.predictions.bias.normal_(0, 2.0)
    model.save_pretrained(path, safe_serialization=True)
    fast.save_pretrained(path)
    return path, model, fast


@pytest.mark.parametrize("text", ["the [MASK] sat on the mat.", "a [MASK] sang in the [MASK]."])
def test_matches_hf_fill_mask_pipeline(hf_dir, text):
    path, hf_model, fast = hf_dir
    reference = transformers.pipeline("fill-mask", model=hf_model, tokenizer=fast, device="cpu")(text, top_k=4)
    model, tokenizer = load_masked_lm(path)
    ours = fill_mask(model, tokenizer, text, top_k=4)
    rows = [ours] if isinstance(ours[0], dict) else ours
    ref_rows = [reference] if isinstance(reference[0], dict) else reference
    assert len(rows) == len(ref_rows) == text.count("[MASK]")
    for row, ref_row in zip(rows, ref_rows):
        assert [r["token"] for r in row] == [r["token"] for r in ref_row]
        assert [r["token_str"] for r in row] == [r["token_str"] for r in ref_row]
        assert [r["sequence"] for r in row] == [r["sequence"] for r in ref_row]
        assert [r["score"] for r in row] == pytest.approx([r["score"] for r in ref_row], abs=1e-5)
        assert set(row[0]) == set(ref_row[0]) == {"score", "token", "token_str", "sequence"}


def test_bad_texts(hf_dir):
    model, tokenizer = load_masked_lm(hf_dir[0])
    with pytest.raises(UserError, match=r"no \[MASK\] token"):
        fill_mask(model, tokenizer, "the cat sat")
    with pytest.raises(UserError, match=f"at most {MAX_MASKS}"):
        fill_mask(model, tokenizer, " ".join(["[MASK]"] * (MAX_MASKS + 1)))
    with pytest.raises(UserError, match="reads at most 64"):
        fill_mask(model, tokenizer, "the cat " * 40 + "[MASK]")


def test_the_fill_mask_pipeline_returns_what_hf_returns(hf_dir):
    import fissure

    path, hf_model, fast = hf_dir
    texts = ["the [MASK] sat on the mat.", "a [MASK] sang in the [MASK]."]
    reference = transformers.pipeline("fill-mask", model=hf_model, tokenizer=fast, device="cpu")
    ours = fissure.pipeline("fill-mask", model=path)

    def rounded(value):
        if isinstance(value, list):
            return [rounded(v) for v in value]
        return {k: round(v, 4) if k == "score" else v for k, v in value.items()}

    assert rounded(ours(texts[0])) == rounded(reference(texts[0]))  # default top_k 5, one list
    assert rounded(ours(texts, top_k=3)) == rounded(reference(texts, top_k=3))  # per text, per mask
