"""The subset of GJSON path syntax that InferenceGraph ``condition`` fields use.

KServe's router evaluates a step's ``condition`` with
``gjson.GetBytes(body, condition).Exists()`` (github.com/tidwall/gjson): the
step matches when the path finds something. Supported here:

- field paths: ``instances``, ``instances.0.intent``, ``a\\.b`` (escaped dot),
  key wildcards ``*`` and ``?`` (first matching key);
- ``#`` (array length) and ``#.field`` (the field of every element);
- queries ``#(path op value)`` (first match) and ``#(path op value)#`` (all
  matches, an array that exists even when empty, as in GJSON), with ``op`` one of
  ``==`` ``=`` ``!=`` ``<`` ``<=`` ``>`` ``>=`` ``%`` (like, ``*``/``?`` wildcards)
  ``!%``; ``#(path)`` tests existence; an empty left side (``#(=="fb")``) is
  the element itself; queries nest (``#(nets.#(=="fb"))``); values are JSON
  strings (``"dog"``), numbers, ``true``/``false`` or bare words (compared as
  strings, as GJSON does: ``#(picker==ONE)``);
- ``@this`` and multipath arrays ``[p1,p2]`` (so KServe's documented
  ``[@this].#(decision_picker==ONE)`` works); ``|`` pipes.

Comparison follows GJSON's ``queryMatches``: a string compares as a string, a
number numerically (a non-numeric value reads as 0), ``true``/``false`` only with
``=``/``!=`` (and GJSON's ordering quirks), objects, arrays and null never match
an operator.

Not supported (a condition that uses them is rejected when the graph is loaded,
where GJSON would quietly not match): modifiers other than ``@this``, object
multipaths ``{...}``, literals ``!true``, ``~`` query coercions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_MISSING = object()


class GJSONSyntaxError(ValueError):
    """A condition uses GJSON syntax outside the supported subset."""


@dataclass(frozen=True)
class _Key:
    text: str
    pattern: re.Pattern | None  # set when the key has wildcards


@dataclass(frozen=True)
class _Length:  # "#"
    pass


@dataclass(frozen=True)
class _Query:  # "#(...)" or "#(...)#"
    path: Path | None  # None: the element itself
    op: str
    value: str
    quoted: bool
    all: bool


@dataclass(frozen=True)
class _This:  # "@this"
    pass


@dataclass(frozen=True)
class _Multi:  # "[p1,p2]"
    paths: tuple[Path, ...]


class Path:
    """A compiled GJSON path; :meth:`get` evaluates it on a parsed JSON document."""

    def __init__(self, source: str):
        self.source = source
        # segments split by "|"; each a list of "."-separated components
        self._segments = [[_component(c, source) for c in _split(seg, ".")] for seg in _split(source, "|")]

    def get(self, document: Any) -> Any:
        """The value the path selects, or :data:`MISSING`."""
        value = document
        for segment in self._segments:
            value = _eval(value, segment)
            if value is _MISSING:
                break
        return value

    def exists(self, document: Any) -> bool:
        return self.get(document) is not _MISSING

    def __repr__(self) -> str:
        return f"Path({self.source!r})"


MISSING = _MISSING


def compile_path(source: str) -> Path:
    if not source:
        raise GJSONSyntaxError("empty path")
    return Path(source)


def _eval(value: Any, comps: list) -> Any:
    for i, comp in enumerate(comps):
        rest = comps[i + 1 :]
        if isinstance(comp, _Key):
            value = _key(value, comp)
        elif isinstance(comp, _This):
            pass
        elif isinstance(comp, _Multi):
            value = [v for v in (p.get(value) for p in comp.paths) if v is not _MISSING]
        elif isinstance(comp, _Length):
            if not isinstance(value, list):
                return _MISSING
            if not rest:
                return len(value)
            # "#.rest": the rest of the segment for every element that has it
            return [v for v in (_eval(el, rest) for el in value) if v is not _MISSING]
        elif isinstance(comp, _Query):
            if not isinstance(value, list):
                return _MISSING
            matches = [el for el in value if _query_matches(comp, el)]
            if not comp.all:
                value = matches[0] if matches else _MISSING
            elif rest:
                return [v for v in (_eval(el, rest) for el in matches) if v is not _MISSING]
            else:
                return matches
        if value is _MISSING:
            return _MISSING
    return value


def _key(value: Any, key: _Key) -> Any:
    if isinstance(value, dict):
        if key.pattern is None:
            return value.get(key.text, _MISSING)
        for k, v in value.items():
            if key.pattern.fullmatch(k):
                return v
        return _MISSING
    if isinstance(value, list) and key.pattern is None and key.text.isdigit():
        index = int(key.text)
        return value[index] if index < len(value) else _MISSING
    return _MISSING


def _query_matches(q: _Query, element: Any) -> bool:
    value = element if q.path is None else q.path.get(element)
    if value is _MISSING:
        return False
    if not q.op:
        return True
    rpv = q.value
    if isinstance(value, bool):
        # GJSON's True/False cases, quirks included
        if value:
            return {"=": rpv == "true", "!=": rpv != "true", ">": rpv == "false", ">=": True}.get(q.op, False)
        return {"=": rpv == "false", "!=": rpv != "false", "<": rpv == "true", "<=": True}.get(q.op, False)
    if isinstance(value, str):
        if q.op in ("%", "!%"):
            return _like(value, rpv) == (q.op == "%")
        return _compare(value, rpv, q.op)
    if isinstance(value, (int, float)):
        try:
            number = float(rpv)
        except ValueError:
            number = 0.0  # Go's strconv.ParseFloat error leaves 0
        return _compare(float(value), number, q.op)
    return False


def _compare(a, b, op: str) -> bool:
    return {
        "=": a == b,
        "!=": a != b,
        "<": a < b,
        "<=": a <= b,
        ">": a > b,
        ">=": a >= b,
    }.get(op, False)


def _like(text: str, pattern: str) -> bool:
    return _wildcard_regex(pattern).fullmatch(text) is not None


def _wildcard_regex(pattern: str) -> re.Pattern:
    """tidwall/match: ``*`` any run, ``?`` one character, ``\\`` escapes."""
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "*" else "." if ch == "?" else re.escape(ch))
        i += 1
    return re.compile("".join(out), re.DOTALL)


_OPS = ("==", "!=", "<=", ">=", "!%", "=", "<", ">", "%")


def _component(text: str, source: str) -> Any:
    if text == "":
        raise GJSONSyntaxError(f"empty path component in {source!r}")
    if text == "#":
        return _Length()
    if text.startswith("#("):
        return _query(text, source)
    if text.startswith("@"):
        if text == "@this":
            return _This()
        raise GJSONSyntaxError(f"modifier {text!r} in {source!r} is not supported (only @this)")
    if text.startswith("["):
        if not text.endswith("]"):
            raise GJSONSyntaxError(f"unclosed multipath in {source!r}")
        return _Multi(tuple(compile_path(p.strip()) for p in _split(text[1:-1], ",")))
    if text[0] in "{!~":
        raise GJSONSyntaxError(f"{text!r} in {source!r}: object multipaths and literals are not supported")
    key, wild = _unescape_key(text)
    return _Key(key, _wildcard_regex(text) if wild else None)


def _query(text: str, source: str) -> _Query:
    all_matches = text.endswith(")#")
    inner = text[2 : -2 if all_matches else -1]
    if not text.endswith(")" if not all_matches else ")#"):
        raise GJSONSyntaxError(f"unclosed query in {source!r}")
    op_at, op = _find_op(inner)
    if op_at < 0:
        left, value, quoted = inner.strip(), "", False
        op = ""
    else:
        left = inner[:op_at].strip()
        value = inner[op_at + len(op) :].strip()
        quoted = len(value) >= 2 and value[0] == '"' and value[-1] == '"'
        if quoted:
            value = _json_unescape(value[1:-1])
        elif value.startswith("~"):
            raise GJSONSyntaxError(f"query coercion {value!r} in {source!r} is not supported")
    return _Query(
        path=compile_path(left) if left else None,
        op="=" if op == "==" else op,
        value=value,
        quoted=quoted,
        all=all_matches,
    )


def _find_op(inner: str) -> tuple[int, str]:
    """The first operator outside strings and nested queries."""
    in_string, depth, i = False, 0, 0
    while i < len(inner):
        ch = inner[i]
        if ch == "\\":
            i += 2
            continue
        if ch == '"':
            in_string = not in_string
        elif in_string:
            pass
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif depth == 0:
            for op in _OPS:
                if inner.startswith(op, i):
                    return i, op
        i += 1
    return -1, ""


def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside brackets, parentheses, strings and escapes."""
    parts, depth, start, i, in_string = [], 0, 0, 0, False
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == '"' and depth:
            in_string = not in_string
        elif not in_string:
            if ch in "([{":
                depth += 1
            elif ch in ")]}":
                depth -= 1
            elif ch == sep and depth == 0:
                parts.append(text[start:i])
                start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def _unescape_key(text: str) -> tuple[str, bool]:
    out, wild, i = [], False, 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        wild = wild or ch in "*?"
        out.append(ch)
        i += 1
    return "".join(out), wild


def _json_unescape(text: str) -> str:
    import json

    try:
        return json.loads(f'"{text}"')
    except ValueError:
        return text
