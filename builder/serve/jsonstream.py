"""Big REST bodies parsed without turning their arrays into millions of Python objects.

Why: ``json.loads`` on a 200 MB body of numbers builds one Python float (24 bytes) plus a list
slot (8 bytes) per number and holds the GIL for the whole parse - measured on the old server, one
198 MB body took the process to 5.8 GB and stalled every other request for seconds. Here a body
above ``STREAM_MIN_CHARS`` is parsed in two steps:

1. ``parse_document`` walks the top-level object itself. The arrays that carry tensors (the
   values of ``instances``, ``examples``, and ``inputs`` or its members) become ``LazyArray``
   spans of the text instead of lists; every other value is parsed with the ``json`` module's C
   scanner (``scan_once``), and values of keys TF Serving ignores are checked and dropped.
2. The codec converts a ``LazyArray`` group by group (about ``GROUP_CHARS`` of text each) into
   numpy blocks: dense numeric arrays through ``numpy.fromstring`` after a regular-expression
   check of the JSON number syntax and of the bracket skeleton; anything else element by
   element with ``scan_once``, so errors are worded exactly as for a small body.

Each step works on bounded pieces, so memory stays near the body size plus the tensors, and the
GIL is released between pieces (a big request no longer stalls small ones).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from builder.serve.status import RpcStatus

STREAM_MIN_CHARS = 1 << 20  # bodies above this are parsed by parse_document
GROUP_CHARS = 1 << 19  # text per conversion group
_WINDOW = 1 << 20  # regular expressions run over windows of this size (bounded GIL holds)
_WS = " \t\n\r"
_NUMERIC_CHARS = re.compile(r"[\[\]0-9eE+\-.,\s]*")
_SEP = re.compile(r"[ \t\n\r]*([,\]])[ \t\n\r]*")
_NUMBER = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
_NUMBER_LIST = re.compile(rf"{_NUMBER}(?:,{_NUMBER})*")
_DROP_WS = str.maketrans("", "", _WS)
_DROP_BRACKETS = str.maketrans("", "", "[]")
_KEEP_SKELETON = str.maketrans("", "", "0123456789eE+-.")
_TENSOR_KEYS = ("instances", "examples", "inputs")
_KNOWN_KEYS = frozenset({*_TENSOR_KEYS, "signature_name", "context"})


class JsonParseError(RpcStatus):
    """A syntax error, worded like rapidjson's (``JSON Parse error: ... at offset: N``); an
    RpcStatus, because arrays are parsed late (while converting) and the error is the client's."""

    def __init__(self, what: str, offset: int) -> None:
        super().__init__("INVALID_ARGUMENT", f"JSON Parse error: {what} at offset: {offset}")
        self.offset = offset


class NotDense(Exception):
    """The numeric fast path does not apply; the caller takes the element-wise path."""


_DECODER = json.JSONDecoder()
_scan_once = _DECODER.scan_once


def scan_value(text: str, i: int) -> tuple[Any, int]:
    """One JSON value at ``text[i]`` (no leading whitespace) -> (value, end)."""
    try:
        return _scan_once(text, i)
    except StopIteration as e:
        raise JsonParseError("Invalid value.", int(e.value)) from None
    except json.JSONDecodeError as e:
        raise JsonParseError(f"{e.msg}.", e.pos) from None


def skip_ws(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in _WS:
        i += 1
    return i


class LazyArray:
    """A JSON array of a request body, kept as a span of the text and parsed on demand.

    ``text[start]`` is ``[`` and ``text[end - 1]`` its matching ``]``. ``numeric`` says the span
    holds only numbers, brackets, commas and whitespace (the fast path may apply).
    """

    def __init__(self, text: str, start: int, end: int, numeric: bool) -> None:
        self.text, self.start, self.end, self.numeric = text, start, end, numeric
        self._first: Any = None
        self._has_first = False

    def empty(self) -> bool:
        return self.text[skip_ws(self.text, self.start + 1)] == "]"

    def first(self) -> Any:
        if not self._has_first:
            self._first = scan_value(self.text, skip_ws(self.text, self.start + 1))[0]
            self._has_first = True
        return self._first

    def preview(self, n: int = 8) -> list:
        """The first few elements, for error messages (which are truncated anyway)."""
        for _, group, _ in self.groups(max_items=n):
            return group
        return []

    def span_has(self, needle: str, lo: int, hi: int) -> bool:
        return self.text.find(needle, lo, hi) >= 0

    def groups(self, max_items: int | None = None) -> Iterator[tuple[int, list, tuple[int, int]]]:
        """(index of the first element, elements, text span) per ~GROUP_CHARS of text."""
        text = self.text
        i = skip_ws(text, self.start + 1)
        if text[i] == "]":
            return
        index = 0
        while True:
            group: list = []
            g0 = i
            while i - g0 < GROUP_CHARS and (max_items is None or len(group) < max_items):
                value, i = scan_value(text, i)
                group.append(value)
                m = _SEP.match(text, i)
                if m is None:
                    raise JsonParseError("Missing a comma or ']' after an array element.", i)
                i = m.end()
                if m.group(1) == "]":
                    if m.start(1) != self.end - 1:
                        raise JsonParseError("Missing a comma or '}' after an object member.", m.end(1))
                    yield index, group, (g0, i)
                    return
            yield index, group, (g0, i)
            if max_items is not None:
                return
            index += len(group)

    def numeric_blocks(self, inner: list[int]) -> Iterator[Any]:
        """float64 blocks of shape (n, *inner) for a dense numeric array; NotDense otherwise."""
        import numpy as np

        if not self.numeric or any(d == 0 for d in inner) or len(inner) > 31:
            raise NotDense()
        unit = _canonical(inner)
        boundary = _element_boundary(len(inner))
        per_element = int(np.prod(inner)) if inner else 1
        text, last = self.text, self.end - 1
        g0 = skip_ws(text, self.start + 1)
        while g0 < last:
            m = boundary.search(text, min(g0 + GROUP_CHARS, last), last)
            cut = m.start() + m.group(0).index(",") if m else last
            yield _dense_block(text[g0:cut], unit, per_element, inner)
            g0 = cut + 1


def _canonical(shape: list[int]) -> str:
    """The bracket/comma skeleton of one dense element: (2, 3) -> "[[,,],[,,]]"."""
    s = ""
    for d in reversed(shape):
        s = "[" + ",".join([s] * d) + "]"
    return s


_BOUNDARIES: dict[int, re.Pattern] = {}


def _element_boundary(rank: int) -> re.Pattern:
    """Text between two elements of inner rank ``rank``: ``]]`` ... ``,`` ... ``[[``."""
    if rank not in _BOUNDARIES:
        closes = r"\]" + r"[ \t\n\r]*\]" * (rank - 1) if rank else ""
        opens = r"\[" + r"[ \t\n\r]*\[" * (rank - 1) if rank else ""
        _BOUNDARIES[rank] = re.compile(closes + r"[ \t\n\r]*,[ \t\n\r]*" + opens)
    return _BOUNDARIES[rank]


def _dense_block(piece: str, unit: str, per_element: int, inner: list[int]) -> Any:
    """``"[1,2],[3,4]"`` -> float64 array (2, 2), if the numbers are JSON numbers and the
    skeleton is exactly that of dense elements of shape ``inner``; else NotDense."""
    import numpy as np

    t = piece.translate(_DROP_WS)
    skeleton = t.translate(_KEEP_SKELETON)
    n = (len(skeleton) + 1) // (len(unit) + 1) if unit else skeleton.count(",") + 1
    if skeleton != ",".join([unit] * n):
        raise NotDense()
    numbers = t.translate(_DROP_BRACKETS)
    if not _NUMBER_LIST.fullmatch(numbers):
        raise NotDense()
    arr = np.fromstring(numbers, dtype=np.float64, sep=",")
    if arr.size != n * per_element:
        raise NotDense()
    return arr.reshape([n, *inner])


# ---------------------------------------------------------------------------------------------
# The top-level object


def parse_document(text: str) -> Any:
    """Parse a request body: a dict whose tensor-carrying arrays are ``LazyArray``s (other
    top-level JSON values come back as they are, for the caller's "Is not object" error). Like
    rapidjson with kParseStopWhenDoneFlag (TF Serving), text after the root value is ignored."""
    i = skip_ws(text, 0)
    if i >= len(text):
        raise JsonParseError("The document is empty.", i)
    if text[i] == "[":
        return _lazy_array(text, i)
    if text[i] != "{":
        return scan_value(text, i)[0]
    return _object(text, i, depth=0)[0]


def _object(text: str, i: int, depth: int) -> tuple[dict, int]:
    """An object at ``text[i] == "{"``; tensor arrays become LazyArrays (depth 0: the body;
    depth 1: the ``inputs`` object)."""
    out: dict = {}
    i = skip_ws(text, i + 1)
    if text[i] == "}":
        return out, i + 1
    while True:
        if text[i] != '"':
            raise JsonParseError("Missing a name for object member.", i)
        key, i = scan_value(text, i)
        i = skip_ws(text, i)
        if i >= len(text) or text[i] != ":":
            raise JsonParseError("Missing a colon after a name of object member.", i)
        i = skip_ws(text, i + 1)
        out[key], i = _member_value(text, i, key, depth)
        i = skip_ws(text, i)
        if i < len(text) and text[i] == "}":
            return out, i + 1
        if i >= len(text) or text[i] != ",":
            raise JsonParseError("Missing a comma or '}' after an object member.", i)
        i = skip_ws(text, i + 1)


def _member_value(text: str, i: int, key: str, depth: int) -> tuple[Any, int]:
    if i >= len(text):
        raise JsonParseError("Invalid value.", i)
    lead = text[i]
    if lead == "[" and (depth == 1 or key in _TENSOR_KEYS):
        lazy = _lazy_array(text, i)
        return lazy, lazy.end
    if lead == "{" and depth == 0 and key == "inputs":
        return _object(text, i, depth=1)
    if depth == 0 and key not in _KNOWN_KEYS:
        return None, _skip_value(text, i)  # TF Serving ignores other keys: check, do not keep
    return scan_value(text, i)


def _lazy_array(text: str, i: int) -> LazyArray:
    """The span of the array at ``text[i]``: a numeric-only array is measured with regular
    expressions over windows; any other array is walked element by element (values dropped)."""
    n = len(text)
    pos = i
    while True:
        hi = min(pos + _WINDOW, n)
        pos = _NUMERIC_CHARS.match(text, pos, hi).end()
        if pos < hi or hi == n:
            break
    end = text.rfind("]", i, pos) + 1
    if end > i and _balanced(text, i, end):
        return LazyArray(text, i, end, numeric=True)
    lazy = LazyArray(text, i, n, numeric=False)
    end = _walk_array(text, i)
    lazy.end = end
    return lazy


def _balanced(text: str, lo: int, hi: int) -> bool:
    opens = closes = 0
    for w in range(lo, hi, _WINDOW):
        top = min(w + _WINDOW, hi)
        opens += text.count("[", w, top)
        closes += text.count("]", w, top)
    return opens == closes


def _walk_array(text: str, i: int) -> int:
    """End of the array at ``text[i]``, checking every element (values are not kept)."""
    i = skip_ws(text, i + 1)
    if i < len(text) and text[i] == "]":
        return i + 1
    while True:
        i = _skip_value(text, i)
        m = _SEP.match(text, i)
        if m is None:
            raise JsonParseError("Missing a comma or ']' after an array element.", i)
        if m.group(1) == "]":
            return m.start(1) + 1
        i = m.end()


def _skip_value(text: str, i: int) -> int:
    """End of the value at ``text[i]``; big arrays and objects are walked piece by piece
    (numeric arrays at regular-expression speed)."""
    if i < len(text) and text[i] == "[":
        return _lazy_array(text, i).end
    if i < len(text) and text[i] == "{":
        i = skip_ws(text, i + 1)
        if i < len(text) and text[i] == "}":
            return i + 1
        while True:
            if i >= len(text) or text[i] != '"':
                raise JsonParseError("Missing a name for object member.", i)
            _, i = scan_value(text, i)
            i = skip_ws(text, i)
            if i >= len(text) or text[i] != ":":
                raise JsonParseError("Missing a colon after a name of object member.", i)
            i = _skip_value(text, skip_ws(text, i + 1))
            i = skip_ws(text, i)
            if i < len(text) and text[i] == "}":
                return i + 1
            if i >= len(text) or text[i] != ",":
                raise JsonParseError("Missing a comma or '}' after an object member.", i)
            i = skip_ws(text, i + 1)
    return scan_value(text, i)[1]
