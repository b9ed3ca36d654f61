"""Token-aware chunking with overlap.

Chunks are sized in the embedding model's own tokens (a chunk longer than the
model's window would be silently truncated when embedded) and cut where the
text breaks naturally: a paragraph end if one lies in the second half of the
window, else a sentence end, else a word boundary. Each chunk is a verbatim
slice of the document (token offsets map back to characters), and the next
one starts ``overlap`` tokens earlier, on a word start.

A chunk's id is a hash of its document id and its text, so re-ingesting an
unchanged document produces the same ids (an upsert, not a duplicate), and an
edit changes only the ids of the chunks it touched.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

_SENTENCE_END = (".", "!", "?", ":", ";")


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    start: int
    end: int


def chunk_id(doc_id: str, text: str) -> str:
    return hashlib.sha256(f"{doc_id}\0{text}".encode()).hexdigest()[:32]


def _gap(text: str, offsets, k: int) -> str:
    """The characters between token ``k-1`` and token ``k``."""
    return text[offsets[k - 1][1] : offsets[k][0]]


def _break_at(text: str, offsets, lo: int, hi: int) -> int:
    """The best place in ``(lo, hi]`` to end a chunk before token ``k``; ``hi`` if none is natural."""
    best = {}
    for k in range(hi, lo, -1):
        gap = _gap(text, offsets, k)
        if not gap:
            continue  # inside a word
        if "\n\n" in gap:
            return k
        if "sentence" not in best and text[offsets[k - 1][1] - 1] in _SENTENCE_END:
            best["sentence"] = k
        best.setdefault("word", k)
    return best.get("sentence") or best.get("word") or hi


def load_tokenizer(model: str):
    """The embedding model's fast tokenizer through ``tokenizers`` alone (importing
    ``transformers`` would add seconds to every ``ragserve ingest``)."""
    from pathlib import Path

    from tokenizers import Tokenizer

    from ragserve.model_assets import resolve_embedding_model

    tokenizer = Tokenizer.from_file(str(Path(resolve_embedding_model(model)) / "tokenizer.json"))
    tokenizer.no_truncation()  # the file may truncate to the model window; chunking must see everything
    tokenizer.no_padding()
    return tokenizer


def token_offsets(tokenizer, text: str) -> list[tuple[int, int]]:
    """Character spans of ``text``'s tokens, from a ``tokenizers.Tokenizer`` or a Hugging Face tokenizer."""
    if hasattr(tokenizer, "encode_batch"):
        offsets = tokenizer.encode(text, add_special_tokens=False).offsets
    else:
        offsets = tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False, verbose=False
        )["offset_mapping"]
    return [o for o in offsets if o[1] > o[0]]


def chunk_text(text: str, tokenizer, *, chunk_tokens: int, overlap: int) -> list[Chunk]:
    """Split ``text`` into chunks of at most ``chunk_tokens`` tokens overlapping by about ``overlap``."""
    if chunk_tokens <= 0 or not 0 <= overlap < chunk_tokens:
        raise ValueError(f"need chunk_tokens > 0 and 0 <= overlap < chunk_tokens (got {chunk_tokens}, {overlap})")
    offsets = token_offsets(tokenizer, text)
    n = len(offsets)
    chunks: list[Chunk] = []
    i = 0
    while i < n:
        j = min(i + chunk_tokens, n)
        if j < n:
            j = _break_at(text, offsets, i + chunk_tokens // 2, j)
        start, end = offsets[i][0], offsets[j - 1][1]
        chunks.append(Chunk(len(chunks), text[start:end], start, end))
        if j >= n:
            break
        nxt = max(j - overlap, i + 1)
        while nxt < j and not _gap(text, offsets, nxt):  # start on a word, not inside one
            nxt += 1
        i = nxt
    return chunks
