"""Parallel text for translation: the gettext catalogues installed on the machine, or two aligned files.

Catalogues: ``<locale_dir>/<lang>/LC_MESSAGES/*.mo``, read with the standard library's ``gettext``
(English message ids against their translations). The header entry ``""`` is skipped; a plural
entry contributes its singular form (``msgstr[0]`` for the English singular); a context prefix
(``"context\\x04message"``) is dropped; untranslated entries (empty, or equal to the English) are
skipped. Whitespace is collapsed, and only pairs of ``min_words``-``max_words`` words on both
sides are kept.

The split is by English message: each message occurs once across train, validation and test (the
same message in many catalogues keeps its most frequent translation), so no test sentence was seen
in training. It is seeded and does not depend on file order.
"""

from __future__ import annotations

import gettext
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

LOCALE_DIR = "/usr/share/locale"
LANGUAGE_PAIRS = ("en-de", "en-fr", "en-es")


@dataclass(frozen=True)
class Pair:
    source: str
    target: str


@dataclass
class ParallelSplits:
    train: list[Pair]
    val: list[Pair]
    test: list[Pair]
    stats: dict


def _clean(text: str) -> str:
    return " ".join(text.split())


def _catalogue_entries(path: Path):
    """``(english, translation)`` of one ``.mo`` file (nothing if it cannot be parsed as UTF-8 gettext)."""
    try:
        with open(path, "rb") as fh:
            catalog = gettext.GNUTranslations(fh)._catalog
    except (OSError, UnicodeDecodeError, ValueError, IndexError, KeyError):  # old 8-bit or broken catalogues
        return None
    entries = []
    for key, value in catalog.items():
        if isinstance(key, tuple):  # plural forms: (msgid, n); keep the singular
            if key[1] != 0:
                continue
            key = key[0]
        if not key:  # the header
            continue
        key = key.rpartition("\x04")[2]  # drop a message context
        entries.append((key, value))
    return entries


def available_pairs(locale_dir: str | Path = LOCALE_DIR) -> list[str]:
    """``en-<lang>`` for each language with at least one catalogue under ``locale_dir``."""
    root = Path(locale_dir)
    if not root.is_dir():
        return []
    return sorted(f"en-{d.name}" for d in root.iterdir() if d.is_dir() and any((d / "LC_MESSAGES").glob("*.mo")))


def read_catalogue_pairs(pair: str, locale_dir: str | Path = LOCALE_DIR, min_words: int = 3,
                         max_words: int = 40) -> tuple[list[Pair], dict]:
    """One pair per English message (its most frequent translation), sorted by message, and counts."""
    source, _, target = pair.partition("-")
    files = sorted((Path(locale_dir) / target / "LC_MESSAGES").glob("*.mo")) if source == "en" and target else []
    if not files:
        found = available_pairs(locale_dir)
        raise DataError(f"no gettext catalogues for the language pair '{pair}' under {locale_dir} (pairs found: "
                        f"{', '.join(found) if found else 'none'})")
    translations: dict[str, Counter] = defaultdict(Counter)
    skipped_files = entries = untranslated = out_of_range = 0
    for file in files:
        found_entries = _catalogue_entries(file)
        if found_entries is None:
            skipped_files += 1
            continue
        for english, translated in found_entries:
            entries += 1
            english, translated = _clean(english), _clean(translated)
            if not translated or translated == english:
                untranslated += 1
                continue
            if not (min_words <= len(english.split()) <= max_words and min_words <= len(translated.split()) <= max_words):
                out_of_range += 1
                continue
            translations[english][translated] += 1
    pairs = [Pair(english, min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0])
             for english, counts in sorted(translations.items())]
    stats = {"pair": pair, "catalogues": len(files), "catalogues_skipped": skipped_files, "entries": entries,
             "untranslated": untranslated, "outside_word_range": out_of_range, "messages": len(pairs)}
    return pairs, stats


def read_aligned(sources: str | Path, references: str | Path) -> list[Pair]:
    """Pairs from two files with one sentence per line, line ``i`` of one translating line ``i`` of the other."""
    texts = []
    for path in (sources, references):
        try:
            texts.append(Path(path).read_text(encoding="utf-8").splitlines())
        except FileNotFoundError:
            raise DataError(f"file not found: {path}") from None
        except UnicodeDecodeError:
            raise DataError(f"{path} is not UTF-8 text") from None
    if len(texts[0]) != len(texts[1]):
        raise DataError(f"{sources} has {len(texts[0])} lines but {references} has {len(texts[1])}: the files must "
                        "be aligned line by line")
    if not texts[0]:
        raise DataError(f"{sources} is empty")
    return [Pair(s.strip(), t.strip()) for s, t in zip(*texts)]


def split_pairs(pairs: list[Pair], val_fraction: float, test_fraction: float, seed: int,
                max_pairs: int = 0) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """Seeded train/val/test split by source sentence (duplicates of a source go to the first one's
    split, then are dropped); ``max_pairs`` > 0 keeps a seeded sample of that many sources first."""
    unique = list({p.source: p for p in reversed(pairs)}.values())[::-1]  # first translation of each source
    unique.sort(key=lambda p: p.source)
    random.Random(seed).shuffle(unique)
    if max_pairs:
        unique = unique[:max_pairs]
    n_val, n_test = round(len(unique) * val_fraction), round(len(unique) * test_fraction)
    if len(unique) - n_val - n_test < 1 or (val_fraction and not n_val) or (test_fraction and not n_test):
        raise DataError(f"{len(unique)} distinct sentence pairs are too few to split into train, validation and test")
    return unique[n_val + n_test:], unique[:n_val], unique[n_val:n_val + n_test]
