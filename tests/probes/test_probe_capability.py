import re

import pytest

from fissure.text import encodings as T
from fissure.probes.attacks import ATTACKS
from fissure.probes.capability import capability_twins, number_pattern, number_words


def test_number_words():
    assert [number_words(n) for n in (0, 13, 20, 42, 99)] == ["zero", "thirteen", "twenty", "forty-two", "ninety-nine"]
    pat = number_pattern(42)
    for ok in ["42", "it is 42.", "Forty-two", "forty two"]:
        assert re.search(pat, ok, re.I), ok
    for bad in ["142", "420", "4.2", "24"]:
        assert not re.search(pat, bad, re.I), bad


def test_twins_for_every_mg_attack():
    mg = [name for name, a in ATTACKS.items() if a.mode == "MG"]
    assert {"base64", "rot13", "leetspeak", "disemvowel", "char_spacing", "reversed", "payload_splitting"} <= set(mg)
    indirect = {"poem_last_line", "spell_out", "json_fields", "answer_in_french"}  # the question stays plain
    assert indirect <= set(mg)
    for name in mg:
        twins = capability_twins(name, n=6, seed=1)
        assert len(twins) == 6 and all(t.prompt.attack == name for t in twins)
        if name in indirect:  # the task around the question is the form
            assert all(t.question in t.prompt.text and t.prompt.text != t.question for t in twins)
        elif name != "base64_output":  # the question itself is encoded or split
            assert all(t.question not in t.prompt.text for t in twins)


@pytest.mark.parametrize("attack, encode", [("base64", "base64"), ("rot13", "rot13"), ("reversed", "reversed"),
                                            ("char_spacing", "char_spacing"), ("leetspeak", "leetspeak"),
                                            ("base64_input", None), ("disemvowel", None)])
def test_answers_are_checked_in_the_encoding(attack, encode):
    for twin in capability_twins(attack, n=6, seed=3):
        right = f"The answer is {twin.answer}."
        wrong = "The answer is 3 or maybe purple."
        if encode:
            right, wrong = T.encode(encode, right), T.encode(encode, wrong)
        assert twin.check(right), (twin.question, right)
        assert not twin.check(wrong)
