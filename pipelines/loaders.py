"""Documents from files: .txt, .md, .html/.htm, .pdf and .jsonl (one document per line).

A document's id is its path relative to the folder given on the command line
(``samples/guide.md``), or ``FILE#ID`` for a JSONL record, so ids do not depend
on where the command runs and re-ingesting the same tree finds the same ids.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger("ragserve.ingest")

SUFFIXES = {".txt": "txt", ".md": "md", ".markdown": "md", ".html": "html", ".htm": "html", ".pdf": "pdf", ".jsonl": "jsonl"}


class DocumentError(ValueError):
    """A file that cannot be read as a document (named, with the reason)."""


@dataclass
class Document:
    doc_id: str
    title: str
    uri: str
    text: str
    format: str
    metadata: dict = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        """Changes whenever anything stored with the document's chunks changes."""
        payload = json.dumps([self.title, self.uri, self.text, self.metadata], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()[:32]


def find_files(paths: Iterable[str | Path]) -> list[tuple[Path, str]]:
    """``(file, doc id prefix)`` for every supported file under ``paths``, in a stable order."""
    out = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                if f.suffix.lower() in SUFFIXES and not any(part.startswith(".") for part in f.relative_to(path).parts):
                    out.append((f, f.relative_to(path.parent).as_posix()))
        elif path.is_file():
            if path.suffix.lower() not in SUFFIXES:
                raise DocumentError(f"{path}: unsupported file type (supported: {', '.join(sorted(SUFFIXES))})")
            out.append((path, path.name))
        else:
            raise DocumentError(f"{path}: no such file or folder")
    return out


def load_file(path: Path, doc_id: str) -> list[Document]:
    """The documents in one file."""
    kind = SUFFIXES[path.suffix.lower()]
    try:
        if kind == "jsonl":
            return list(_jsonl(path, doc_id))
        if kind == "pdf":
            title, text = _pdf(path)
        else:
            raw = path.read_text(encoding="utf-8", errors="replace")
            title, text = {"md": _markdown, "html": _html, "txt": _plain}[kind](raw)
    except DocumentError:
        raise
    except Exception as exc:
        raise DocumentError(f"{path}: cannot read as {kind}: {exc}") from exc
    return [Document(doc_id, title or Path(doc_id).stem, doc_id, text, kind, {"format": kind})] if text.strip() else []


def load_documents(paths: Iterable[str | Path]) -> Iterator[Document]:
    for path, doc_id in find_files(paths):
        yield from load_file(path, doc_id)


def _tidy(text: str) -> str:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _plain(raw: str) -> tuple[str, str]:
    text = _tidy(raw)
    return _first_line(text)[:200], text


def _markdown(raw: str) -> tuple[str, str]:
    # Markdown is embedded as written: its markup is light and carries structure.
    text = _tidy(raw)
    heading = re.search(r"^#\s+(.+)$", text, re.M)
    return (heading.group(1).strip() if heading else _first_line(text))[:200], text


_BLOCKS = ["p", "div", "section", "article", "main", "aside", "li", "ul", "ol", "table", "tr", "pre",
           "blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "dt", "dd", "figcaption"]


def _html(raw: str) -> tuple[str, str]:
    from bs4 import BeautifulSoup, NavigableString

    soup = BeautifulSoup(raw, "html.parser")
    for tag in soup(["script", "style", "nav", "header", "footer", "noscript", "template"]):
        tag.decompose()
    title = soup.title.get_text(strip=True) if soup.title else ""
    if not title and soup.h1:
        title = soup.h1.get_text(strip=True)
    if soup.title:
        soup.title.decompose()
    # HTML whitespace collapses (except in <pre>); paragraph breaks come from block tags.
    for node in soup.find_all(string=True):
        if not node.find_parent("pre"):
            node.replace_with(NavigableString(re.sub(r"\s+", " ", str(node))))
    for tag in soup.find_all("br"):
        tag.replace_with("\n")
    for tag in soup.find_all(_BLOCKS):
        tag.insert_before("\n\n")
        tag.insert_after("\n\n")
    body = soup.body or soup
    text = "\n".join(line.strip() for line in body.get_text().split("\n"))
    return title[:200], _tidy(text)


def _pdf(path: Path) -> tuple[str, str]:
    from pypdf import PdfReader

    reader = PdfReader(str(path))
    text = _tidy("\n\n".join((page.extract_text() or "") for page in reader.pages))
    meta_title = (reader.metadata.title if reader.metadata else None) or ""
    return (meta_title.strip() or _first_line(text))[:200], text


def _jsonl(path: Path, file_id: str) -> Iterator[Document]:
    """One JSON object per line: ``text`` (or ``content``) required; ``id``, ``title``, ``uri``/``url``
    optional; other scalar keys become filterable metadata (``lang == "en"``)."""
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DocumentError(f"{path}:{n}: not JSON: {exc}") from None
            if not isinstance(rec, dict):
                raise DocumentError(f"{path}:{n}: each line must be a JSON object")
            text = rec.get("text", rec.get("content"))
            if not isinstance(text, str):
                raise DocumentError(f"{path}:{n}: field 'text' (a string) is required")
            rid = str(rec.get("id", n))
            doc_id = f"{file_id}#{rid}"
            reserved = {"id", "text", "content", "title", "uri", "url"}
            meta = {k: v for k, v in rec.items() if k not in reserved and isinstance(v, (str, int, float, bool))}
            meta["format"] = "jsonl"
            if text.strip():
                yield Document(
                    doc_id, str(rec.get("title") or _first_line(text))[:200], str(rec.get("uri") or rec.get("url") or doc_id),
                    _tidy(text), "jsonl", meta,
                )
