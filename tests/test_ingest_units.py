"""Ingestion's pure parts: loaders, the token-aware chunker, chunk identity, resume bookkeeping."""

import json
import shutil
from pathlib import Path

import pytest

from ragserve.pipelines.chunker import chunk_id, chunk_text
from ragserve.pipelines.ingest import IngestSettings, chunk_documents, pending, stale_ids
from ragserve.pipelines.loaders import Document, DocumentError, find_files, load_documents, load_file

SAMPLES = Path(__file__).resolve().parent.parent / "pipelines" / "samples"


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from ragserve.model_assets import PACKAGED_EMBEDDING, resolve_embedding_model

    return AutoTokenizer.from_pretrained(resolve_embedding_model(PACKAGED_EMBEDDING))


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


# -- loaders ------------------------------------------------------------------
def test_sample_corpus_loads_every_format():
    docs = {d.doc_id: d for d in load_documents([SAMPLES])}
    assert 8 <= len(docs) <= 15
    assert {d.format for d in docs.values()} == {"md", "txt", "html", "pdf", "jsonl"}
    pdf = docs["samples/benchmarks.pdf"]
    assert pdf.title == "Benchmark notes" and "412" in pdf.text
    html = docs["samples/on-call.html"]
    assert html.title == "On-call runbook"
    # inline tags do not break sentences; scripts and navigation are gone
    assert "hands over every Tuesday at 09:00 UTC." in html.text
    store = docs["samples/vector-store.html"].text
    assert "console.log" not in store and "Home | Docs" not in store
    assert docs["samples/overview.md"].title == "ragserve overview"
    faq = docs["samples/faq.jsonl#kontakt"]
    assert faq.metadata == {"topic": "support", "lang": "de", "format": "jsonl"}
    assert faq.title == "Wer betreut ragserve?"


def test_doc_ids_do_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    here = sorted(d.doc_id for d in load_documents([SAMPLES]))
    monkeypatch.chdir(tmp_path)
    assert sorted(d.doc_id for d in load_documents([SAMPLES])) == here
    assert [d.doc_id for d in load_documents([SAMPLES / "security.txt"])] == ["security.txt"]


def test_find_files_skips_hidden_and_unsupported(tmp_path):
    (tmp_path / "a.md").write_text("# A\ntext")
    (tmp_path / "b.bin").write_bytes(b"\x00")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "c.txt").write_text("secret")
    assert [doc_id for _, doc_id in find_files([tmp_path])] == [f"{tmp_path.name}/a.md"]
    with pytest.raises(DocumentError, match="unsupported file type"):
        find_files([tmp_path / "b.bin"])
    with pytest.raises(DocumentError, match="no such file"):
        find_files([tmp_path / "missing"])


@pytest.mark.parametrize(
    "line, needle",
    [
        ('{"id": 1, "title": "no text"}', r"bad\.jsonl:1: field 'text'"),
        ("{not json", r"bad\.jsonl:1: not JSON"),
        ("[1, 2]", r"bad\.jsonl:1: each line must be a JSON object"),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path, line, needle):
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(DocumentError, match=needle):
        load_file(path, "bad.jsonl")


def test_content_hash_tracks_content():
    a = Document("d", "T", "u", "text", "txt", {"format": "txt"})
    assert a.content_hash == Document("d", "T", "u", "text", "txt", {"format": "txt"}).content_hash
    assert a.content_hash != Document("d", "T", "u", "text!", "txt", {"format": "txt"}).content_hash
    assert a.content_hash != Document("d", "T", "u", "text", "txt", {"format": "txt", "lang": "en"}).content_hash


# -- chunker -------------------------------------------------------------------
LONG = "\n\n".join(
    " ".join(f"Paragraph {p} sentence {s} talks about KServe, Milvus and chunking number {p * 10 + s}." for s in range(6))
    for p in range(8)
)


@pytest.mark.parametrize("size, overlap", [(64, 16), (128, 24), (40, 0)])
def test_chunks_fit_overlap_and_are_verbatim(tokenizer, size, overlap):
    chunks = chunk_text(LONG, tokenizer, chunk_tokens=size, overlap=overlap)
    assert len(chunks) > 3
    assert chunks[0].start == 0 and chunks[-1].end == len(LONG)
    for prev, cur in zip(chunks, chunks[1:]):
        assert n_tokens(tokenizer, cur.text) <= size
        assert LONG[cur.start : cur.end] == cur.text
        if overlap:
            assert cur.start < prev.end, "consecutive chunks must overlap"
            shared = n_tokens(tokenizer, LONG[cur.start : prev.end])
            assert overlap - 3 <= shared <= overlap + 3
        else:
            assert cur.start >= prev.end
        assert cur.text[0].isalnum(), f"chunk starts inside a word: {cur.text[:20]!r}"
    assert [c.index for c in chunks] == list(range(len(chunks)))


def test_chunks_end_at_natural_breaks(tokenizer):
    chunks = chunk_text(LONG, tokenizer, chunk_tokens=128, overlap=16)
    # every chunk but the last ends a sentence (a paragraph or sentence boundary fits in each window)
    assert all(c.text.rstrip().endswith(".") for c in chunks[:-1]), [c.text[-30:] for c in chunks]


def test_ingests_tokenizers_only_loader_chunks_like_transformers(tokenizer):
    from ragserve.pipelines.chunker import load_tokenizer

    fast = load_tokenizer("all-MiniLM-L6-v2")
    long = LONG * 6  # past the model window: the file's truncation must be off
    assert chunk_text(long, fast, chunk_tokens=128, overlap=24) == chunk_text(long, tokenizer, chunk_tokens=128, overlap=24)


def test_short_text_is_one_chunk_and_empty_is_none(tokenizer):
    [c] = chunk_text("  A short note.  ", tokenizer, chunk_tokens=64, overlap=8)
    assert c.text == "A short note."
    assert chunk_text("   ", tokenizer, chunk_tokens=64, overlap=8) == []
    with pytest.raises(ValueError, match="overlap < chunk_tokens"):
        chunk_text("x", tokenizer, chunk_tokens=8, overlap=8)


def test_chunk_ids_are_stable_content_hashes(tokenizer):
    docs = list(load_documents([SAMPLES]))
    rows = chunk_documents(docs, tokenizer, chunk_tokens=64, overlap=16)
    again = chunk_documents(list(load_documents([SAMPLES])), tokenizer, chunk_tokens=64, overlap=16)
    assert [r["id"] for r in rows] == [r["id"] for r in again]
    assert len({r["id"] for r in rows}) == len(rows)
    assert chunk_id("a.md", "same text") != chunk_id("b.md", "same text")
    # JSONL metadata becomes (filterable) row fields; schema fields cannot be overwritten
    kontakt = next(r for r in rows if r["doc_id"] == "samples/faq.jsonl#kontakt")
    assert kontakt["lang"] == "de" and kontakt["topic"] == "support"


def test_an_edit_changes_only_the_touched_chunks(tokenizer):
    doc = Document("d.md", "D", "d.md", LONG, "md")
    edited = Document("d.md", "D", "d.md", LONG.replace("number 75.", "number seventy-five."), "md")
    before = {r["id"] for r in chunk_documents([doc], tokenizer, chunk_tokens=64, overlap=8)}
    after = {r["id"] for r in chunk_documents([edited], tokenizer, chunk_tokens=64, overlap=8)}
    assert before - after and after - before
    assert len(before & after) >= len(before) - 3


# -- resume / sync bookkeeping ------------------------------------------------------
def _rows(doc: str, digest: str, *ids: str) -> list[dict]:
    return [{"id": i, "doc_id": doc, "doc_hash": digest} for i in ids]


def test_pending_skips_documents_stored_with_their_current_hash():
    docs = [Document(d, d, d, "t", "txt") for d in ("a", "b", "c")]
    rows = _rows("a", "h1", "a1", "a2") + _rows("b", "h2", "b1") + _rows("c", "h3", "c1")
    stored = {"a": {"a1": "h1", "a2": "h1"}, "b": {"b1": "old"}, "c": {}}
    todo, done = pending(stored, docs, rows)
    assert done == 1
    assert [r["id"] for r in todo] == ["b1", "c1"]


def test_stale_ids_are_stored_chunks_no_longer_produced():
    stored = {"a": {"a1": "h", "a-old": "old"}, "z": {"z1": "h"}}
    assert stale_ids(stored, _rows("a", "h", "a1")) == ["a-old"]  # other documents untouched


def test_ingest_settings_come_from_env(monkeypatch):
    monkeypatch.setenv("RAGSERVE_INGEST_COLLECTION", "from_env")
    monkeypatch.setenv("RAGSERVE_INGEST_SYNC", "true")
    s = IngestSettings()
    assert s.collection == "from_env" and s.sync is True
    assert IngestSettings(index_type="IVF_FLAT").index_params() == {"nlist": 128}


def test_pdf_sample_is_what_the_generator_writes(tmp_path):
    pytest.importorskip("fpdf")
    from ragserve.pipelines.make_sample_pdf import build

    build(tmp_path / "b.pdf")
    assert (tmp_path / "b.pdf").read_bytes() == (SAMPLES / "benchmarks.pdf").read_bytes()


def test_copied_corpus_keeps_relative_ids(tmp_path):
    shutil.copytree(SAMPLES, tmp_path / "samples")
    ids = sorted(d.doc_id for d in load_documents([tmp_path / "samples"]))
    assert ids == sorted(d.doc_id for d in load_documents([SAMPLES]))
    assert json.dumps(ids)  # plain strings
