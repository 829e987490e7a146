"""Canonical JSON exactly as the spec's appendix defines it, strict about numbers."""

from __future__ import annotations

import json
import re
from typing import Any

from canonicaljson import encode_canonical_json as _encode

#: Canonical JSON's integer range (appendix "Canonical JSON").
MAX_SAFE_INTEGER = 2**53 - 1
MIN_SAFE_INTEGER = -(2**53) + 1

#: How deeply JSON may nest before we refuse to look at it.
MAX_DEPTH = 64


class CanonicalJSONError(ValueError):
    """The value cannot be represented in (strict) canonical JSON."""


def check_canonical_values(value: Any, *, strict: bool = True, _depth: int = 0) -> None:
    """Check that ``value`` holds only what canonical JSON allows.

    With ``strict`` (room v6+ and everything outside events), floats and integers outside
    [-(2**53)+1, (2**53)-1] are refused; NaN and infinities are always refused.

    :raises CanonicalJSONError: naming what is wrong.
    """
    if _depth > MAX_DEPTH:
        raise CanonicalJSONError("JSON nested too deeply")
    t = type(value)
    if t is str or t is bool or value is None:
        return
    if t is int:
        if strict and not (MIN_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER):
            raise CanonicalJSONError("integer out of canonical JSON range")
        return
    if t is dict:
        for k, v in value.items():
            if type(k) is not str:
                raise CanonicalJSONError("object keys must be strings")
            check_canonical_values(v, strict=strict, _depth=_depth + 1)
        return
    if t is list or t is tuple:
        for v in value:
            check_canonical_values(v, strict=strict, _depth=_depth + 1)
        return
    if t is float:
        if strict or value != value or value in (float("inf"), float("-inf")):
            raise CanonicalJSONError("floats are not allowed in canonical JSON")
        return
    raise CanonicalJSONError(f"{t.__name__} is not a JSON type")


def encode_canonical_json(value: Any, *, strict: bool = True) -> bytes:
    """Encode ``value`` as canonical JSON (sorted keys, no whitespace, UTF-8).

    :raises CanonicalJSONError: if ``value`` is not representable.
    """
    check_canonical_values(value, strict=strict)
    return _encode(value)


def _reject_constant(name: str) -> Any:
    raise CanonicalJSONError(f"{name} is not valid JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise CanonicalJSONError("number out of range")
    return value


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise CanonicalJSONError(f"duplicate key {key[:100]!r} in a JSON object")
            seen.add(key)
    return obj


#: A ``\uD800``-``\uDFFF`` escape: the only way a surrogate gets into parsed UTF-8 JSON.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")

_DECODER = json.JSONDecoder(
    parse_constant=_reject_constant, parse_float=_parse_float, object_pairs_hook=_object_without_duplicates
)


def parse_json(data: bytes | str) -> Any:
    """Parse JSON received from anywhere (a request body, a peer's response, a query
    parameter) as strictly as the spec's appendix "Canonical JSON" and I-JSON (RFC 7493)
    require of what we accept, so that no other parser could read it differently:

    - UTF-8 only (no byte order mark, no invalid sequences);
    - no ``NaN``, ``Infinity`` or ``-Infinity``, no number that overflows to infinity;
    - no duplicate keys in an object (RFC 8259 leaves the meaning to the parser);
    - no lone surrogate, escaped (``"\\ud800"``) or raw (escaped pairs are one character);
    - at most :data:`MAX_DEPTH` nested arrays and objects.

    Floats and integers beyond canonical JSON's range are returned as they are: which
    places refuse them depends on the API (room versions 1-5 allow them in events; see
    :func:`check_canonical_values`).

    :raises CanonicalJSONError: naming what is not acceptable.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            text = bytes(data).decode("utf-8")  # strict: raw surrogates are invalid UTF-8
        except UnicodeDecodeError:
            raise CanonicalJSONError("not UTF-8") from None
    else:
        text = data
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise CanonicalJSONError("lone surrogate in JSON text") from None
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        raise CanonicalJSONError("JSON nested too deeply") from None
    except ValueError as e:
        if isinstance(e, CanonicalJSONError):
            raise
        raise CanonicalJSONError(f"invalid JSON: {e}") from None
    _check_depth(value)
    if _SURROGATE_ESCAPE.search(text) is not None:
        _check_no_lone_surrogates(value)
    return value


def decode_prefix(text: str, pos: int, *, enclosing: int = 0) -> tuple[Any, int]:
    """Decode the one JSON value starting at ``text[pos]`` (after any whitespace is
    skipped by the caller) with every rule of :func:`parse_json`: for parsers that read a
    document piece by piece (:mod:`fedserver.federation.json_stream`). ``text`` must
    come from strictly decoded UTF-8.

    :param enclosing: how many arrays and objects enclose the value in its document (the
        depth limit counts them).
    :returns: ``(value, end)``: the index just after the value.
    :raises json.JSONDecodeError: if the text at ``pos`` is not (yet) a complete value.
    :raises CanonicalJSONError: for what :func:`parse_json` refuses in a complete value.
    """
    try:
        value, end = _DECODER.raw_decode(text, pos)
    except RecursionError:
        raise CanonicalJSONError("JSON nested too deeply") from None
    except ValueError as e:
        if isinstance(e, (json.JSONDecodeError, CanonicalJSONError)):
            raise
        # e.g. an integer longer than int()'s digit limit: refused, as by parse_json.
        raise CanonicalJSONError(f"invalid JSON: {e}") from None
    _check_depth(value, MAX_DEPTH - enclosing)
    if _SURROGATE_ESCAPE.search(text, pos, end) is not None:
        _check_no_lone_surrogates(value)
    return value, end


def _check_depth(value: Any, limit: int = MAX_DEPTH) -> None:
    """Level by level, containers only: the root is level 1."""
    level = [value] if type(value) is dict or type(value) is list else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            raise CanonicalJSONError("JSON nested too deeply")
        below = []
        for v in level:
            for x in v.values() if type(v) is dict else v:
                if type(x) is dict or type(x) is list:
                    below.append(x)
        level = below


def _check_no_lone_surrogates(value: Any) -> None:
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is str:
            strings: Any = (v,)
        elif t is dict:
            strings = v.keys()
            stack.extend(v.values())
        elif t is list:
            stack.extend(v)
            continue
        else:
            continue
        for s in strings:
            if not s.isascii():
                try:
                    s.encode("utf-8")
                except UnicodeEncodeError:
                    raise CanonicalJSONError("lone surrogate (\\uD800-\\uDFFF) in a JSON string") from None
