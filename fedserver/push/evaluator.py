"""Evaluating a user's push rules against one event: conditions, the first match, its actions."""

# Client-Server API "Push Rules": rules are checked kind by kind (override, content, room,
# sender, underride) and within a kind in order; disabled rules never match; the first
# matching rule's actions decide. "Unrecognised conditions MUST NOT match any events".
# Legacy mention rules (v1.7 "Changed") apply only to events WITHOUT ``m.mentions``.

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, TypeGuard

from fedserver.push.glob import MAX_PATTERN_LENGTH, glob_matches, glob_matches_words
from fedserver.push.rules import LEGACY_MENTION_RULES, iter_rules

_MEMBER_COUNT = re.compile(r"^(==|<=|>=|<|>)?([0-9]{1,9})$")
_ABSENT = object()


@dataclass(frozen=True)
class PushContext:
    """What the conditions need to know beyond the event, for one user and room.

    :ivar user_id: whose rules these are.
    :ivar display_name: the user's display name in the room (``contains_display_name``).
    :ivar member_count: joined members of the room (``room_member_count``).
    :ivar sender_level: the sender's power level (creators in room v12: infinite).
    :ivar notification_levels: ``notifications`` of the power levels, defaults included
        (``{"room": 50}`` at least) (``sender_notification_permission``).
    """

    user_id: str
    display_name: Optional[str] = None
    member_count: int = 0
    sender_level: float = 0
    notification_levels: Mapping[str, int] = field(default_factory=lambda: {"room": 50})


def split_path(key: str) -> list[str]:
    """Spec appendix "Dot-separated property paths": ``content.m\\.relates_to`` is
    ``["content", "m.relates_to"]``; ``\\\\`` is a literal backslash, other escapes are
    kept as written."""
    return list(_split_path(key))


@functools.lru_cache(maxsize=4096)
def _split_path(key: str) -> tuple[str, ...]:
    # Rules name a few paths over and over (every event is checked against every rule):
    # each is split once. Keys are bounded by the rules' size limits.
    if "\\" not in key:
        return tuple(key.split("."))
    parts: list[str] = []
    buf: list[str] = []
    i = 0
    while i < len(key):
        c = key[i]
        if c == "\\" and i + 1 < len(key) and key[i + 1] in (".", "\\"):
            buf.append(key[i + 1])
            i += 2
            continue
        if c == ".":
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(c)
        i += 1
    parts.append("".join(buf))
    return tuple(parts)


def _is_mapping(value: Any) -> TypeGuard[Mapping[str, Any]]:
    # Events are plain dicts (parsed JSON): check that first, the ABC check is slow.
    return type(value) is dict or isinstance(value, Mapping)


def lookup(event: Mapping[str, Any], key: str) -> Any:
    """The value at a dot-separated path of the event, or a sentinel if absent."""
    value: Any = event
    for part in _split_path(key):
        if not _is_mapping(value) or part not in value:
            return _ABSENT
        value = value[part]
    return value


def _exact(a: Any, b: Any) -> bool:
    """Equality without casts (``True`` is not ``1``)."""
    return type(a) is type(b) and a == b


def condition_matches(condition: Mapping[str, Any], event: Mapping[str, Any], ctx: PushContext) -> bool:
    """Whether one condition holds for ``event`` (a PDU or client event as a dict)."""
    kind = condition.get("kind")
    if kind == "event_match":
        key, pattern = condition.get("key"), condition.get("pattern")
        if not isinstance(key, str) or not isinstance(pattern, str) or len(pattern) > MAX_PATTERN_LENGTH:
            return False
        value = lookup(event, key)
        if not isinstance(value, str):
            return False  # absent or not a string: no match, even for "*"
        if key == "content.body":
            return glob_matches_words(pattern, value)
        return glob_matches(pattern, value)
    if kind == "event_property_is":
        key = condition.get("key")
        value = lookup(event, key) if isinstance(key, str) else _ABSENT
        return value is not _ABSENT and _exact(value, condition.get("value", _ABSENT))
    if kind == "event_property_contains":
        key = condition.get("key")
        value = lookup(event, key) if isinstance(key, str) else _ABSENT
        if not isinstance(value, list):
            return False
        wanted = condition.get("value", _ABSENT)
        return any(_exact(v, wanted) for v in value)
    if kind == "contains_display_name":
        name = ctx.display_name
        body = lookup(event, "content.body")
        if not name or not isinstance(body, str):
            return False
        # The name as a literal (its '*' and '?' are not wildcards), at word boundaries.
        return _contains_words(body, name)
    if kind == "room_member_count":
        is_ = condition.get("is")
        parsed = _member_count_test(is_ if isinstance(is_, str) else "")
        if parsed is None:
            return False
        op, n = parsed
        count = ctx.member_count
        return {
            "==": count == n, "<": count < n, ">": count > n, "<=": count <= n, ">=": count >= n,
        }[op]
    if kind == "sender_notification_permission":
        key = condition.get("key")
        if not isinstance(key, str):
            return False
        required = ctx.notification_levels.get(key, 50)
        return ctx.sender_level >= required
    return False


@functools.lru_cache(maxsize=1024)
def _member_count_test(is_: str) -> Optional[tuple[str, int]]:
    # Parsed once per distinct ``is`` (rules repeat a few; bounded by the cache size).
    m = _MEMBER_COUNT.match(is_)
    return None if m is None else (m.group(1) or "==", int(m.group(2)))


def _is_word_char(c: str) -> bool:
    return ("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9") or c == "_"


def _contains_words(text: str, needle: str) -> bool:
    """``needle`` as a literal substring of ``text`` at word boundaries, case-insensitively."""
    hay, want = text.lower(), needle.lower()
    if not want or len(hay) != len(text):
        # Lowercasing changed lengths (rare scripts): compare by regex instead.
        return re.search(
            r"(?:^|(?<=[^A-Za-z0-9_]))" + re.escape(needle) + r"(?=$|[^A-Za-z0-9_])", text, re.IGNORECASE
        ) is not None if needle else False
    start = 0
    while True:
        i = hay.find(want, start)
        if i < 0:
            return False
        j = i + len(want)
        if (i == 0 or not _is_word_char(text[i - 1])) and (j == len(text) or not _is_word_char(text[j])):
            return True
        start = i + 1


def rule_matches(kind: str, rule: Mapping[str, Any], event: Mapping[str, Any], ctx: PushContext) -> bool:
    """Whether an enabled rule of ``kind`` matches."""
    if rule.get("enabled") is False:
        return False
    if rule.get("rule_id") in LEGACY_MENTION_RULES:
        content = event.get("content")
        if _is_mapping(content) and "m.mentions" in content:
            return False
    if kind == "content":
        pattern = rule.get("pattern")
        body = lookup(event, "content.body")
        return isinstance(pattern, str) and isinstance(body, str) and glob_matches_words(pattern, body)
    if kind == "room":
        return event.get("room_id") == rule.get("rule_id")
    if kind == "sender":
        return event.get("sender") == rule.get("rule_id")
    conditions = rule.get("conditions") or []
    return all(_is_mapping(c) and condition_matches(c, event, ctx) for c in conditions)


def evaluate(ruleset: Mapping[str, list[dict[str, Any]]], event: Mapping[str, Any], ctx: PushContext) -> Optional[list[Any]]:
    """The actions of the first matching rule (historical actions stripped), or ``None``
    if no rule matches. Events the user sent never notify them (spec: "Homeservers MUST
    NOT notify the Push Gateway for events that the user has sent themselves")."""
    if event.get("sender") == ctx.user_id:
        return None
    for kind, rule in iter_rules(ruleset):
        if rule_matches(kind, rule, event, ctx):
            return [a for a in rule.get("actions") or [] if a not in ("dont_notify", "coalesce")]
    return None


#: Event types whose candidate rules a :class:`CompiledRuleset` remembers (types are
#: chosen by senders: the memory is bounded, and emptied when full).
MAX_TYPES_REMEMBERED = 256

_NO_CONTEXT = PushContext("")


class CompiledRuleset:
    """A ruleset prepared for evaluating many events: the same verdicts as
    :func:`evaluate`, found sooner.

    A rule's conditions must all hold (spec "Conditions": "all the conditions must
    match"), and an ``event_match`` condition on the key ``type`` reads nothing but the
    event's type. So for each event type, the rules that such a condition rules out, and
    the disabled rules, are left out once, and in the others those conditions (known to
    hold) are not checked again; the rest is checked in order, as :func:`evaluate` does.
    The ruleset must not change afterwards (the handlers' cached rulesets never do).
    """

    def __init__(self, ruleset: Mapping[str, list[dict[str, Any]]]) -> None:
        self.ruleset = ruleset
        rules: list[tuple[str, dict[str, Any], Optional[list[Any]], tuple[Mapping[str, Any], ...]]] = []
        for kind, rule in iter_rules(ruleset):
            if rule.get("enabled") is False:
                continue  # never matches
            conditions = rule.get("conditions") if kind not in ("content", "room", "sender") else None
            on_type: tuple[Mapping[str, Any], ...] = ()
            if isinstance(conditions, list):
                on_type = tuple(
                    c for c in conditions
                    if _is_mapping(c) and c.get("kind") == "event_match" and c.get("key") == "type"
                )
            else:
                conditions = None  # (not a list: rule_matches decides)
            rules.append((kind, rule, conditions, on_type))
        self._rules = rules
        self._by_type: dict[str, tuple[_Candidate, ...]] = {}
        self._all = tuple(
            (kind, rule, None, rule.get("rule_id") in LEGACY_MENTION_RULES) for kind, rule, _, _ in rules
        )

    def candidates(self, event_type: Any) -> tuple["_Candidate", ...]:
        """``(kind, rule, conditions left to check or None, legacy mention rule)`` of the
        rules that may match an event of this type, in order (``None``: check the whole
        rule with :func:`rule_matches`)."""
        if type(event_type) is not str:
            return self._all
        found = self._by_type.get(event_type)
        if found is None:
            probe = {"type": event_type}
            out: list[_Candidate] = []
            for kind, rule, conditions, on_type in self._rules:
                if not all(condition_matches(c, probe, _NO_CONTEXT) for c in on_type):
                    continue
                rest = None if conditions is None else tuple(
                    c for c in conditions if not any(c is t for t in on_type)
                )
                out.append((kind, rule, rest, rule.get("rule_id") in LEGACY_MENTION_RULES))
            found = tuple(out)
            if len(self._by_type) >= MAX_TYPES_REMEMBERED:
                self._by_type.clear()
            self._by_type[event_type] = found
        return found


_Candidate = tuple[str, dict[str, Any], Optional[tuple[Any, ...]], bool]


def evaluate_compiled(compiled: CompiledRuleset, event: Mapping[str, Any], ctx: PushContext) -> Optional[list[Any]]:
    """:func:`evaluate` with a :class:`CompiledRuleset` (the same answer)."""
    if event.get("sender") == ctx.user_id:
        return None
    content = event.get("content")
    has_mentions = _is_mapping(content) and "m.mentions" in content
    for kind, rule, rest, legacy in compiled.candidates(event.get("type")):
        if rest is None:
            if not rule_matches(kind, rule, event, ctx):
                continue
        elif (legacy and has_mentions) or not all(_is_mapping(c) and condition_matches(c, event, ctx) for c in rest):
            continue
        return [a for a in rule.get("actions") or [] if a not in ("dont_notify", "coalesce")]
    return None


def is_notify(actions: Optional[list[Any]]) -> bool:
    """Whether the actions notify."""
    return bool(actions) and "notify" in actions  # type: ignore[operator]


def tweaks(actions: Optional[list[Any]]) -> dict[str, Any]:
    """The tweaks the actions set (``highlight`` without a value is ``True``)."""
    out: dict[str, Any] = {}
    for a in actions or []:
        if isinstance(a, Mapping) and isinstance(a.get("set_tweak"), str):
            out[a["set_tweak"]] = a.get("value", True)
    return out


def is_highlight(actions: Optional[list[Any]]) -> bool:
    """Whether the actions highlight (spec: "If a highlight tweak is given with no value,
    its value is defined to be true")."""
    return tweaks(actions).get("highlight") is True


__all__ = [
    "CompiledRuleset",
    "PushContext",
    "condition_matches",
    "evaluate",
    "evaluate_compiled",
    "is_highlight",
    "is_notify",
    "lookup",
    "rule_matches",
    "split_path",
    "tweaks",
]
