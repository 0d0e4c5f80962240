"""Our WordPiece tokenizer against HF's BertTokenizer (the slow, pure-Python one) given the same vocabulary."""

import pytest

transformers = pytest.importorskip("transformers")

from fissure.text.tokenizers import BERT_SPECIAL_TOKENS, load_tokenizer, train_wordpiece  # noqa: E402

TEXTS = ["The cats were sitting on the mats, unhappily.", "Dogs bark; birds sing!", "Über naïve café owners."]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    corpus = ["the cat sat on the mat. cats sitting, unhappy dogs bark and birds sing. uber naive cafe owners."] * 30
    tok = train_wordpiece(corpus, vocab_size=90)
    path = tmp_path_factory.mktemp("wp")
    vocab = sorted(tok.hf.get_vocab().items(), key=lambda kv: kv[1])
    (path / "vocab.txt").write_text("".join(t + "\n" for t, _ in vocab), encoding="utf-8")
    return tok, transformers.BertTokenizer(str(path / "vocab.txt"), do_lower_case=True)


@pytest.mark.parametrize("text", TEXTS)
def test_ids_match_hf_bert_tokenizer(trained, text):
    tok, hf = trained
    assert tok.encode(text) == hf(text, add_special_tokens=False)["input_ids"]
    assert [tok.cls_id, *tok.encode(text), tok.sep_id] == hf(text)["input_ids"]


def test_specials_word_starts_and_reload(trained, tmp_path):
    tok, hf = trained
    assert [tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id] == \
        hf.convert_tokens_to_ids(list(BERT_SPECIAL_TOKENS))
    ids = tok.encode("sittingcats unhappydog")
    pieces = hf.convert_ids_to_tokens(ids)
    assert [tok.continues_word[i] for i in ids] == [p.startswith("##") for p in pieces]
    assert any(tok.continues_word[i] for i in ids)  # the test text does split into pieces
    assert tok.encode("a [MASK] b").count(tok.mask_id) == 0  # literal specials in text are plain characters
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.encode(TEXTS[0]) == tok.encode(TEXTS[0]) and again.mask_id == tok.mask_id
