"""Incremental parsing of a JSON object whose large arrays are handed out item by item (send_join, /state)."""

from __future__ import annotations

import codecs
import json
from typing import Any, Collection

from fedserver.events.canonical import CanonicalJSONError, decode_prefix

#: Most characters of one value (an array item, or another member's value) held while it
#: is incomplete; a PDU is at most 64 KiB, the other members of these answers are small.
MAX_PENDING_VALUE = 4 * 1024 * 1024


class StreamedJSONError(CanonicalJSONError):
    """The streamed document is not the JSON object expected (or not JSON at all)."""


_WS = " \t\n\r"

# Parser states.
_START, _KEY, _COLON, _VALUE, _AFTER_VALUE, _ITEM, _AFTER_ITEM, _DONE = range(8)


class StreamedObjectParser:
    """Parses a JSON object fed in pieces; the items of its top-level arrays named in
    ``stream_keys`` come out as soon as each is complete, in batches of ``batch_size``
    (so the whole document is never held: only the incomplete tail and the batch being
    filled); every other member is kept and returned by :meth:`close`.

    Values are parsed by the standard library's C scanner (``raw_decode``) with every
    rule of :func:`fedserver.events.canonical.parse_json`
    (:func:`~fedserver.events.canonical.decode_prefix`): UTF-8 only, no ``NaN`` or
    ``Infinity``, no duplicate keys (the top-level object's included), no lone surrogate,
    the nesting limit counted from the document's root, floats as floats. An item that is
    not complete yet is parsed again once more data has come (at most one item per piece
    of data is parsed twice).

    :param stream_keys: the members whose array items are streamed.
    :param batch_size: items per batch.
    """

    def __init__(self, stream_keys: Collection[str], batch_size: int = 1000) -> None:
        self._stream_keys = frozenset(stream_keys)
        self._batch_size = batch_size
        self._utf8 = codecs.getincrementaldecoder("utf-8")("strict")
        self._buf = ""
        self._pos = 0
        self._state = _START
        self._key = ""
        self._members = 0
        self._top: dict[str, Any] = {}
        self._batch: list[Any] = []
        self._out: list[tuple[str, list[Any]]] = []
        self.items = 0

    def feed(self, data: bytes) -> list[tuple[str, list[Any]]]:
        """Parse another piece of the document.

        :returns: the batches completed, ``[(key, items)]``, in document order.
        :raises StreamedJSONError: if the document cannot be the expected object.
        """
        try:
            text = self._utf8.decode(data)
        except UnicodeDecodeError:
            raise StreamedJSONError("body is not UTF-8") from None
        if self._pos > 65536:
            self._buf = self._buf[self._pos:]
            self._pos = 0
        self._buf += text
        self._run(final=False)
        out, self._out = self._out, []
        return out

    def close(self) -> tuple[list[tuple[str, list[Any]]], dict[str, Any]]:
        """The document has ended.

        :returns: ``(last batches, the other members)``.
        :raises StreamedJSONError: if it is incomplete or has trailing data.
        """
        try:
            self._buf += self._utf8.decode(b"", final=True)
        except UnicodeDecodeError:
            raise StreamedJSONError("body is not UTF-8") from None
        self._run(final=True)
        if self._state != _DONE:
            raise StreamedJSONError("the document ends before the object does")
        if self._buf[self._pos:].strip(_WS):
            raise StreamedJSONError("data after the object")
        if self._batch:
            self._out.append((self._key, self._batch))
            self._batch = []
        out, self._out = self._out, []
        return out, self._top

    # -- the state machine ----------------------------------------------------------------

    def _skip_ws(self) -> bool:
        buf, pos, n = self._buf, self._pos, len(self._buf)
        while pos < n and buf[pos] in _WS:
            pos += 1
        self._pos = pos
        return pos < n

    def _decode(self, final: bool, enclosing: int) -> tuple[bool, Any]:
        """One value at the position: ``(True, value)``, or ``(False, None)`` if it is not
        complete yet. ``enclosing``: the arrays and objects around it."""
        buf, pos = self._buf, self._pos
        try:
            value, end = decode_prefix(buf, pos, enclosing=enclosing)
        except json.JSONDecodeError as e:
            if final or len(buf) - pos > MAX_PENDING_VALUE:
                raise StreamedJSONError(f"invalid JSON: {e}") from None
            return False, None
        except StreamedJSONError:
            raise
        except CanonicalJSONError as e:
            raise StreamedJSONError(str(e)) from None
        if end >= len(buf) and not final:
            return False, None  # a number (or anything) may go on in the next piece
        self._pos = end
        return True, value

    def _run(self, final: bool) -> None:
        while self._state != _DONE and self._skip_ws():
            c = self._buf[self._pos]
            state = self._state
            if state == _START:
                if c != "{":
                    raise StreamedJSONError("the document is not a JSON object")
                self._pos += 1
                self._state = _KEY
            elif state == _KEY:
                if c == "}" and self._members == 0:
                    self._pos += 1
                    self._state = _DONE
                    continue
                if c != '"':
                    raise StreamedJSONError("expected a member name")
                ok, key = self._decode(final, 1)
                if not ok:
                    return
                if key in self._top:
                    raise StreamedJSONError(f"duplicate key {key[:100]!r} in a JSON object")
                self._key = key
                self._members += 1
                self._state = _COLON
            elif state == _COLON:
                if c != ":":
                    raise StreamedJSONError("expected ':'")
                self._pos += 1
                self._state = _VALUE
            elif state == _VALUE:
                key = self._key
                if key in self._stream_keys and c == "[":
                    self._top[key] = None  # streamed, not kept
                    self._pos += 1
                    self._state = _ITEM
                    continue
                ok, value = self._decode(final, 1)
                if not ok:
                    return
                if key in self._stream_keys:
                    raise StreamedJSONError(f"{key!r} must be an array")
                self._top[key] = value
                self._state = _AFTER_VALUE
            elif state == _AFTER_VALUE:
                self._pos += 1
                if c == ",":
                    self._state = _KEY
                    self._members = -1  # a member must follow (no '}' now)
                elif c == "}":
                    self._state = _DONE
                else:
                    raise StreamedJSONError("expected ',' or '}'")
            elif state == _ITEM:
                if c == "]":
                    if self._after_comma:
                        raise StreamedJSONError("expected an array item after ','")
                    self._pos += 1
                    self._end_array()
                    continue
                ok, value = self._decode(final, 2)
                if not ok:
                    return
                self._after_comma = False
                self._batch.append(value)
                self.items += 1
                if len(self._batch) >= self._batch_size:
                    self._out.append((self._key, self._batch))
                    self._batch = []
                self._state = _AFTER_ITEM
            elif state == _AFTER_ITEM:
                self._pos += 1
                if c == ",":
                    self._state = _ITEM
                    self._after_comma = True
                elif c == "]":
                    self._end_array()
                else:
                    raise StreamedJSONError("expected ',' or ']'")

    _after_comma = False

    def _end_array(self) -> None:
        if self._batch:
            self._out.append((self._key, self._batch))
            self._batch = []
        self._after_comma = False
        self._state = _AFTER_VALUE
