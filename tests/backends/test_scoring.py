"""Rolling-window scoring (backends/scoring.py) against HF's strided perplexity recipe."""

import pytest
import torch

from fissure.backends.scoring import rolling_windows, score_sequences
from fissure.errors import ConfigError


def hf_strided_loglikelihood(hf, seq: list[int], max_length: int, stride: int) -> tuple[float, int]:
    """HF's "perplexity of fixed-length models" recipe, scored by the HF model's own ``labels=`` loss.

    Two changes from the published loop: tokens are counted exactly (labels that survive the
    model's internal shift), and the last window keeps its full context as lm-eval's rolling
    windows do (a no-op when the windows tile the sequence exactly).
    """
    ids = torch.tensor([seq])
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, len(seq), stride):
        end = min(begin + max_length, len(seq))
        trg_len = end - prev_end
        begin = max(0, end - max_length)  # lm-eval: full context for the last window
        input_ids = ids[:, begin:end]
        labels = input_ids.clone()
        labels[:, :-trg_len] = -100
        with torch.no_grad():
            loss = hf(input_ids, labels=labels).loss
        n = int((labels[:, 1:] != -100).sum())
        nll_sum += loss.item() * n
        n_tokens += n
        prev_end = end
        if end == len(seq):
            break
    return -nll_sum, n_tokens


def random_tokens(n: int, seed: int = 0, vocab: int = 101) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("window,stride,n_text,prefix", [
    (16, 16, 64, 7),     # disjoint windows tiling the text exactly (the published HF loop)
    (16, 5, 61, None),   # overlapping windows, exact tiling, first token context only
    (16, 16, 50, 7),     # disjoint, ragged last window
    (12, 7, 45, None),   # overlapping, ragged last window
    (20, 20, 9, 7),      # text shorter than one window
])
def test_matches_hf_strided_recipe(hf_gpt2, window, stride, n_text, prefix):
    hf, ours = hf_gpt2
    tokens = random_tokens(n_text)
    seq = ([prefix] if prefix is not None else []) + tokens
    # our window reads `window` tokens and scores the `window` tokens they predict: HF's recipe
    # needs one token more, whose logit it never uses
    ref_ll, ref_n = hf_strided_loglikelihood(hf, seq, window + 1, stride)
    (ll, n), = score_sequences(ours, [([prefix] if prefix is not None else []) + tokens], window, stride)
    assert n == ref_n == (n_text if prefix is not None else n_text - 1)
    assert ll == pytest.approx(ref_ll, rel=1e-4)
    assert ll < 0


def test_context_changes_the_score(hf_gpt2):
    # guards the comparison above against a reference that ignores context
    _, ours = hf_gpt2
    tokens = random_tokens(60)
    (disjoint, _), = score_sequences(ours, [[7] + tokens], 16, 16)
    (overlapping, _), = score_sequences(ours, [[7] + tokens], 16, 4)
    assert abs(disjoint - overlapping) > 1e-3


def test_batch_size_does_not_change_results(hf_gpt2):
    _, ours = hf_gpt2
    tokens = random_tokens(150, seed=1)
    results = [score_sequences(ours, [[3] + tokens], 24, 10, batch_size=b)[0] for b in (1, 2, 5, 64)]
    for ll, n in results[1:]:
        assert n == results[0][1]
        assert ll == pytest.approx(results[0][0], rel=1e-6)
    seqs = [[0] + [ord(c) % 101 for c in "a" * k] for k in (3, 40, 17, 90, 1, 55)]
    by_batch = [score_sequences(ours, seqs, 16, 8, batch_size=b) for b in (1, 3, 32)]
    for scores in by_batch[1:]:
        for (ll, n), (ll0, n0) in zip(scores, by_batch[0]):
            assert n == n0
            assert ll == pytest.approx(ll0, rel=1e-6)


@pytest.mark.parametrize("n_tokens", [0, 1, 2, 5, 16, 17, 33, 100])
@pytest.mark.parametrize("window,stride", [(1, 1), (4, 4), (8, 3), (16, 16), (16, 1)])
def test_rolling_windows_score_every_token_once_with_full_context(n_tokens, window, stride):
    windows = rolling_windows(n_tokens, window, stride)
    scored = []
    for i, (start, end, n) in enumerate(windows):
        assert 1 <= n <= (window if i == 0 else stride)
        assert end - 1 - start == min(window, end - 1)  # reads as many tokens as it may
        assert end - n - start >= min(window - stride + 1, end - n)  # context before the first scored token
        scored.extend(range(end - n, end))
    assert scored == list(range(1, n_tokens))
    assert sum(n for _, _, n in windows) == max(n_tokens - 1, 0)
    if stride == window:  # lm-eval's disjoint windows: each token is read once, but the last
        read = [t for start, end, _ in windows[:-1] for t in range(start, end - 1)]  # window reaches back
        assert len(read) == len(set(read))


def test_rolling_windows_rejects_bad_stride():
    for window, stride in [(8, 0), (8, 9), (0, 0), (8, -1)]:
        with pytest.raises(ConfigError):
            rolling_windows(10, window, stride)


def test_window_longer_than_model_context(hf_gpt2):
    _, ours = hf_gpt2
    with pytest.raises(ConfigError, match="exceeds"):
        score_sequences(ours, [random_tokens(10)], window=ours.max_positions + 1, stride=8)


def test_scoring_restores_train_mode(hf_gpt2):
    _, ours = hf_gpt2
    ours.train()
    score_sequences(ours, [random_tokens(20)], 8, 8)
    assert ours.training
