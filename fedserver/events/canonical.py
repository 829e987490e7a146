"""Canonical JSON exactly as the spec's appendix defines it, strict about numbers."""

from __future__ import annotations

import json
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


def parse_json(data: bytes | str) -> Any:
    """Parse JSON as the spec requires of input: UTF-8, no NaN/Infinity, bounded depth.

    Floats are returned as floats (callers that need strictness run
    :func:`check_canonical_values`).

    :raises CanonicalJSONError: if it is not acceptable JSON.
    """
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise CanonicalJSONError("body is not UTF-8") from None
    try:
        value = json.loads(data, parse_constant=_reject_constant, parse_float=_parse_float)
    except RecursionError:
        raise CanonicalJSONError("JSON nested too deeply") from None
    except ValueError as e:
        if isinstance(e, CanonicalJSONError):
            raise
        raise CanonicalJSONError(f"invalid JSON: {e}") from None
    _check_depth(value)
    return value


def _check_depth(value: Any) -> None:
    stack = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if d > MAX_DEPTH:
            raise CanonicalJSONError("JSON nested too deeply")
        if type(v) is dict:
            stack.extend((x, d + 1) for x in v.values())
        elif type(v) is list:
            stack.extend((x, d + 1) for x in v)
