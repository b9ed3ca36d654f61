"""Citations for answers that carry none: point at the source the answer was taken from.

Small generators (SmolLM2-135M, the local default) answer better from plain
source text than from numbered sources, and then never write ``[n]``
(README "Answer quality"). With ``attribute_citations`` the transformer adds
the citation itself: the answer's *new* content words (those not already in
the question) are matched against each source, and the source sharing the most
of them is cited as `` [n]``. An answer that already cites, or that shares no
new word with any source (an invented number, a refusal), is left as it is:
no citation is better than a made-up one.
"""

from __future__ import annotations

from collections.abc import Sequence

from ragserve.eval.metrics import cited_numbers

from .milvus_store import Hit
from .rerank import content_words


def attributed_source(question: str, answer: str, sources: Sequence[Hit]) -> int | None:
    """1-based number of the source to cite for ``answer``: the one sharing most of its new words.

    None when the answer cites already, or no source shares any of its new words.
    """
    if cited_numbers(answer):
        return None
    new = content_words(answer) - content_words(question)
    best, number = 0, None
    for n, hit in enumerate(sources, 1):
        shared = len(new & content_words(f"{hit.title} {hit.text}"))
        if shared > best:  # ties keep the better-ranked source
            best, number = shared, n
    return number


def citation_suffix(question: str, answer: str, sources: Sequence[Hit]) -> str:
    """`` [n]`` to append to ``answer`` (see :func:`attributed_source`); empty when there is none."""
    n = attributed_source(question, answer, sources)
    return "" if n is None else f" [{n}]"
