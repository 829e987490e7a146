"""The spec's glob matching for push rules, in time linear in the text whatever the pattern."""

# Spec appendix "Glob-style matching": ``*`` matches zero or more characters, ``?`` exactly
# one; matching is case-insensitive (Client-Server "Push Rules", conditions).
#
# A regular expression built from the glob (``*`` -> ``.*``) backtracks: ``*a*a*a*a*b``
# against a long run of ``a`` costs O(n^k) (HOSTILE row 37). Here the pattern is split at
# its stars into fixed-length segments (literals and ``?``). The first segment must match
# at the start, the last at the end, and every middle segment is placed at its leftmost
# match after the previous one: leftmost is never worse, because the stars around a middle
# segment absorb whatever lies between. Each segment is found by a scan of the text, so the
# whole match costs O(len(text) * longest segment) and never backtracks across stars.

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Optional

#: Longest pattern compiled (push rule patterns are short; this bounds the work).
MAX_PATTERN_LENGTH = 1000


@dataclass(frozen=True)
class Glob:
    """A compiled glob.

    :ivar segments: the pattern between stars, each a regex of fixed length (literals and
        ``.`` for ``?``) with its length.
    :ivar leading_star: the pattern starts with ``*``.
    :ivar trailing_star: the pattern ends with ``*``.
    """

    segments: tuple[tuple["re.Pattern[str]", int], ...]
    leading_star: bool
    trailing_star: bool


def _segment(text: str) -> tuple["re.Pattern[str]", int]:
    regex = "".join("." if c == "?" else re.escape(c) for c in text)
    return re.compile(regex, re.IGNORECASE | re.DOTALL), len(text)


@lru_cache(maxsize=4096)
def compile_glob(pattern: str) -> Glob:
    """Compile ``pattern`` (cached).

    :raises ValueError: if it is longer than :data:`MAX_PATTERN_LENGTH`.
    """
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise ValueError("glob pattern too long")
    parts = pattern.split("*")
    leading = len(parts) > 1 and parts[0] == ""
    trailing = len(parts) > 1 and parts[-1] == ""
    segments = tuple(_segment(p) for p in parts if p != "")
    return Glob(segments, leading, trailing)


def _match_at(seg: "re.Pattern[str]", text: str, pos: int, end: int) -> bool:
    return seg.match(text, pos, end) is not None


def _find(seg: "re.Pattern[str]", text: str, pos: int, end: int) -> int:
    """Leftmost start >= pos of ``seg`` ending by ``end``; -1 if none."""
    m = seg.search(text, pos, end)
    return -1 if m is None else m.start()


def glob_matches(pattern: str, text: str) -> bool:
    """Whether ``pattern`` matches the whole of ``text``, case-insensitively.

    :raises ValueError: if the pattern is too long.
    """
    return _match_from(compile_glob(pattern), text, 0, None)


def _match_from(g: Glob, text: str, start: int, end_ok: Optional[Callable[[int], bool]]) -> bool:
    """Match ``g`` against ``text`` from ``start`` (where the first segment must begin
    unless the pattern starts with a star).

    :param end_ok: ``None``: the match must end at the end of the text; otherwise a
        predicate on end positions (word boundaries), any accepted one will do.
    """
    end = len(text)
    segs = g.segments
    if not segs:
        if g.leading_star or g.trailing_star:  # only stars: anything
            return end_ok is None or any(end_ok(i) for i in range(start, end + 1))
        return start == end if end_ok is None else end_ok(start)
    pos = start
    i = 0
    if not g.leading_star:
        seg, n = segs[0]
        if not _match_at(seg, text, pos, end):
            return False
        pos += n
        i = 1
    # The last segment is anchored at the end (or at a boundary) unless a star follows it.
    last_anchored = not g.trailing_star and i < len(segs)
    stop = len(segs) - 1 if last_anchored else len(segs)
    for k in range(i, stop):
        seg, n = segs[k]
        found = _find(seg, text, pos, end)
        if found < 0:
            return False
        pos = found + n
    if not last_anchored:
        if not g.trailing_star:  # a single anchored segment, already placed
            return pos == end if end_ok is None else end_ok(pos)
        return end_ok is None or any(end_ok(k) for k in range(pos, end + 1))
    seg, n = segs[-1]
    if end_ok is None:
        at = end - n
        return at >= pos and _match_at(seg, text, at, end)
    p = pos
    while True:
        found = _find(seg, text, p, end)
        if found < 0:
            return False
        if end_ok(found + n):
            return True
        p = found + 1


def _is_word_char(c: str) -> bool:
    return ("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9") or c == "_"


def glob_matches_words(pattern: str, text: str) -> bool:
    """The ``content.body`` form: whether ``pattern`` matches some substring of ``text``
    that starts and ends at a word boundary (the start or end of the text, or any
    character not in ``[A-Za-z0-9_]``), case-insensitively.

    :raises ValueError: if the pattern is too long.
    """
    g = compile_glob(pattern)
    n = len(text)

    def starts(i: int) -> bool:
        return i == 0 or not _is_word_char(text[i - 1])

    def ends(i: int) -> bool:
        return i == n or not _is_word_char(text[i])

    if not g.segments and not g.leading_star:  # the empty pattern: an empty word
        return any(starts(i) and ends(i) for i in range(n + 1))
    if g.leading_star:
        # A leading star can begin at the start of the text, which is a boundary.
        return _match_from(g, text, 0, ends)
    first, width = g.segments[0]
    p = 0
    if len(g.segments) == 1 and not g.trailing_star:
        # No star: every occurrence is a candidate (fixed width).
        while True:
            found = _find(first, text, p, n)
            if found < 0:
                return False
            if starts(found) and ends(found + width):
                return True
            p = found + 1
    # With a star after the first segment, the leftmost occurrence that starts at a
    # boundary is the only one worth trying: any later start leaves less room for the
    # rest, and the star absorbs the difference.
    while True:
        found = _find(first, text, p, n)
        if found < 0:
            return False
        if starts(found):
            return _match_from(g, text, found, ends)
        p = found + 1


__all__ = ["MAX_PATTERN_LENGTH", "compile_glob", "glob_matches", "glob_matches_words"]
