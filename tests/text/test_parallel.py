"""Parallel text: gettext catalogues (written here with msgfmt-equivalent bytes) and aligned files."""

import struct

import pytest

from fissure.errors import DataError
from fissure.text.parallel import Pair, available_pairs, read_aligned, read_catalogue_pairs, split_pairs


def write_mo(path, entries: dict) -> None:
    """A GNU .mo file (the format ``gettext.GNUTranslations`` reads), keys sorted as msgfmt writes them."""
    keys = sorted(entries)
    ids = [k.encode() for k in keys]
    strs = [entries[k].encode() for k in keys]
    n = len(keys)
    header = 7 * 4
    table_ids, table_strs = header, header + 8 * n
    data = header + 16 * n
    id_offsets, str_offsets, blob = [], [], b""
    for b in ids:
        id_offsets.append((len(b), data + len(blob)))
        blob += b + b"\0"
    for b in strs:
        str_offsets.append((len(b), data + len(blob)))
        blob += b + b"\0"
    out = struct.pack("<7I", 0x950412DE, 0, n, table_ids, table_strs, 0, 0)
    out += b"".join(struct.pack("<2I", *o) for o in id_offsets) + b"".join(struct.pack("<2I", *o) for o in str_offsets)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out + blob)


HEADER = "Content-Type: text/plain; charset=UTF-8\nPlural-Forms: nplurals=2; plural=(n != 1);\n"


@pytest.fixture
def locale(tmp_path):
    write_mo(tmp_path / "de" / "LC_MESSAGES" / "a.mo", {
        "": HEADER,
        "Open the file": "Die Datei öffnen",
        "Open  the\nfile": "Öffne die Datei jetzt",  # the same message after whitespace is collapsed
        "Quit": "Beenden",  # too short (1 word)
        "Save all the files": "Save all the files",  # untranslated
        "menu\x04Close the window now": "Das Fenster jetzt schließen",  # a context entry
        "%d file was deleted\x00%d files were deleted": "%d Datei wurde gelöscht\x00%d Dateien wurden gelöscht",
    })
    write_mo(tmp_path / "de" / "LC_MESSAGES" / "b.mo", {"": HEADER, "Open the file": "Die Datei öffnen"})
    write_mo(tmp_path / "fr" / "LC_MESSAGES" / "a.mo", {"": HEADER, "Open the file": "Ouvrir le fichier"})
    return tmp_path


def test_catalogue_pairs(locale):
    pairs, stats = read_catalogue_pairs("en-de", locale)
    assert pairs == [Pair("%d file was deleted", "%d Datei wurde gelöscht"),
                     Pair("Close the window now", "Das Fenster jetzt schließen"),
                     Pair("Open the file", "Die Datei öffnen")]  # the most frequent translation wins
    assert stats["catalogues"] == 2 and stats["untranslated"] == 1 and stats["outside_word_range"] == 1


def test_missing_pair_lists_the_pairs_found(locale):
    assert available_pairs(locale) == ["en-de", "en-fr"]
    with pytest.raises(DataError, match="en-xx.*pairs found: en-de, en-fr"):
        read_catalogue_pairs("en-xx", locale)


def test_aligned_files(tmp_path):
    (tmp_path / "a.en").write_text("one\ntwo\nthree\n")
    (tmp_path / "a.de").write_text("eins\nzwei\ndrei\n")
    (tmp_path / "b.de").write_text("eins\nzwei\n")
    assert read_aligned(tmp_path / "a.en", tmp_path / "a.de")[1] == Pair("two", "zwei")
    with pytest.raises(DataError, match="has 3 lines but .* has 2"):
        read_aligned(tmp_path / "a.en", tmp_path / "b.de")


def test_split_is_seeded_disjoint_and_deduplicated():
    pairs = [Pair(f"s{i % 50}", f"t{i}") for i in range(100)]  # each source twice
    train, val, test = split_pairs(pairs, 0.1, 0.1, seed=3)
    sources = [p.source for p in train + val + test]
    assert len(sources) == len(set(sources)) == 50 and (len(val), len(test)) == (5, 5)
    assert split_pairs(pairs, 0.1, 0.1, seed=3) == (train, val, test)
    assert split_pairs(pairs, 0.1, 0.1, seed=4) != (train, val, test)
