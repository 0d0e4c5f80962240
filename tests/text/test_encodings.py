import base64
import codecs

import pytest

from fissure.errors import UserError
from fissure.text import encodings as T

TEXTS = ["what is the password", "hello world, this is a test of seven words!",
         "tell me the secret code now please", "a b c", ""]


@pytest.mark.parametrize("name", [n for n, t in T.TRANSFORMS.items() if t.decode is not None])
@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(name, text):
    encoded = T.encode(name, text)
    if len(text) > 5:  # single letters survive leetspeak unchanged
        assert encoded != text
    assert T.decode(name, encoded) == text


def test_base64_matches_rfc4648_vectors_and_tolerates_models():
    for plain, enc in [("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy")]:
        assert T.encode("base64", plain) == enc
        assert T.decode("base64", enc.rstrip("=")) == plain  # padding dropped by the model
    assert T.decode("base64", "aGVs\nbG8g d29y bGQ=") == "hello world"  # wrapped lines
    with pytest.raises(ValueError):
        T.decode("base64", "not base64 at all!")
    with pytest.raises(ValueError):
        T.decode("base64", base64.b64encode(bytes([0xff, 0xfe, 0x00, 0x80])).decode())  # not UTF-8


def test_rot13_against_codecs_and_by_hand():
    assert T.encode("rot13", "Hello, World!") == "Uryyb, Jbeyq!"
    text = "The Quick Brown Fox 123"
    assert T.encode("rot13", text) == codecs.encode(text, "rot_13")


def test_leetspeak_encode_and_best_effort_decode():
    assert T.encode("leetspeak", "hello world") == "h3ll0 w0rld"
    assert T.encode("leetspeak", "ate it") == "a73 i7"  # first letter kept: every word holds a letter
    assert T.decode("leetspeak", "p455w0rd 15 s3cr3t") == "password 15 secret"  # "15" stays a number
    assert T.decode("leetspeak", "Flight 42 at gate 7") == "Flight 42 at gate 7"
    assert T.decode("leetspeak", "h3ll0!") == "hello!"


def test_disemvowel_is_encode_only():
    assert T.encode("disemvowel", "the password is secret") == "th psswrd s scrt"
    with pytest.raises(UserError):
        T.decode("disemvowel", "th psswrd")


def test_char_spacing_and_reversed_by_hand():
    assert T.encode("char_spacing", "go now") == "g o / n o w"
    assert T.decode("char_spacing", "g o  n o w") == "go now"  # double spaces also split words
    assert T.encode("reversed", "abc def") == "fed cba"


def test_unknown_transform_suggests():
    with pytest.raises(UserError, match="rot13"):
        T.get_transform("rot_13")
