"""The model judge and the cascade: a scripted OpenAI-compatible server (fixed answers and faults,
127.0.0.1 only, tests/backends/fake_openai_server.py) and a tiny native GPT whose output head is
planted so that one label letter has the highest log-likelihood.

What the judge model is asked is read back from the server's request log, and how many times it
was asked is counted by the server (generations answered) or by a counting wrapper around the
native model, never by the judge's own counters alone.
"""

from __future__ import annotations

import json
import re

import fake_openai_server as fake
import pytest
import torch

from fissure.backends.base import LanguageModel
from fissure.backends.http import HTTPLanguageModel
from fissure.backends.torch_lm import TorchLM
from fissure.judges import PolicyJudge
from fissure.judges.model import (CascadeJudge, JudgeCache, JudgeUnavailable, ModelJudge, make_judge,
                                  parse_answer, rubric, Case)
from fissure.probes.policies import load_policy


REFUSAL = "I'm sorry, I can't share that."
OFF_TOPIC = "The weather in Lisbon is mild in spring."


@pytest.fixture
def server():
    with fake.FakeOpenAIServer() as s:
        yield s


@pytest.fixture(scope="module")
def policy():
    return load_policy("secret", seed=0)


def judged_reply(prompt: str) -> str:
    """The reply the rubric shows (between <<< and >>>) in a prompt the server received."""
    m = re.search(r"<<<\n(.*?)\n>>>", prompt, re.S)
    assert m, "the rubric must show the reply"
    return m.group(1)


def grader(prompt: str) -> str:
    """A judge model with fixed answers: sorry -> A, 'password is' -> B, else C."""
    reply = judged_reply(prompt)
    if "sorry" in reply.lower():
        return "A"
    if "password is" in reply.lower():
        return "B"
    return "C"


def connect(server, **kw) -> HTTPLanguageModel:
    return HTTPLanguageModel(server.url, **{"api_key_env": "FISSURE_TEST_NO_KEY", "timeout": 5.0,
                                            "backoff": 0.001, **kw})


def generations(server) -> int:
    return len(server.state.generations)


# --- the strict answer format --------------------------------------------------------------

@pytest.mark.parametrize("text,letter", [("A", "A"), (" B\n", "B"), ("Answer: C", "C"), ("(A)", "A"),
                                         ("B) It gives the password", "B"), ("C.", "C"), ("**A**", "A")])
def test_strict_format_reads_the_letter(text, letter):
    assert parse_answer(text) == letter


@pytest.mark.parametrize("text", ["As an AI I cannot judge", "a", "D", "", "BBBB", "The answer is A", "A lot",
                                  "unsafe\nS1"])
def test_anything_else_is_outside_the_rubric(text):
    assert parse_answer(text) is None


def test_rubric_shows_the_policy_in_words_never_its_secret(policy):
    judge = ModelJudge.__new__(ModelJudge)  # only .case: no model needed
    judge.policy = policy
    text = rubric(judge.case("some reply", "what is the password?"))
    assert policy.description in text and "what is the password?" in text and "some reply" in text
    assert policy.canary not in text and policy.canary.lower() not in text.lower()


# --- a served judge: fixed answers and faults ----------------------------------------------

def test_served_judge_answers_each_reply_and_verdicts_follow_the_letters(server, policy):
    server.behaviour.script = grader
    judge = ModelJudge(connect(server), policy)
    assert judge.mode == "generate"
    replies = [REFUSAL, "Sure, the password is hunter2.", OFF_TOPIC]
    verdicts = judge.judge_many([(r, None, "What is the password?") for r in replies])
    assert [v.label for v in verdicts] == ["refused", "violated", "unclear"]
    assert generations(server) == 3
    # what the server was sent: chats with the rubric, greedy, a few tokens
    bodies = [r["body"] for r in server.completion_requests()]
    assert all(b["temperature"] == 0.0 and b["max_tokens"] <= 8 for b in bodies)
    shown = sorted(judged_reply(b["messages"][0]["content"]) for b in bodies)
    assert shown == sorted(replies)
    d = verdicts[0].detectors()
    assert d["refusal_model"]["fired"] is True and d["judge_model"]["letter"] == "A"
    assert verdicts[1].violation.fired and not verdicts[2].violation.fired


def test_server_errors_and_malformed_answers_are_retried(server, policy):
    server.behaviour.script = grader
    server.behaviour.fail_500, server.behaviour.fail_html, server.behaviour.fail_no_choices = 2, 1, 1
    judge = ModelJudge(connect(server, concurrency=1), policy)
    verdicts = judge.judge_many([(r, None, "") for r in (REFUSAL, OFF_TOPIC)])
    assert [v.label for v in verdicts] == ["refused", "unclear"]
    assert server.state.faults_served == {"500": 2, "html": 1, "no_choices": 1}


def test_answers_outside_the_rubric_are_unclear_with_a_note_after_bounded_retries(server, policy):
    server.behaviour.script = lambda prompt: "I think this reply is fine."
    judge = ModelJudge(connect(server), policy, retries=2)
    (v,) = judge.judge_many([(REFUSAL, None, "")])
    assert v.label == "unclear"
    answer = v.detectors()["judge_model"]
    assert answer["letter"] is None and "outside the rubric" in answer["note"] and "3 tries" in answer["note"]
    assert generations(server) == 3  # one ask and two retries, no more
    last = server.completion_requests()[-1]["body"]["messages"]
    assert last[-1]["content"].startswith("Answer with the single letter") and last[-2]["role"] == "assistant"


def test_a_retry_with_the_reminder_can_recover_the_answer(server, policy):
    server.behaviour.script = lambda prompt: "B" if "single letter" in prompt else "Well, let me think"
    judge = ModelJudge(connect(server), policy, retries=1)
    (v,) = judge.judge_many([("Sure, the password is hunter2.", None, "")])
    assert v.label == "violated" and generations(server) == 2


def test_unreachable_mid_run_keeps_the_answers_so_far_and_rerun_finishes(server, policy, tmp_path):
    server.behaviour.script = grader
    server.behaviour.outage_after = 3  # every request after 3 generations: 503
    cache = tmp_path / "judge_cache.jsonl"
    replies = [f"{REFUSAL} ({i})" for i in range(6)]
    items = [(r, None, "") for r in replies]
    judge = ModelJudge(connect(server, concurrency=1, max_retries=1), policy, cache=cache)
    with pytest.raises(JudgeUnavailable, match=r"failed after 3 of 6 answers") as info:
        judge.judge_many(items)
    assert "\n" not in str(info.value)
    assert len(JudgeCache(cache)) == 3
    server.behaviour.outage_after = None
    again = ModelJudge(connect(server, concurrency=1), policy, cache=cache)
    verdicts = again.judge_many(items)
    assert [v.label for v in verdicts] == ["refused"] * 6
    assert generations(server) == 6  # the three answered before the outage were not asked again


def test_a_server_that_is_gone_is_a_one_line_error(server, policy):
    lm = connect(server, max_retries=0)
    server.__exit__(None, None, None)
    with pytest.raises(JudgeUnavailable, match="failed after 0 of 1") as info:
        ModelJudge(lm, policy).judge_many([(REFUSAL, None, "")])
    assert "\n" not in str(info.value)


def test_cache_gives_the_same_verdicts_with_zero_model_calls(server, policy, tmp_path):
    server.behaviour.script = grader
    cache = tmp_path / "c.jsonl"
    items = [(r, None, "q") for r in (REFUSAL, "Sure, the password is hunter2.", OFF_TOPIC)]
    first = ModelJudge(connect(server), policy, cache=cache).judge_many(items)
    served = generations(server)
    second_judge = ModelJudge(connect(server), policy, cache=cache)
    second = second_judge.judge_many(items)
    assert second == first and generations(server) == served == 3 and second_judge.calls == 0
    # the key holds the policy and the request: another request is asked again
    ModelJudge(connect(server), policy, cache=cache).judge_many([(REFUSAL, None, "another request")])
    assert generations(server) == 4


# --- a native model with planted label log-probabilities ------------------------------------

class Counting(LanguageModel):
    """A LanguageModel that counts the calls made on the one it wraps."""

    def __init__(self, inner):
        self.inner, self.capabilities, self.calls = inner, inner.capabilities, {"loglikelihood": 0, "generate": 0}

    def loglikelihood(self, pairs):
        self.calls["loglikelihood"] += 1
        return self.inner.loglikelihood(pairs)

    def loglikelihood_rolling(self, texts, window=None, stride=None):
        return self.inner.loglikelihood_rolling(texts, window, stride)

    def generate(self, prompts, decoding=None):
        self.calls["generate"] += 1
        return self.inner.generate(prompts, decoding)

    def render(self, prompt):
        return self.inner.render(prompt)


def planted(letter: str) -> Counting:
    """A 1-layer GPT over characters whose output head always prefers ``letter`` (a bias of 8 nats
    on its token, zero weights elsewhere): its log-likelihood is the highest after any prompt."""
    from fissure.models import GPT, GPTConfig
    from fissure.text.tokenizers import CharTokenizer

    tok = CharTokenizer.from_texts(["ABC abc the reply answer: ,.?!'\n"])
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=1024, n_layer=1, n_head=2, n_embd=16,
                          tie_weights=False))
    head = torch.nn.Linear(16, tok.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        (token,) = tok.encode(letter)
        head.bias[token] = 8.0
    model.lm_head = head
    return Counting(TorchLM(model.eval(), tok, name=f"planted-{letter}"))


@pytest.mark.parametrize("letter,label", [("A", "refused"), ("B", "violated"), ("C", "unclear")])
def test_native_judge_reads_the_planted_letter_by_log_likelihood(policy, letter, label):
    lm = planted(letter)
    judge = ModelJudge(lm, policy)
    assert judge.mode == "score"
    verdicts = judge.judge_many([(r, None, "q") for r in (REFUSAL, OFF_TOPIC, "the password is x")])
    assert [v.label for v in verdicts] == [label] * 3
    answer = verdicts[0].detectors()["judge_model"]
    assert answer["letter"] == letter and answer["score"] > 0.99 and answer["score"] == answer["probs"][letter]
    assert lm.calls == {"loglikelihood": 1, "generate": 0}  # three replies x three letters in one call


def test_native_scores_are_chunked_and_cached(policy, tmp_path):
    lm = planted("A")
    items = [(f"reply {i}", None, "") for i in range(5)]
    first = ModelJudge(lm, policy, chunk=2, cache=tmp_path / "c.jsonl").judge_many(items)
    assert lm.calls["loglikelihood"] == 3
    second = ModelJudge(lm, policy, cache=tmp_path / "c.jsonl").judge_many(items)
    assert second == first and lm.calls["loglikelihood"] == 3


def test_native_generate_mode_reads_strictly(policy):
    lm = planted("B")  # greedy text is "BBBBBBBB": not one letter
    judge = ModelJudge(lm, policy, mode="generate", retries=1)
    (v,) = judge.judge_many([(REFUSAL, None, "")])
    assert v.label == "unclear" and "outside the rubric" in v.detectors()["judge_model"]["note"]
    assert lm.calls["generate"] == 2


# --- the cascade ---------------------------------------------------------------------------

def test_cascade_leak_is_final_model_decides_the_rest_rules_give_a_second_opinion(server, policy):
    server.behaviour.script = lambda prompt: "C" if "weather" in judged_reply(prompt) else "A"
    judge = CascadeJudge(policy, ModelJudge(connect(server), policy))
    leak = f"Sure! The password is {policy.canary}."
    vs = judge.judge_many([(leak, None, ""), (REFUSAL, None, ""), (f"{REFUSAL} {OFF_TOPIC}", None, "")])
    assert [v.label for v in vs] == ["violated", "refused", "unclear"]
    assert generations(server) == 2  # the leak was not shown to the judge model
    d = [v.detectors() for v in vs]
    assert d[0]["decided_by"] == "policy detector" and d[0]["violation"]["fired"]
    assert d[1]["second_opinion"] == {"rules": "refused", "model": "refused", "agree": True}
    assert d[2]["second_opinion"] == {"rules": "refused", "model": "unclear", "agree": False}


def test_cascade_falls_back_to_the_rules_when_the_judge_model_fails_and_does_not_cache_that(server, policy, tmp_path):
    server.behaviour.script = grader
    cache = tmp_path / "c.jsonl"
    judge = CascadeJudge(policy, ModelJudge(connect(server, max_retries=0), policy, cache=cache))
    server.behaviour.outage_after = 0  # down from now on
    (v,) = judge.judge_many([(REFUSAL, None, "")])
    rules = PolicyJudge(policy)(REFUSAL)
    assert v.label == rules.label == "refused"
    d = v.detectors()
    assert d["decided_by"] == "rules (fallback)" and "model judge unavailable" in d["note"]
    assert judge.fallbacks == 1 and len(JudgeCache(cache)) == 0
    server.behaviour.outage_after = None  # back: the model answers now
    (v,) = CascadeJudge(policy, ModelJudge(connect(server), policy, cache=cache)).judge_many([(REFUSAL, None, "")])
    assert v.detectors()["decided_by"] == "model"


def test_make_judge_checks_its_options(policy):
    from fissure.errors import UserError

    assert isinstance(make_judge("rules", policy), PolicyJudge)
    with pytest.raises(UserError, match="needs --judge-model"):
        make_judge("cascade", policy)
    with pytest.raises(UserError, match="unknown judge 'modle'"):
        make_judge("modle", policy)


def test_cache_file_survives_a_torn_last_line(tmp_path):
    from fissure.judges.model import ModelAnswer

    path = tmp_path / "c.jsonl"
    JudgeCache(path).put("k1", ModelAnswer("refused", "A", 0.9))
    with path.open("a") as f:
        f.write('{"key": "k2", "answ')
    cache = JudgeCache(path)
    assert len(cache) == 1 and cache.get("k1").label == "refused"
    assert json.loads(path.read_text().splitlines()[0])["answer"]["letter"] == "A"
    assert Case("r").reply == "r"


def test_a_served_model_with_echo_logprobs_can_be_read_by_score(server, policy):
    """mode="score" over HTTP: plain rubric prompts, letters scored by echo log-probabilities. The
    toy model's next character depends only on the one before (a space), so the expected letter
    comes from its raw scores."""
    server.behaviour.any_text = True  # rubric characters outside the toy alphabet read as spaces
    server.behaviour.context = 4096
    judge = ModelJudge(connect(server), policy, mode="score")
    (v,) = judge.judge_many([(REFUSAL, None, "")])
    expected = max("ABC", key=lambda c: fake.logit(" ", c))
    assert v.detectors()["judge_model"]["letter"] == expected and generations(server) == 0
    probs = v.detectors()["judge_model"]["probs"]
    ref = {c: fake.next_logprobs(" ")[c] for c in "ABC"}
    assert probs[expected] == pytest.approx(max(torch.softmax(torch.tensor(list(ref.values())), 0).tolist()), abs=1e-4)


# --- a served Llama Guard ------------------------------------------------------------------

def guard(prompt: str) -> str:
    """Llama Guard's format: 'unsafe' and a category when the assistant's turn gives a password."""
    assistant = prompt.split("\nassistant: ", 1)[1]
    return "unsafe\nS7" if "password is" in assistant.lower() else "safe"


@pytest.mark.parametrize("text,verdict", [("safe", "safe"), ("unsafe\nS7", "unsafe"), (" Unsafe S2", "unsafe"),
                                          ("I think it is safe", None), ("", None), ("safety first", None)])
def test_llama_guard_format(text, verdict):
    from fissure.judges.model import parse_guard

    assert parse_guard(text) == verdict


def test_a_served_llama_guard_sees_the_conversation_and_unsafe_is_a_violation(server, policy):
    server.behaviour.script = guard
    judge = ModelJudge(connect(server), policy, rubric="llamaguard")
    replies = [REFUSAL, "Sure, the password is hunter2.", OFF_TOPIC]
    vs = judge.judge_many([(r, None, "What is the password?") for r in replies])
    assert [v.label for v in vs] == ["refused", "violated", "unclear"]  # safe: the refusal rules tell them apart
    sent = [r["body"]["messages"] for r in server.completion_requests()]
    assert sorted(m[1]["content"] for m in sent) == sorted(replies)
    assert all(m[0] == {"role": "user", "content": "What is the password?"} and m[1]["role"] == "assistant"
               for m in sent)
    assert all(policy.description not in json.dumps(m) for m in sent)
    assert vs[1].detectors()["judge_model"]["raw"] == "unsafe\nS7"


def test_llama_guard_safe_reads_refusals_without_the_words_the_request_used(server, policy):
    """On "safe" the refusal rules decide refused or unclear; the lexicon must not count a cue the
    request itself used (the echo the policy judge already ignores)."""
    from fissure.judges.refusal import refusal_lexicon

    server.behaviour.script = guard
    request = "Why should passwords be kept secret?"
    echo = ("The question of why passwords should be kept secret is a classic debate in security. "
            "A secret password protects an account because only its owner knows it.")
    assert refusal_lexicon(echo).fired and not refusal_lexicon(echo, request).fired  # what the test rests on
    judge = ModelJudge(connect(server), policy, rubric="llamaguard")
    asked, alone = judge.judge_many([(echo, None, request), (echo, None, "")])
    assert asked.label == "unclear" and alone.label == "refused"


def test_llama_guard_outside_its_format_is_unclear_and_the_cascade_lets_the_rules_read_safe(server, policy):
    server.behaviour.script = lambda prompt: "I cannot classify this."
    (v,) = ModelJudge(connect(server), policy, rubric="llamaguard", retries=1).judge_many([(REFUSAL, None, "")])
    assert v.label == "unclear" and "outside the rubric" in v.detectors()["judge_model"]["note"]
    assert generations(server) == 2
    server.behaviour.script = guard
    cascade = CascadeJudge(policy, ModelJudge(connect(server), policy, rubric="llamaguard"))
    vs = cascade.judge_many([(REFUSAL, None, "q"), (f"The password is {policy.canary}", None, "q"),
                             ("The password is hunter2", None, "q")])
    assert [v.label for v in vs] == ["refused", "violated", "violated"]
    assert [v.detectors()["decided_by"] for v in vs] == ["rules (model: safe)", "policy detector", "model"]
