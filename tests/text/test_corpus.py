import inspect
import json
import logging
import sysconfig
import textwrap
import unicodedata
from pathlib import Path

import pytest

from fissure.errors import ConfigError, DataError
from fissure.text.corpus import Document, builtin_corpus, deduplicate, read_documents, split_documents


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


# ----------------------------------------------------------------- reading

def test_reads_txt_jsonl_and_folders_recursively(tmp_path, caplog):
    write(tmp_path / "a.txt", "  first document\n")
    write(tmp_path / "sub" / "deeper" / "b.txt", "second")
    write(tmp_path / "sub" / "c.jsonl", '{"text": "third", "id": 1}\n\n{"text": "fourth"}\n')
    write(tmp_path / "sub" / "notes.md", "skipped")
    write(tmp_path / "image.png", b"\x89PNG\x00\x00")
    with caplog.at_level(logging.WARNING, logger="fissure.text.corpus"):
        docs = read_documents([tmp_path])
    assert [d.text for d in docs] == ["first document", "third", "fourth", "second"]  # sorted paths, lines in order
    assert any("skipped 2 file(s)" in r.getMessage() for r in caplog.records)
    sources = {d.text: d.source for d in docs}
    assert sources["fourth"] == f"{tmp_path / 'sub' / 'c.jsonl'}:3"
    assert sources["second"] == str(tmp_path / "sub" / "deeper" / "b.txt")


def test_folder_order_is_sorted_and_stable(tmp_path):
    for name in ["z.txt", "a.txt", "m/q.txt"]:
        write(tmp_path / name, name)
    first = [d.source for d in read_documents([tmp_path])]
    assert first == sorted(first) and first == [d.source for d in read_documents([tmp_path])]


def test_jsonl_custom_field(tmp_path):
    f = write(tmp_path / "d.jsonl", '{"body": "hello"}\n')
    assert read_documents([f], jsonl_field="body")[0].text == "hello"
    with pytest.raises(DataError, match=r"d\.jsonl:1: expected a JSON object with a 'text' field"):
        read_documents([f])


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="path not found: .*nope.txt"):
        read_documents([tmp_path / "nope.txt"])


def test_not_utf8_names_file_and_offset(tmp_path):
    f = write(tmp_path / "latin1.txt", "café au lait".encode("latin-1"))
    with pytest.raises(DataError) as exc:
        read_documents([f])
    msg = str(exc.value)
    assert "latin1.txt" in msg and "not UTF-8" in msg and "offset 3" in msg and "0xe9" in msg
    assert "\n" not in msg


def test_binary_file_names_nul_offset(tmp_path):
    f = write(tmp_path / "blob.txt", b"abcde\x00\x01\x02")
    with pytest.raises(DataError, match=r"blob\.txt looks binary \(NUL byte at offset 5\)"):
        read_documents([f])


def test_malformed_jsonl_names_file_and_line(tmp_path):
    f = write(tmp_path / "bad.jsonl", '{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: malformed JSON"):
        read_documents([f])
    g = write(tmp_path / "num.jsonl", '{"text": 3}\n')
    with pytest.raises(DataError, match=r"num\.jsonl:1: field 'text' is int, not a string"):
        read_documents([g])
    h = write(tmp_path / "list.jsonl", '["text"]\n')
    with pytest.raises(DataError, match=r"list\.jsonl:1"):
        read_documents([h])


@pytest.mark.parametrize("content", ["", "   \n\t\n", '{"text": "  "}\n'])
def test_no_text_found(tmp_path, content):
    f = write(tmp_path / ("e.jsonl" if content.startswith("{") else "e.txt"), content)
    with pytest.raises(DataError, match="no text found in .*e\\.(txt|jsonl)"):
        read_documents([f])


def test_folder_without_text_files(tmp_path):
    write(tmp_path / "x.csv", "a,b")
    with pytest.raises(DataError, match="no text found in"):
        read_documents([tmp_path])


def test_unicode_normalisation(tmp_path):
    decomposed = "Cafe\u0301 \ufb01le \u2460"  # e + combining acute, the "fi" ligature, circled 1
    f = write(tmp_path / "n.txt", decomposed)
    nfc = read_documents([f], normalize="NFC")[0].text
    nfkc = read_documents([f], normalize="NFKC")[0].text
    raw = read_documents([f], normalize=None)[0].text
    assert raw == decomposed
    assert nfc == "Caf\u00e9 \ufb01le \u2460"  # composed, compatibility characters kept
    assert nfkc == "Caf\u00e9 file 1"
    assert nfc == unicodedata.normalize("NFC", decomposed) and nfkc == unicodedata.normalize("NFKC", decomposed)
    with pytest.raises(ConfigError):
        read_documents([f], normalize="NFD")


def test_whitespace_options_and_bom(tmp_path):
    f = write(tmp_path / "w.txt", b"\xef\xbb\xbf  a \t  b  \n\n\n\n  c\r\n")
    assert read_documents([f])[0].text == "a \t  b  \n\n\n\n  c"  # BOM dropped, only the ends stripped
    assert read_documents([f], strip=False)[0].text == "  a \t  b  \n\n\n\n  c\r\n"
    assert read_documents([f], collapse_whitespace=True)[0].text == "a b\n\n c"


# ----------------------------------------------------------------- dedup and split

def test_deduplicate_keeps_first_and_order():
    docs = [Document("a", "1"), Document("Caf\u00e9", "2"), Document("a", "3"), Document("b", "4"),
            Document("Cafe\u0301", "5"), Document("a ", "6")]
    kept, removed = deduplicate(docs)
    assert [d.source for d in kept] == ["1", "2", "4"]
    assert removed == 3


def _docs(n):
    return [Document(f"document {i}", f"s{i}") for i in range(n)]


def test_split_is_seeded_disjoint_and_complete():
    docs = _docs(50)
    train, val = split_documents(docs, 0.2, seed=1)
    assert len(val) == 10 and len(train) == 40
    assert {d.source for d in train}.isdisjoint(d.source for d in val)
    assert {d.source for d in train} | {d.source for d in val} == {d.source for d in docs}
    again = split_documents(docs, 0.2, seed=1)
    assert [d.source for d in again[1]] == [d.source for d in val]
    other = split_documents(docs, 0.2, seed=2)
    assert [d.source for d in other[1]] != [d.source for d in val]
    # each side keeps the corpus order
    assert [d.source for d in val] == sorted((d.source for d in val), key=lambda s: int(s[1:]))


@pytest.mark.parametrize("n,frac", [(2, 0.01), (2, 0.99), (3, 0.001), (10, 0.999)])
def test_split_keeps_one_document_on_each_side(n, frac):
    train, val = split_documents(_docs(n), frac)
    assert len(train) >= 1 and len(val) >= 1 and len(train) + len(val) == n


def test_split_single_document_at_line_boundary():
    text = "".join(f"line {i:02d}\n" for i in range(20)).rstrip("\n")  # 20 lines of 8 characters each
    train, val = split_documents([Document(text, "only")], 0.25)
    assert train[0].text + val[0].text == text
    assert train[0].text.endswith("\n") and train[0].text.count("\n") == 15
    assert val[0].text.startswith("line 15")
    one_line = split_documents([Document("abcdefghij", "x")], 0.3)
    assert (one_line[0][0].text, one_line[1][0].text) == ("abcdefg", "hij")


def test_split_errors():
    with pytest.raises(ConfigError):
        split_documents(_docs(5), 0.0)
    with pytest.raises(ConfigError):
        split_documents(_docs(5), 1.0)
    with pytest.raises(DataError):
        split_documents([], 0.1)
    with pytest.raises(DataError):
        split_documents([Document("a", "x")], 0.1)


# ----------------------------------------------------------------- built-in corpora

def test_builtin_stdlib_is_capped_deterministic_and_real_source():
    docs = builtin_corpus("stdlib", max_bytes=300_000)
    total = sum(len(d.text.encode()) for d in docs)
    assert 250_000 < total <= 300_000 and len(docs) > 3
    assert docs == builtin_corpus("stdlib", max_bytes=300_000)
    root = Path(sysconfig.get_paths()["stdlib"])
    for d in docs[:-1]:  # whole files, byte for byte (the last one is cut to fit the cap)
        rel = d.source.removeprefix("stdlib:")
        assert not set(Path(rel).parts) & {"test", "tests", "idlelib", "site-packages"}
        assert d.text == (root / rel).read_text(encoding="utf-8")
    assert (root / docs[-1].source.removeprefix("stdlib:")).read_text(encoding="utf-8").startswith(docs[-1].text)


def test_builtin_stdlib_docs_are_the_docstrings():
    docs = builtin_corpus("stdlib-docs", max_bytes=None)
    by_source = {d.source: d.text for d in docs}
    assert by_source["stdlib-docs:json/__init__.py"].startswith(inspect.cleandoc(json.__doc__))
    wrap_doc = by_source["stdlib-docs:textwrap.py"]
    assert inspect.getdoc(textwrap.TextWrapper) in wrap_doc
    assert inspect.getdoc(textwrap.dedent) in wrap_doc
    assert "def dedent" not in wrap_doc
    total = sum(len(t.encode()) for t in by_source.values())
    assert total > 500_000
    capped = builtin_corpus("stdlib-docs", max_bytes=100_000)
    assert sum(len(d.text.encode()) for d in capped) <= 100_000
    assert [d.source for d in capped] == [d.source for d in docs[:len(capped)]]


def test_builtin_unknown_name():
    with pytest.raises(DataError, match="unknown built-in corpus 'wiki'"):
        builtin_corpus("wiki")
