"""generate(): KV cache against full recomputation, batching against one by one, seeded sampling,
stop strings, streaming and the errors a user can hit."""

import pytest
import torch

from fissure.decode import Decoding, GenerationOutput, generate, truncate_at_stop
from fissure.errors import GenerationError

PROMPTS = [[5, 17, 3, 9, 44], [8, 2], [60, 61, 62, 63, 64, 65, 66, 67], [1]]


def recompute_greedy(model, prompt, n, penalty=1.0):
    """Greedy decoding the slow way: the whole sequence through the model at every step."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([seq]))[0, -1]
            seen = torch.tensor(sorted(set(seq)))
            logits[seen] = torch.where(logits[seen] < 0, logits[seen] * penalty, logits[seen] / penalty)
            seq.append(int(logits.argmax()))
    return seq[len(prompt):]


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_kv_cache_generation_equals_full_recompute(hf_gpt2, penalty):
    _, ours = hf_gpt2
    d = Decoding(max_new_tokens=25, repetition_penalty=penalty)
    for prompt in PROMPTS:
        assert generate(ours, [prompt], d).sequences[0] == recompute_greedy(ours, prompt, 25, penalty)


def single(model, d, eos=None):
    return [generate(model, [p], d, eos_token_id=eos) for p in PROMPTS]


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_batched_equals_one_by_one(hf_gpt2, penalty):
    _, ours = hf_gpt2
    d = Decoding(max_new_tokens=20, repetition_penalty=penalty)
    alone = single(ours, d)
    assert generate(ours, PROMPTS, d).sequences == [o.sequences[0] for o in alone]


def test_rows_finishing_early_leave_the_batch_without_changing_the_others(hf_gpt2):
    """An eos that some rows produce early and others late or never: rows drop out of the batch
    (and with them the padding) mid-generation; every row still equals its solo run."""
    _, ours = hf_gpt2
    d = Decoding(max_new_tokens=20)
    free = single(ours, d)
    eos = free[0].sequences[0][1]
    alone = single(ours, d, eos)
    batched = generate(ours, PROMPTS, d, eos_token_id=eos)
    assert batched.sequences == [o.sequences[0] for o in alone]
    assert batched.finish_reasons == [o.finish_reasons[0] for o in alone]
    assert "eos" in batched.finish_reasons and "length" in batched.finish_reasons
    for seq, reason in zip(batched.sequences, batched.finish_reasons):
        assert (seq[-1] == eos and eos not in seq[:-1]) if reason == "eos" else len(seq) == 20
    # the short prompt ends at once: the long one then runs unpadded, without a mask
    long, short = PROMPTS[2], PROMPTS[1]
    eos = free[1].sequences[0][0]
    assert eos not in free[2].sequences[0]
    out = generate(ours, [long, short], d, eos_token_id=eos)
    assert out.sequences == [free[2].sequences[0], [eos]]


def sampling(seed, **kw):
    return Decoding(max_new_tokens=30, do_sample=True, temperature=1.5, seed=seed, **kw)


@pytest.mark.parametrize("kw", [{}, {"top_p": 0.9}, {"top_k": 10}])
def test_sampling_is_seeded(hf_gpt2, kw):
    _, ours = hf_gpt2
    a = generate(ours, PROMPTS, sampling(1, **kw)).sequences
    assert a == generate(ours, PROMPTS, sampling(1, **kw)).sequences
    assert a != generate(ours, PROMPTS, sampling(2, **kw)).sequences
    assert a != generate(ours, PROMPTS, Decoding(max_new_tokens=30)).sequences


@pytest.mark.parametrize("kw", [{"top_k": 1}, {"top_p": 1e-6}, {"temperature": 0.0}])
def test_degenerate_sampling_is_greedy(hf_gpt2, kw):
    _, ours = hf_gpt2
    greedy = generate(ours, PROMPTS, Decoding(max_new_tokens=15)).sequences
    assert generate(ours, PROMPTS, Decoding(max_new_tokens=15, do_sample=True, seed=3, **kw)).sequences == greedy


def test_sampled_tokens_lie_in_the_top_k(hf_gpt2):
    _, ours = hf_gpt2
    prompt = PROMPTS[0]
    out = generate(ours, [prompt], Decoding(max_new_tokens=12, do_sample=True, top_k=3, seed=0)).sequences[0]
    seq = list(prompt)
    with torch.no_grad():
        for tok in out:
            assert tok in ours(torch.tensor([seq]))[0, -1].topk(3).indices.tolist()
            seq.append(tok)


def as_text(ids):
    return "".join(f"<{i}>" for i in ids)


def test_stop_strings_end_a_row(hf_gpt2):
    _, ours = hf_gpt2
    d = Decoding(max_new_tokens=20)
    free = generate(ours, PROMPTS, d).sequences
    stop = as_text(free[0][3:5])  # two tokens long, completed by the 5th token of row 0
    out = generate(ours, PROMPTS, Decoding(max_new_tokens=20, stop=[stop, "never"]), decode_fn=as_text)
    assert out.finish_reasons[0] == "stop"
    first = next(i for i in range(len(free[0]) - 1) if free[0][i:i + 2] == free[0][3:5])
    assert out.sequences[0] == free[0][: first + 2]  # tokens kept up to the one completing the stop
    for row in range(1, len(PROMPTS)):  # the others run on unless they contain the string too
        expect = "stop" if stop in as_text(free[row]) else "length"
        assert out.finish_reasons[row] == expect
        if expect == "length":
            assert out.sequences[row] == free[row]


def test_beam_search_cuts_at_a_stop_string(hf_gpt2):
    _, ours = hf_gpt2
    d = Decoding(max_new_tokens=12, num_beams=3)
    free = generate(ours, [PROMPTS[0]], d).sequences[0]
    stop = as_text(free[5:7])
    out = generate(ours, [PROMPTS[0]], Decoding(max_new_tokens=12, num_beams=3, stop=[stop]), decode_fn=as_text)
    assert out.finish_reasons == ["stop"]
    assert out.sequences[0] == free[: len(out.sequences[0])] and as_text(out.sequences[0]).endswith(stop)


def test_truncate_at_stop():
    assert truncate_at_stop("abc STOP def END", ["END", "STOP"]) == "abc "
    assert truncate_at_stop("abc", ["x", ""]) == "abc"
    assert truncate_at_stop("abc", []) == "abc"


def test_streaming_callback_sees_every_token(hf_gpt2):
    _, ours = hf_gpt2
    seen = []
    out = generate(ours, [PROMPTS[1]], Decoding(max_new_tokens=9), on_token=lambda r, t: seen.append((r, t)))
    assert seen == [(0, t) for t in out.sequences[0]]
    streamed = {0: [], 1: []}
    out = generate(ours, PROMPTS[:2], sampling(4), on_token=lambda r, t: streamed[r].append(t))
    assert [streamed[0], streamed[1]] == out.sequences


def test_prompts_that_do_not_fit_are_a_clear_error(hf_gpt2):
    _, ours = hf_gpt2  # context 64
    with pytest.raises(GenerationError, match=r"^prompt \(70 tokens\) \+ max_new_tokens \(1\) exceeds the model's "
                                              r"context of 64 tokens$"):
        generate(ours, [[1] * 70], Decoding(max_new_tokens=1))
    with pytest.raises(GenerationError, match=r"prompt \(10 tokens\) \+ max_new_tokens \(60\)"):
        generate(ours, [[1, 2], [1] * 10], Decoding(max_new_tokens=60))
    with pytest.raises(GenerationError, match="empty prompt"):
        generate(ours, [[3], []], Decoding(max_new_tokens=5))
    assert len(generate(ours, [[1] * 54], Decoding(max_new_tokens=10)).sequences[0]) == 10  # exactly fits


def test_no_prompts_no_output(hf_gpt2):
    assert generate(hf_gpt2[1], [], Decoding()) == GenerationOutput([], [])
