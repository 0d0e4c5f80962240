"""Text encodings used by mismatched-generalization attacks and by reply canonicalisation.

Each transform is registered by name with an ``encode`` and, where the encoding is
reversible, a ``decode``. Decoders raise ``ValueError`` on text that is not in their
encoding (only base64 can tell); the others always return a string.
"""

from __future__ import annotations

import base64 as _b64
import binascii
import codecs
import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class Transform:
    name: str
    description: str
    encode: Callable[[str], str]
    decode: Callable[[str], str] | None  # None: not reversible (e.g. disemvowel)


TRANSFORMS: dict[str, Transform] = {}


def register(transform: Transform) -> Transform:
    if transform.name in TRANSFORMS:
        raise ValueError(f"transform {transform.name!r} registered twice")
    TRANSFORMS[transform.name] = transform
    return transform


def get_transform(name: str) -> Transform:
    try:
        return TRANSFORMS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(TRANSFORMS), n=3)
        hint = f" (did you mean: {', '.join(close)}?)" if close else ""
        raise UserError(f"unknown transform '{name}'{hint}; known: {', '.join(sorted(TRANSFORMS))}") from None


def encode(name: str, text: str) -> str:
    return get_transform(name).encode(text)


def decode(name: str, text: str) -> str:
    transform = get_transform(name)
    if transform.decode is None:
        raise UserError(f"transform '{name}' cannot be decoded")
    return transform.decode(text)


# --- base64 -------------------------------------------------------------------------------

_B64_CHARS = re.compile(r"[A-Za-z0-9+/=\s]+")


def base64_encode(text: str) -> str:
    return _b64.b64encode(text.encode("utf-8")).decode("ascii")


def base64_decode(text: str) -> str:
    """Decode base64 (whitespace ignored, missing padding tolerated) to UTF-8 text.

    Models often drop the padding or truncate the last group, so padding is restored and a
    dangling single character is dropped. Raises ``ValueError`` when the result is not text.
    """
    compact = re.sub(r"\s+", "", text).rstrip("=")
    if not compact:
        return ""
    if not _B64_CHARS.fullmatch(compact):
        raise ValueError("not base64")
    if len(compact) % 4 == 1:
        compact = compact[:-1]
    try:
        raw = _b64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
        return raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError(f"not base64 text: {exc}") from None


# --- rot13 and reversal (both are their own inverse) ----------------------------------------

def rot13(text: str) -> str:
    return codecs.encode(text, "rot13")


def reverse(text: str) -> str:
    return text[::-1]


# --- leetspeak ------------------------------------------------------------------------------

_LEET = {"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7"}
_UNLEET = {"4": "a", "@": "a", "3": "e", "1": "i", "!": "i", "0": "o", "5": "s", "$": "s", "7": "t"}
_WORD = re.compile(r"[A-Za-z0-9@$!]+")


def leet_encode(text: str) -> str:
    """Leetspeak that keeps the first character of every word.

    Keeping it means every encoded word still holds a letter ("ate" -> "a73", not "473"),
    so :func:`leet_decode` can leave plain numbers alone and the round trip is exact for
    lower-case text.
    """
    def word(m: re.Match) -> str:
        w = m.group(0)
        return w[0] + "".join(_LEET.get(c.lower(), c) for c in w[1:])
    return re.sub(r"[A-Za-z]+", word, text)


def leet_decode(text: str) -> str:
    """Best-effort inverse: digits and ``@$!`` become letters inside words that hold a letter."""
    def word(m: re.Match) -> str:
        w = m.group(0)
        if not any(c.isalpha() for c in w):
            return w
        core = w.rstrip("!")  # a trailing "!" is punctuation, not an "i"
        return "".join(_UNLEET.get(c, c) for c in core) + w[len(core):]
    return _WORD.sub(word, text)


# --- disemvowel -----------------------------------------------------------------------------

def disemvowel(text: str) -> str:
    return re.sub(r" {2,}", " ", re.sub(r"[aeiouAEIOU]", "", text))


# --- character spacing ----------------------------------------------------------------------

WORD_SEPARATOR = " / "


def char_space(text: str) -> str:
    """"go now" -> "g o / n o w": a space between characters, " / " between words."""
    return WORD_SEPARATOR.join(" ".join(word) for word in text.split(" "))


def char_unspace(text: str) -> str:
    """Inverse of :func:`char_space`; without " / " separators, runs of 2+ spaces split words."""
    words = re.split(r" ?/ ?" if "/" in text else r"\s{2,}", text)
    return " ".join(w.replace(" ", "") for w in words)


register(Transform("base64", "UTF-8 text as base64", base64_encode, base64_decode))
register(Transform("rot13", "rotate letters by 13 places", rot13, rot13))
register(Transform("leetspeak", "replace letters by look-alike digits (a->4, e->3, ...)", leet_encode, leet_decode))
register(Transform("disemvowel", "remove vowels (not reversible)", disemvowel, None))
register(Transform("char_spacing", "space between characters, ' / ' between words", char_space, char_unspace))
register(Transform("reversed", "the text backwards", reverse, reverse))
