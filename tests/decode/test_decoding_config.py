import pytest

from fissure.decode import Decoding
from fissure.errors import ConfigError


@pytest.mark.parametrize("kw,message", [
    ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"temperature": -1}, "temperature"),
    ({"top_k": -1}, "top_k"), ({"num_beams": 0}, "num_beams"), ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"repetition_penalty": 0}, "repetition_penalty"), ({"early_stopping": "soon"}, "early_stopping"),
    ({"num_beams": 2, "do_sample": True}, "beam search with sampling"),
])
def test_invalid_settings_are_rejected(kw, message):
    with pytest.raises(ConfigError, match=message):
        Decoding(**kw)


def test_temperature_zero_is_greedy():
    d = Decoding(do_sample=True, temperature=0)
    assert not d.sampling and d.signature() == "greedy|max_new=64"
    Decoding(num_beams=3, do_sample=True, temperature=0)  # greedy beams: allowed


def test_signatures():
    assert Decoding().signature() == "greedy|max_new=64"
    assert Decoding(do_sample=True, temperature=0.8, top_k=40, top_p=0.9, seed=1, max_new_tokens=32).signature() \
        == "sample|t=0.8|top_k=40|top_p=0.9|seed=1|max_new=32"
    assert Decoding(num_beams=4, length_penalty=0.6, repetition_penalty=1.2, stop=["\n"]).signature() \
        == "beam=4|lp=0.6|early=false|rep=1.2|max_new=64|stop=1"


def test_to_dict_round_trips_and_a_single_stop_string_is_one_string():
    d = Decoding(do_sample=True, top_p=0.5, seed=3, stop="\n\n")
    assert d.stop == ["\n\n"]
    assert Decoding(**d.to_dict()) == d
