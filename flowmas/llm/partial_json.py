"""Parse a JSON text as it streams in: ``PartialJSON.feed(chunk)``, then ``value()`` at any moment.

Streamed tool-call arguments arrive in pieces; a streaming UI wants the object so far. The scanner here reads
each character once (string bodies are skipped with one regex search, so huge arguments cost O(n)), and keeps
the last *safe cut*: a prefix of the text that, closed with the right brackets, is valid JSON. ``value()``
hands that prefix plus closers to the C ``json`` parser.

What a prefix yields (``value()`` is always *consistent* with the final value):
- an open string value is cut at the last complete character (an unfinished escape is left out);
- a number, ``true``, ``false`` or ``null`` appears only once a delimiter ends it (so numbers are never
  truncated); the complete text parses exactly, whatever it is;
- an object member appears once its key is complete and its value has started (a string) or ended;
- nothing yet (or an unfinished top-level scalar) is ``None``.
``value()`` never raises: text that is not JSON at all yields the last value that could be parsed.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

_STRING_STOP = re.compile(r'["\\]')
_WS = frozenset(" \t\r\n")
_HIGH_SURROGATE = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}$")
_SCALAR_END = frozenset(" \t\r\n,]}")

# states
_VALUE = 0  # expecting a value
_KEY = 1  # expecting a key (or '}' right after '{')
_COLON = 2  # expecting ':'
_AFTER = 3  # after a value inside a container: ',' or a closer
_STRING = 4  # inside a string
_SCALAR = 5  # inside a number or literal
_DONE = 6  # the top-level value is complete
_BROKEN = 7  # not JSON


class PartialJSON:
    """An incremental scanner over one JSON text; ``value()`` parses the longest safely closable prefix."""

    __slots__ = (
        "_buf",
        "_cache",
        "_cache_len",
        "_closers",
        "_escape_at",
        "_is_key",
        "_pos",
        "_safe_end",
        "_safe_suffix",
        "_scalar_start",
        "_state",
    )

    def __init__(self, text: str = "") -> None:
        self._buf = ""
        self._pos = 0
        self._state = _VALUE
        self._closers: list[str] = []  # '}' or ']' per open container
        self._is_key = False
        self._escape_at = -1  # index of the backslash of an unfinished escape, -1 if none
        self._safe_end = 0
        self._safe_suffix: str | None = None  # None: nothing parsable yet
        self._scalar_start = 0
        self._cache: Any = None
        self._cache_len = -1
        if text:
            self.feed(text)

    @property
    def text(self) -> str:
        return self._buf

    @property
    def complete(self) -> bool:
        """True once the top-level value has ended (or a top-level scalar might have: see ``value``)."""
        return self._state == _DONE

    def feed(self, chunk: str) -> None:
        self._buf += chunk
        self._scan()

    def _mark(self, end: int) -> None:
        self._safe_end = end
        self._safe_suffix = "".join(reversed(self._closers))

    def _end_value(self, end: int) -> None:
        """A value ended at ``end``: record the cut, and move to the state after it."""
        if self._closers:
            self._state = _AFTER
            self._mark(end)
        else:
            self._state = _DONE

    def _scan(self) -> None:
        buf = self._buf
        n = len(buf)
        i = self._pos
        state = self._state
        while i < n:
            if state == _STRING:
                if self._escape_at >= 0:
                    # inside an escape: '\x' is 2 chars, '\uXXXX' is 6
                    need = 6 if buf[self._escape_at + 1: self._escape_at + 2] == "u" else 2
                    if n - self._escape_at < need:
                        i = n
                        break
                    i = self._escape_at + need
                    self._escape_at = -1
                    continue
                match = _STRING_STOP.search(buf, i)
                if match is None:
                    i = n
                    break
                i = match.start()
                if buf[i] == "\\":
                    self._escape_at = i
                    if i + 1 >= n:
                        i = n
                        break
                    continue
                # closing quote
                i += 1
                if self._is_key:
                    state = _COLON
                else:
                    self._state = state
                    self._end_value(i)
                    state = self._state
                continue
            c = buf[i]
            if state == _SCALAR:
                if c in _SCALAR_END:
                    self._state = state
                    self._end_value(i)
                    state = self._state
                    continue  # re-read the delimiter in the new state
                i += 1
                continue
            if c in _WS:
                i += 1
                continue
            if state == _VALUE:
                if c == "{":
                    self._closers.append("}")
                    state = _KEY
                    self._mark(i + 1)
                elif c == "[":
                    self._closers.append("]")
                    state = _VALUE
                    self._mark(i + 1)
                    # an empty array may close right away
                elif c == '"':
                    state = _STRING
                    self._is_key = False
                elif c in "-0123456789tfn":
                    state = _SCALAR
                    self._scalar_start = i
                elif c == "]" and self._closers and self._closers[-1] == "]":
                    self._closers.pop()
                    self._state = state
                    self._end_value(i + 1)
                    state = self._state
                else:
                    state = _BROKEN
                    break
                i += 1
            elif state == _KEY:
                if c == '"':
                    state = _STRING
                    self._is_key = True
                elif c == "}" and self._closers and self._closers[-1] == "}":
                    self._closers.pop()
                    self._state = state
                    self._end_value(i + 1)
                    state = self._state
                else:
                    state = _BROKEN
                    break
                i += 1
            elif state == _COLON:
                if c != ":":
                    state = _BROKEN
                    break
                state = _VALUE
                i += 1
            elif state == _AFTER:
                if c == ",":
                    state = _KEY if self._closers[-1] == "}" else _VALUE
                elif c in "}]" and self._closers and self._closers[-1] == c:
                    self._closers.pop()
                    self._state = state
                    self._end_value(i + 1)
                    state = self._state
                else:
                    state = _BROKEN
                    break
                i += 1
            else:  # _DONE with trailing non-space, or _BROKEN
                state = _BROKEN
                break
        self._pos = i
        self._state = state

    def value(self) -> Any:
        """The value so far (see the module docstring); ``None`` when nothing is parsable yet. Never raises."""
        if self._cache_len == len(self._buf):
            return self._cache
        text: str | None
        state = self._state
        if state == _DONE:
            text = self._buf
        elif state == _SCALAR and not self._closers:
            text = None  # a top-level number or literal may go on: ``final()`` parses it
        elif state == _STRING and not self._is_key:
            end = self._escape_at if self._escape_at >= 0 else len(self._buf)
            if _HIGH_SURROGATE.match(self._buf, max(end - 6, 0), end) and _escaped_at(self._buf, end - 6):
                end -= 6  # half of a surrogate pair: wait for the other half
            text = self._buf[:end] + '"' + "".join(reversed(self._closers))
        elif self._safe_suffix is not None:
            text = self._buf[: self._safe_end] + self._safe_suffix
        else:
            text = None
        if text is not None:
            with contextlib.suppress(ValueError):  # not JSON: keep the last good value
                self._cache = json.loads(text)
        self._cache_len = len(self._buf)
        return self._cache

    def final(self) -> Any:
        """The value of the text, now known to be complete: exact when it is valid JSON, else ``value()``."""
        try:
            return json.loads(self._buf)
        except ValueError:
            return self.value()


def _escaped_at(buf: str, index: int) -> bool:
    """True when the backslash at ``index`` starts an escape (is preceded by an even number of backslashes)."""
    count = 0
    j = index - 1
    while j >= 0 and buf[j] == "\\":
        count += 1
        j -= 1
    return count % 2 == 0


def parse_partial(text: str, *, final: bool = False) -> Any:
    """``text`` (a possibly incomplete JSON text) parsed as far as it safely goes; never raises.

    ``final=True`` says the text is complete (a top-level number then parses too).
    """
    parser = PartialJSON(text)
    return parser.final() if final else parser.value()
