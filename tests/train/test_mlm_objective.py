"""BERT's masking and NSP pairs: the rates the paper states, checked on large samples within
4 binomial standard deviations; specials and padding never masked; NSP pairs from the right documents."""

import math
import random

import pytest
import torch

from fissure.train.batches import IGNORE
from fissure.train.mlm import NSP_IS_NEXT, NSP_RANDOM, MaskedLM, PretrainingPairs, build_pairs, mask_tokens, \
    split_sentences

torch.set_num_threads(1)

VOCAB, MASK, SPECIALS = 1000, 4, torch.arange(5)  # ids 0..4: [PAD] [UNK] [CLS] [SEP] [MASK]


def within(count: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def random_batch(seed=0, rows=300, width=200):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (rows, width), generator=g)
    lengths = torch.randint(width // 2, width + 1, (rows,), generator=g)
    real = torch.arange(width)[None] < lengths[:, None]
    ids[:, 0] = 2
    ids[torch.arange(rows), lengths - 1] = 3
    ids[:, width // 3] = 3  # a [SEP] between segments
    ids[~real] = 0
    maskable = real & ~torch.isin(ids, SPECIALS)
    return ids, real, maskable


def test_selection_and_80_10_10_rates():
    ids, real, maskable = random_batch()
    random_ids = torch.arange(5, VOCAB)
    inputs, labels = mask_tokens(ids, maskable, torch.Generator().manual_seed(1), mask_id=MASK, random_ids=random_ids)
    selected = labels != IGNORE
    n, k = int(maskable.sum()), int(selected.sum())
    assert within(k, n, 0.15), (k, n)
    assert torch.equal(labels[selected], ids[selected])
    became_mask = int((inputs[selected] == MASK).sum())
    kept = int((inputs[selected] == ids[selected]).sum())
    changed = k - became_mask - kept
    p_same = 1 / len(random_ids)  # a random replacement that draws the original token counts as kept
    assert within(became_mask, k, 0.8)
    assert within(changed, k, 0.1 * (1 - p_same))
    assert within(kept, k, 0.1 + 0.1 * p_same)
    assert torch.equal(inputs[~selected], ids[~selected])  # unselected tokens are untouched
    assert not torch.isin(inputs[selected & (inputs != MASK)], SPECIALS).any()  # random tokens are never special


def test_specials_and_padding_are_never_selected():
    ids, real, maskable = random_batch(seed=2)
    for seed in range(5):
        inputs, labels = mask_tokens(ids, maskable, torch.Generator().manual_seed(seed), mask_id=MASK,
                                     random_ids=torch.arange(5, VOCAB), mask_prob=0.9)
        assert not (labels != IGNORE)[~maskable].any()
        assert torch.equal(inputs[~maskable], ids[~maskable])
        assert (labels != IGNORE)[maskable].float().mean() > 0.85


def test_whole_word_masking_selects_words_whole_at_15_percent():
    ids, real, maskable = random_batch(seed=3)
    g = torch.Generator().manual_seed(4)
    word_start = torch.rand(ids.shape, generator=g) < 0.6  # words of about 1.7 pieces
    word_start[:, 0] = True
    word_start |= ~maskable  # specials and padding are words of their own
    inputs, labels = mask_tokens(ids, maskable, g, mask_id=MASK, random_ids=torch.arange(5, VOCAB),
                                 word_start=word_start)
    selected = labels != IGNORE
    word_id = word_start.long().cumsum(1)
    words = selected_words = 0
    for row in range(ids.shape[0]):
        for w in word_id[row][maskable[row]].unique():
            pieces = (word_id[row] == w) & maskable[row]
            chosen = selected[row][pieces]
            assert chosen.all() or not chosen.any(), "a word was masked in part"
            words += 1
            selected_words += int(chosen.all())
    assert within(selected_words, words, 0.15)


def test_masked_lm_objective_uses_the_data_vocabulary():
    class Tok:
        pad_id, mask_id, vocab_size = 0, 4, 50
        special_ids = frozenset(range(5))
        continues_word = [False] * 50

    pairs = [build_pairs([[list(range(5 + i, 15 + i)), list(range(20, 30))]] * 3, 32, 2, 3, nsp=False,
                         rng=random.Random(0))[0] for i in range(10)]
    data = PretrainingPairs(pairs, Tok(), nsp=False)
    objective = MaskedLM(mask_prob=0.5)
    inputs, mask, types, labels, nsp = objective.sample_batch(data, 64, 32, torch.Generator().manual_seed(0))
    assert nsp is None and inputs.shape == labels.shape == mask.shape
    assert not (labels[:, 0] != IGNORE).any() and not (labels[mask == 0] != IGNORE).any()
    first = [b[0] for b in objective.eval_batches(data, 4, 32, 2)]
    again = [b[0] for b in objective.eval_batches(data, 4, 32, 2)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # evaluation masks are fixed


def numbered_documents(n_docs=40, sentences=12):
    """Sentence j of document d is the tokens [1000*d + j] * (3 + j % 4): its content says where it came from."""
    return [[[1000 * d + j + 10] * (3 + j % 4) for j in range(sentences)] for d in range(n_docs)]


def test_nsp_pairs_balance_and_provenance():
    docs = numbered_documents(n_docs=200)
    pairs = build_pairs(docs, 24, cls_id=2, sep_id=3, nsp=True, rng=random.Random(0))
    labels = [p.nsp_label for p in pairs]
    assert within(labels.count(NSP_RANDOM), len(labels), 0.5) and len(labels) > 300
    for p in pairs:
        assert len(p.ids) <= 24 and p.ids[0] == 2 and p.ids[-1] == 3 and p.ids.count(3) == 2
        sep = p.ids.index(3)
        a, b = p.ids[1:sep], p.ids[sep + 1:-1]
        assert p.token_types == [0] * (sep + 1) + [1] * (len(b) + 1)
        doc_a, doc_b = {t // 1000 for t in a}, {t // 1000 for t in b}
        assert len(doc_a) == 1 and len(doc_b) == 1
        if p.nsp_label == NSP_IS_NEXT:  # B comes after A in the same document (truncation may cut A's end)
            assert doc_a == doc_b and b[0] > a[-1]
        else:
            assert doc_a != doc_b


def test_without_nsp_rows_are_single_segments():
    pairs = build_pairs(numbered_documents(5), 16, cls_id=2, sep_id=3, nsp=False, rng=random.Random(0))
    assert pairs and all(p.ids.count(3) == 1 and set(p.token_types) == {0} and len(p.ids) <= 16 for p in pairs)


def test_split_sentences():
    text = "The cat sat.  It purred!\nWas it happy? Yes\n\nA new paragraph\nwrapped here."
    assert split_sentences(text) == ["The cat sat.", "It purred!", "Was it happy?", "Yes", "A new paragraph wrapped here."]


def test_bad_mask_prob():
    with pytest.raises(ValueError, match="mask_prob"):
        MaskedLM(mask_prob=0)
