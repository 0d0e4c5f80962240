"""Our BERT against HF ``transformers.BertForPreTraining`` on a small random config with the same
weights: MLM and NSP logits, with padding and two segments."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from fissure.models.bert import Bert, BertConfig  # noqa: E402
from fissure.models.hf_bert import bert_from_hf_state_dict, config_from_hf_bert, load_hf_bert_dir  # noqa: E402

torch.set_num_threads(1)


def hf_model(seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=48, max_position_embeddings=24, type_vocab_size=2,
                                  layer_norm_eps=1e-12, pad_token_id=0, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0, **overrides)
    model = transformers.BertForPreTraining(cfg).eval()
    with torch.no_grad():  # HF initialises LayerNorms to (1, 0) and the MLM bias to 0: make them count
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("predictions.bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 97, (3, 11), generator=g)
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 7:] = 0  # padded rows
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    types = torch.zeros(3, 11, dtype=torch.long)
    types[0, 5:] = 1
    types[1, 3:7] = 1
    return ids, mask, types


def test_logits_match_hf_bert_for_pretraining():
    hf = hf_model()
    ours = bert_from_hf_state_dict(config_from_hf_bert(hf.config.to_dict()), hf.state_dict())
    ids, mask, types = batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        mlm, nsp = ours(ids, attention_mask=mask, token_type_ids=types)
    real = mask.bool()  # HF's logits at padded positions are also defined; compare everywhere and at real tokens
    torch.testing.assert_close(mlm, ref.prediction_logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(mlm[real], ref.prediction_logits[real], atol=1e-4, rtol=0)
    torch.testing.assert_close(nsp, ref.seq_relationship_logits, atol=1e-4, rtol=0)
    assert (mlm - ref.prediction_logits).abs().max() < 1e-4 < ref.prediction_logits.abs().max()


def test_padding_changes_nothing_for_real_tokens():
    """A padded row equals the same row unpadded (on its real tokens): padding is invisible."""
    hf = hf_model(seed=3)
    ours = bert_from_hf_state_dict(config_from_hf_bert(hf.config.to_dict()), hf.state_dict())
    ids, mask, types = batch()
    with torch.no_grad():
        mlm, nsp = ours(ids, attention_mask=mask, token_type_ids=types)
        alone, nsp_alone = ours(ids[2:, :4], token_type_ids=types[2:, :4])
    torch.testing.assert_close(mlm[2, :4], alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(nsp[2], nsp_alone[0], atol=1e-5, rtol=0)


def test_mlm_positions_select_the_same_logits():
    model = Bert(BertConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16, intermediate_size=32,
                            dropout=0.0)).eval()
    ids = torch.randint(1, 50, (2, 9))
    where = torch.rand(2, 9) < 0.3
    where[0, 1] = True
    with torch.no_grad():
        full, _ = model(ids)
        picked, _ = model(ids, mlm_positions=where)
    torch.testing.assert_close(picked, full[where])


def test_tied_decoder_and_hf_dir_loader(tmp_path):
    hf = hf_model(seed=5)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ours = load_hf_bert_dir(tmp_path)
    ids, mask, types = batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        mlm, nsp = ours(ids, attention_mask=mask, token_type_ids=types)
    torch.testing.assert_close(mlm, ref.prediction_logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(nsp, ref.seq_relationship_logits, atol=1e-4, rtol=0)
    with torch.no_grad():  # the decoder is the word embedding: moving one row moves that token's logit
        ours.tok_emb.weight[7] += 1.0
        moved, _ = ours(ids, attention_mask=mask, token_type_ids=types)
    assert not torch.allclose(moved[..., 7], mlm[..., 7])


def test_hf_masked_lm_weights_load_without_nsp_head():
    torch.manual_seed(0)
    cfg = hf_model().config
    hf = transformers.BertForMaskedLM(cfg).eval()
    ours = bert_from_hf_state_dict(config_from_hf_bert(cfg.to_dict()), hf.state_dict())
    ids, mask, types = batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        mlm, _ = ours(ids, attention_mask=mask, token_type_ids=types)
    torch.testing.assert_close(mlm, ref, atol=1e-4, rtol=0)


def test_checkpoint_round_trip(tmp_path):
    from fissure.text.tokenizers import train_wordpiece
    from fissure.train.checkpoint import load_checkpoint, save_checkpoint

    tok = train_wordpiece(["the cat sat on the mat. the dog sat on the log."] * 5, vocab_size=60)
    model = Bert(BertConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16,
                            intermediate_size=32, dropout=0.0, pad_token_id=tok.pad_id)).eval()
    save_checkpoint(tmp_path / "ck", model, tok)
    loaded, tok2 = load_checkpoint(tmp_path / "ck")
    assert loaded.family == "bert" and tok2.mask_id == tok.mask_id
    ids = torch.tensor([tok.encode("the cat sat")])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids)[0], model(ids)[0])


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="divisible"):
        BertConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="pad_token_id"):
        BertConfig(vocab_size=10, pad_token_id=10)


def test_attention_maps_match_hf_eager_attentions_with_padding():
    from fissure.models.attention_maps import attention_maps

    hf = hf_model(seed=7)
    hf.config._attn_implementation = "eager"
    hf.bert.config._attn_implementation = "eager"
    ours = bert_from_hf_state_dict(config_from_hf_bert(hf.config.to_dict()), hf.state_dict()).eval()
    ids, mask, types = batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, output_attentions=True).attentions
    maps = attention_maps(ours, ids, attention_mask=mask, token_type_ids=types)
    assert len(maps) == len(ref) == hf.config.num_hidden_layers
    for got, want in zip(maps, ref):
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=1e-5)
        assert got[0].triu(1).sum() > 0  # bidirectional: the unpadded row attends forward too
        assert got[1, :, :, 7:].abs().max() == 0  # no weight on padding
