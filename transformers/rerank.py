"""Keyword-aware reordering of retrieved chunks (a light hybrid search).

A small English sentence embedder ranks by topic: "which graph degree does the
HNSW index use" lands on the benchmark notes (about HNSW) before the vector
store page that states the degree. Blending in how many of the question's
content words a chunk (with its title) contains puts the chunk that states the
fact first. The search fetches ``candidates`` chunks; each gets

    score + weight * (question content words found in the chunk / question content words)

and the best ``top_k`` are kept in that order. Words are compared lowercased,
without punctuation, on their first six letters (a crude stem: "rotated" ~
"rotation"). The similarity returned to clients stays the vector score.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .milvus_store import Hit

_STOPWORDS = frozenset(
    "a an and are as at be by can did do does for from has have how in is it its many much of on or that the "
    "this to was were what when where which who why with".split()
)


def content_words(text: str) -> set[str]:
    return {w[:6] for w in re.findall(r"[0-9a-z]+", text.lower()) if len(w) > 1 and w not in _STOPWORDS}


def rerank(question: str, hits: Sequence[Hit], *, top_k: int, weight: float) -> list[Hit]:
    """The ``top_k`` best of ``hits`` by vector score plus ``weight`` times keyword overlap."""
    wanted = content_words(question)
    if not wanted or weight == 0:
        return list(hits[:top_k])

    def blended(hit: Hit) -> float:
        return hit.score + weight * len(wanted & content_words(f"{hit.title} {hit.text}")) / len(wanted)

    return sorted(hits, key=blended, reverse=True)[:top_k]  # stable: ties keep the vector order
