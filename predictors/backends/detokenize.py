"""Tokens to text deltas: incremental detokenization and stop sequences.

Both are pure (no model, no torch) so they are unit-tested on their own.
"""

from __future__ import annotations

from collections.abc import Sequence


class IncrementalDetokenizer:
    """Turn a growing list of token ids into text deltas, one token at a time.

    Decoding a single token is wrong for byte-level BPE (a character may span
    tokens) and for SentencePiece (leading spaces depend on the previous
    token). Like TGI and vLLM, decode a short window that starts a few tokens
    back and emit only what the window adds beyond its previous text; hold
    back text that ends in an incomplete character (U+FFFD).
    """

    def __init__(self, tokenizer, *, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix_text = self._decode(self.ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self.ids[self._prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self.ids)
            return new_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        prefix_text = self._decode(self.ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self.ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self.ids)
        return new_text[len(prefix_text) :] if len(new_text) > len(prefix_text) else ""


class StopMatcher:
    """Cut generated text at the first stop sequence, across delta boundaries.

    Text that could be the start of a stop sequence is held back until the
    next delta decides it, so a stop sequence never reaches the client, not
    even in part. The stop sequence itself is not included in the output
    (OpenAI semantics).
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(s for s in stops if s)
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns ``(text safe to emit, stopped)``."""
        if not self.stops:
            return text, False
        buf = self._pending + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self._pending = ""
            return buf[: min(hits)], True
        keep = max((_overlap(buf, s) for s in self.stops), default=0)
        self._pending = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        """Held-back text once generation ended without completing a stop sequence."""
        text, self._pending = self._pending, ""
        return text


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``stop``."""
    for k in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:k]):
            return k
    return 0
