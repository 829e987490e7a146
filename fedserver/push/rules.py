"""Push rules as data: the spec's server-default rules, a user's ruleset, and client edits."""

# Client-Server API "Push Rules" and "Predefined Rules" (v1.12, the newest version we
# advertise): five kinds checked in the order override, content, room, sender, underride.
# Server-default rules have ids starting with "." and come after the user's own rules of
# the same kind, except ".m.rule.master", which comes first of all.
#
# What a user changed is kept as plain JSON (see :class:`UserRules`): their own rules per
# kind, in priority order, and for server-default rules only the ``enabled`` flag and the
# ``actions`` they set. The full ruleset is rebuilt from that and the defaults, so a new
# server-default rule reaches every user without a migration.

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

#: The kinds, in the order they are checked.
KINDS = ("override", "content", "room", "sender", "underride")
#: Kinds whose rules carry ``conditions``.
CONDITION_KINDS = ("override", "underride")

#: Most rules of their own a user may have (all kinds together).
MAX_USER_RULES = 500
#: Longest rule id (bytes of UTF-8).
MAX_RULE_ID_BYTES = 255
#: Most conditions / actions in one rule.
MAX_CONDITIONS = 20
MAX_ACTIONS = 20
#: Longest pattern of a content rule or an ``event_match`` condition.
MAX_PATTERN_LENGTH = 1000

#: Actions older versions of the spec defined; "Historical Actions": they MUST be
#: ignored (stripped), so ``["dont_notify"]`` means ``[]``.
HISTORICAL_ACTIONS = frozenset({"dont_notify", "coalesce"})

#: The legacy mention rules (v1.7 "Changed"): only applied to events WITHOUT an
#: ``m.mentions`` property.
LEGACY_MENTION_RULES = frozenset({".m.rule.contains_display_name", ".m.rule.roomnotif", ".m.rule.contains_user_name"})

_MEMBER_COUNT = re.compile(r"^(==|<=|>=|<|>)?([0-9]{1,9})$")

_SOUND_DEFAULT = {"set_tweak": "sound", "value": "default"}
_HIGHLIGHT = {"set_tweak": "highlight"}


class RuleError(Exception):
    """A client's push rule request is not acceptable.

    :ivar status: the HTTP status to answer with.
    :ivar errcode: the Matrix error code.
    """

    def __init__(self, status: int, errcode: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.errcode = errcode
        self.message = message


def _cond_match(key: str, pattern: str) -> dict[str, Any]:
    return {"kind": "event_match", "key": key, "pattern": pattern}


def default_rules(user_id: str) -> dict[str, list[dict[str, Any]]]:
    """The spec's server-default rules for ``user_id``, by kind, in priority order.

    The order of override and underride rules is the one matrix-js-sdk (the SDK under
    Element) expects; it also expects the two unstable ids
    ``.org.matrix.msc3786.rule.room.server_acl`` (the same rule as
    ``.m.rule.room.server_acl``) and ``.org.matrix.msc3914.rule.room.call`` (whose
    ``call_started`` condition we do not know, so it never matches: spec "Unrecognised
    conditions MUST NOT match any events"), and warns for every one it misses.
    """
    localpart = user_id[1:].split(":", 1)[0] if user_id.startswith("@") else user_id

    def rule(rule_id: str, conditions: list, actions: list, enabled: bool = True) -> dict[str, Any]:
        return {"rule_id": rule_id, "default": True, "enabled": enabled, "conditions": conditions, "actions": actions}

    server_acl = [_cond_match("type", "m.room.server_acl"), _cond_match("state_key", "")]
    override = [
        rule(".m.rule.master", [], [], enabled=False),
        rule(".m.rule.suppress_notices", [_cond_match("content.msgtype", "m.notice")], []),
        rule(
            ".m.rule.invite_for_me",
            [_cond_match("type", "m.room.member"), _cond_match("content.membership", "invite"),
             _cond_match("state_key", user_id)],
            ["notify", dict(_SOUND_DEFAULT)],
        ),
        rule(".m.rule.member_event", [_cond_match("type", "m.room.member")], []),
        rule(
            ".m.rule.is_user_mention",
            [{"kind": "event_property_contains", "key": "content.m\\.mentions.user_ids", "value": user_id}],
            ["notify", dict(_SOUND_DEFAULT), dict(_HIGHLIGHT)],
        ),
        rule(".m.rule.contains_display_name", [{"kind": "contains_display_name"}],
             ["notify", dict(_SOUND_DEFAULT), dict(_HIGHLIGHT)]),
        rule(
            ".m.rule.is_room_mention",
            [{"kind": "event_property_is", "key": "content.m\\.mentions.room", "value": True},
             {"kind": "sender_notification_permission", "key": "room"}],
            ["notify", dict(_HIGHLIGHT)],
        ),
        rule(
            ".m.rule.roomnotif",
            [_cond_match("content.body", "@room"), {"kind": "sender_notification_permission", "key": "room"}],
            ["notify", dict(_HIGHLIGHT)],
        ),
        rule(".m.rule.tombstone", [_cond_match("type", "m.room.tombstone"), _cond_match("state_key", "")],
             ["notify", dict(_HIGHLIGHT)]),
        rule(".m.rule.reaction", [_cond_match("type", "m.reaction")], []),
        rule(".m.rule.room.server_acl", server_acl, []),
        rule(".org.matrix.msc3786.rule.room.server_acl", copy.deepcopy(server_acl), []),
        rule(
            ".m.rule.suppress_edits",
            [{"kind": "event_property_is", "key": "content.m\\.relates_to.rel_type", "value": "m.replace"}],
            [],
        ),
    ]
    content = [
        {
            "rule_id": ".m.rule.contains_user_name",
            "default": True,
            "enabled": True,
            "pattern": localpart,
            "actions": ["notify", dict(_SOUND_DEFAULT), dict(_HIGHLIGHT)],
        }
    ]
    underride = [
        rule(".m.rule.call", [_cond_match("type", "m.call.invite")], ["notify", {"set_tweak": "sound", "value": "ring"}]),
        rule(
            ".org.matrix.msc3914.rule.room.call",
            [_cond_match("type", "org.matrix.msc3401.call"), {"kind": "call_started"}],
            ["notify", dict(_SOUND_DEFAULT)],
        ),
        rule(
            ".m.rule.encrypted_room_one_to_one",
            [{"kind": "room_member_count", "is": "2"}, _cond_match("type", "m.room.encrypted")],
            ["notify", dict(_SOUND_DEFAULT)],
        ),
        rule(
            ".m.rule.room_one_to_one",
            [{"kind": "room_member_count", "is": "2"}, _cond_match("type", "m.room.message")],
            ["notify", dict(_SOUND_DEFAULT)],
        ),
        rule(".m.rule.message", [_cond_match("type", "m.room.message")], ["notify"]),
        rule(".m.rule.encrypted", [_cond_match("type", "m.room.encrypted")], ["notify"]),
    ]
    return {"override": override, "content": content, "room": [], "sender": [], "underride": underride}


@dataclass
class UserRules:
    """What one user changed: their own rules and their edits of server-default rules.

    :ivar own: ``{kind: [rule, ...]}`` in priority order (most important first); each rule
        is ``{"rule_id", "actions", "enabled", "conditions"?, "pattern"?}``.
    :ivar defaults: ``{rule_id: {"enabled"?: bool, "actions"?: list}}`` for server-default
        rules the user enabled, disabled or gave other actions.
    """

    own: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, value: Any) -> "UserRules":
        """From what :meth:`to_json` stored (anything malformed is dropped)."""
        if not isinstance(value, Mapping):
            return cls()
        own_in = value.get("own")
        own: dict[str, list[dict[str, Any]]] = {}
        if isinstance(own_in, Mapping):
            for kind in KINDS:
                rules = own_in.get(kind)
                if isinstance(rules, list):
                    own[kind] = [r for r in rules if isinstance(r, dict) and isinstance(r.get("rule_id"), str)]
        defaults_in = value.get("defaults")
        defaults = {k: dict(v) for k, v in defaults_in.items() if isinstance(v, Mapping)} if isinstance(defaults_in, Mapping) else {}
        return cls(own, defaults)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON to store."""
        return {"own": {k: v for k, v in self.own.items() if v}, "defaults": self.defaults}

    def copy(self) -> "UserRules":
        return UserRules(copy.deepcopy(self.own), copy.deepcopy(self.defaults))

    def count(self) -> int:
        return sum(len(v) for v in self.own.values())


def build_ruleset(user_id: str, user_rules: UserRules) -> dict[str, list[dict[str, Any]]]:
    """The user's full ruleset as ``GET /pushrules/global/`` shows it: ``{kind: [rule]}``
    in priority order, server-default rules with the user's edits applied.

    Per kind: ``.m.rule.master`` first, then the user's own rules, then the other
    server-default rules (spec "Predefined Rules": "They operate at a lower priority than
    user-defined rules, except for the .m.rule.master rule").
    """
    defaults = default_rules(user_id)
    out: dict[str, list[dict[str, Any]]] = {}
    for kind in KINDS:
        own = [_client_form(kind, r) for r in user_rules.own.get(kind, [])]
        defs = [_with_edits(r, user_rules.defaults.get(r["rule_id"])) for r in defaults[kind]]
        if kind == "override":
            master = [r for r in defs if r["rule_id"] == ".m.rule.master"]
            rest = [r for r in defs if r["rule_id"] != ".m.rule.master"]
            out[kind] = master + own + rest
        else:
            out[kind] = own + defs
    return out


def _client_form(kind: str, rule: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "rule_id": rule["rule_id"],
        "default": False,
        "enabled": rule.get("enabled", True) is not False,
        "actions": list(rule.get("actions") or []),
    }
    if kind in CONDITION_KINDS:
        out["conditions"] = list(rule.get("conditions") or [])
    if kind == "content":
        out["pattern"] = rule.get("pattern", "")
    return out


def _with_edits(rule: dict[str, Any], edits: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    if not edits:
        return rule
    rule = dict(rule)
    if isinstance(edits.get("enabled"), bool):
        rule["enabled"] = edits["enabled"]
    if isinstance(edits.get("actions"), list):
        rule["actions"] = list(edits["actions"])
    return rule


def find_rule(ruleset: Mapping[str, list[dict[str, Any]]], kind: str, rule_id: str) -> Optional[dict[str, Any]]:
    """The rule ``rule_id`` of ``kind`` in a built ruleset, or ``None``."""
    for r in ruleset.get(kind, []):
        if r["rule_id"] == rule_id:
            return r
    return None


# -- validating what clients send -------------------------------------------------------------


def check_kind(kind: Any) -> str:
    """:raises RuleError: 400 ``M_INVALID_PARAM`` unless ``kind`` is one of :data:`KINDS`."""
    if kind not in KINDS:
        raise RuleError(400, "M_INVALID_PARAM", f"Unknown push rule kind {str(kind)[:50]!r}")
    return kind


def check_new_rule_id(kind: str, rule_id: Any) -> str:
    """Spec ``PUT /pushrules/global/{kind}/{ruleId}``: an id starting with "." is reserved
    for server-default rules; "/" and "\\" are not allowed. Room rules are named by a room
    id, sender rules by a user id.

    :raises RuleError: 400 ``M_INVALID_PARAM``.
    """
    if not isinstance(rule_id, str) or not rule_id or len(rule_id.encode("utf-8", "surrogatepass")) > MAX_RULE_ID_BYTES:
        raise RuleError(400, "M_INVALID_PARAM", "Invalid rule id")
    if rule_id.startswith("."):
        raise RuleError(400, "M_INVALID_PARAM", "Rule ids starting with '.' are reserved for server-default rules")
    if "/" in rule_id or "\\" in rule_id or "\x00" in rule_id:
        raise RuleError(400, "M_INVALID_PARAM", "Rule ids may not contain '/' or '\\'")
    if kind == "room" and not rule_id.startswith("!"):
        raise RuleError(400, "M_INVALID_PARAM", "The id of a room rule is a room id")
    if kind == "sender" and not rule_id.startswith("@"):
        raise RuleError(400, "M_INVALID_PARAM", "The id of a sender rule is a user id")
    return rule_id


def check_actions(actions: Any) -> list[Any]:
    """Validate and normalise a rule's ``actions``: historical actions are stripped
    ("Historical Actions"), ``notify`` and ``set_tweak`` objects are kept.

    :raises RuleError: 400 ``M_INVALID_PARAM`` for anything else.
    """
    if not isinstance(actions, list):
        raise RuleError(400, "M_INVALID_PARAM", "actions must be a list")
    if len(actions) > MAX_ACTIONS:
        raise RuleError(400, "M_INVALID_PARAM", f"At most {MAX_ACTIONS} actions")
    out: list[Any] = []
    for a in actions:
        if a == "notify":
            out.append(a)
        elif isinstance(a, str) and a in HISTORICAL_ACTIONS:
            continue
        elif isinstance(a, dict) and isinstance(a.get("set_tweak"), str) and a["set_tweak"]:
            if set(a) - {"set_tweak", "value"}:
                raise RuleError(400, "M_INVALID_PARAM", "A set_tweak action has only set_tweak and value")
            out.append(dict(a))
        else:
            raise RuleError(400, "M_INVALID_PARAM", f"Unrecognised action {str(a)[:50]!r}")
    return out


def _scalar(value: Any) -> bool:
    """Spec "event_property_is": non-compound canonical JSON values only."""
    if value is None or isinstance(value, (bool, str)):
        return True
    return type(value) is int and -(2**53) + 1 <= value <= 2**53 - 1


def check_conditions(conditions: Any) -> list[dict[str, Any]]:
    """Validate the conditions of an override or underride rule. Known kinds must have
    their parameters; unknown kinds are kept (they never match).

    :raises RuleError: 400 ``M_INVALID_PARAM``.
    """
    if conditions is None:
        return []
    if not isinstance(conditions, list):
        raise RuleError(400, "M_INVALID_PARAM", "conditions must be a list")
    if len(conditions) > MAX_CONDITIONS:
        raise RuleError(400, "M_INVALID_PARAM", f"At most {MAX_CONDITIONS} conditions")
    out = []
    for c in conditions:
        if not isinstance(c, dict) or not isinstance(c.get("kind"), str):
            raise RuleError(400, "M_INVALID_PARAM", "Each condition is an object with a kind")
        kind = c["kind"]
        if kind == "event_match":
            if not isinstance(c.get("key"), str) or not isinstance(c.get("pattern"), str):
                raise RuleError(400, "M_INVALID_PARAM", "event_match needs key and pattern strings")
            if len(c["pattern"]) > MAX_PATTERN_LENGTH:
                raise RuleError(400, "M_INVALID_PARAM", "pattern too long")
        elif kind in ("event_property_is", "event_property_contains"):
            if not isinstance(c.get("key"), str) or "value" not in c or not _scalar(c["value"]):
                raise RuleError(400, "M_INVALID_PARAM", f"{kind} needs a key and a non-compound value")
        elif kind == "room_member_count":
            if not isinstance(c.get("is"), str) or not _MEMBER_COUNT.match(c["is"]):
                raise RuleError(400, "M_INVALID_PARAM", "room_member_count needs is: an integer with an optional ==, <, >, <= or >=")
        elif kind == "sender_notification_permission":
            if not isinstance(c.get("key"), str):
                raise RuleError(400, "M_INVALID_PARAM", "sender_notification_permission needs a key string")
        out.append(dict(c))
    return out


def put_rule(
    user_rules: UserRules,
    user_id: str,
    kind: str,
    rule_id: str,
    body: Mapping[str, Any],
    *,
    before: Optional[str] = None,
    after: Optional[str] = None,
) -> UserRules:
    """Spec ``PUT /pushrules/global/{kind}/{ruleId}``: create or replace one of the user's
    own rules. A new rule is enabled and, without ``before``/``after``, the most important
    of the user's rules of its kind; a replaced rule keeps its place and enabled flag
    unless ``before``/``after`` move it. With both, ``before`` decides (spec: "the new or
    updated rule must be the next most important rule with respect to the rule identified
    by before").

    :returns: the new :class:`UserRules` (the argument is not changed).
    :raises RuleError: 400 for a bad kind, id, body or ``before``/``after``.
    """
    check_kind(kind)
    check_new_rule_id(kind, rule_id)
    if "actions" not in body:
        raise RuleError(400, "M_MISSING_PARAM", "Missing parameter: actions")
    rule: dict[str, Any] = {"rule_id": rule_id, "actions": check_actions(body.get("actions"))}
    if kind in CONDITION_KINDS:
        rule["conditions"] = check_conditions(body.get("conditions"))
    if kind == "content":
        pattern = body.get("pattern")
        if not isinstance(pattern, str) or not pattern:
            raise RuleError(400, "M_MISSING_PARAM", "A content rule needs a pattern")
        if len(pattern) > MAX_PATTERN_LENGTH:
            raise RuleError(400, "M_INVALID_PARAM", "pattern too long")
        rule["pattern"] = pattern
    for name, anchor in (("before", before), ("after", after)):
        if anchor is not None and anchor.startswith("."):
            raise RuleError(400, "M_UNKNOWN", f"A rule cannot be placed {name} a server-default rule")
    out = user_rules.copy()
    rules = out.own.setdefault(kind, [])
    existing = next((i for i, r in enumerate(rules) if r["rule_id"] == rule_id), None)
    if existing is not None:
        rule["enabled"] = rules[existing].get("enabled", True)
    else:
        rule["enabled"] = True
        if out.count() >= MAX_USER_RULES:
            raise RuleError(400, "M_UNKNOWN", f"At most {MAX_USER_RULES} push rules per user")
    anchor_id = before if before is not None else after
    if anchor_id is None:
        if existing is not None:
            rules[existing] = rule
        else:
            rules.insert(0, rule)
        return out
    if existing is not None:
        rules.pop(existing)
    at = next((i for i, r in enumerate(rules) if r["rule_id"] == anchor_id), None)
    if at is None or anchor_id == rule_id:
        raise RuleError(400, "M_UNKNOWN", f"before/after rule not found: {anchor_id[:100]}")
    rules.insert(at if before is not None else at + 1, rule)
    return out


def copy_room_rules(user_rules: UserRules, old_room: str, new_room: str) -> Optional[UserRules]:
    """Room upgrades: "When a user joins the new room, the server should automatically
    transfer/replicate some of the user's personalized settings" (client-server spec,
    "Room Upgrades", server behaviour), push rules among them. The user's own rules for
    ``old_room`` are copied for ``new_room``, each placed just before its original: the
    ``room`` rule whose id is the old room, and ``override`` / ``underride`` rules with an
    ``event_match`` of ``room_id`` against exactly the old room (the copy's id has the old
    room's id replaced, and it matches the new room). A rule the new room has already is
    left as it is.

    :returns: the new :class:`UserRules`, or ``None`` if there is nothing to copy.
    """
    out = user_rules.copy()
    changed = False
    for kind, rules in out.own.items():
        taken = {r["rule_id"] for r in rules}
        copied: list[dict[str, Any]] = []
        for rule in rules:
            copy_of: Optional[dict[str, Any]] = None
            if kind == "room" and rule["rule_id"] == old_room:
                copy_of = {**rule, "rule_id": new_room}
            elif kind in CONDITION_KINDS and old_room in rule["rule_id"] and _matches_room(rule, old_room):
                copy_of = {
                    **rule,
                    "rule_id": rule["rule_id"].replace(old_room, new_room),
                    "conditions": [
                        {**c, "pattern": new_room} if _is_room_condition(c, old_room) else c
                        for c in rule.get("conditions", [])
                    ],
                }
            if copy_of is not None and copy_of["rule_id"] not in taken:
                taken.add(copy_of["rule_id"])
                copied.append(copy_of)
                changed = True
            copied.append(rule)
        out.own[kind] = copied
    return out if changed else None


def _is_room_condition(condition: Any, room_id: str) -> bool:
    return (
        isinstance(condition, dict) and condition.get("kind") == "event_match"
        and condition.get("key") == "room_id" and condition.get("pattern") == room_id
    )


def _matches_room(rule: Mapping[str, Any], room_id: str) -> bool:
    conditions = rule.get("conditions")
    return isinstance(conditions, list) and any(_is_room_condition(c, room_id) for c in conditions)


def delete_rule(user_rules: UserRules, kind: str, rule_id: str) -> UserRules:
    """Spec ``DELETE /pushrules/global/{kind}/{ruleId}``.

    :raises RuleError: 404 ``M_NOT_FOUND`` if the user has no such rule; 400 for a
        server-default rule (they cannot be deleted, only disabled).
    """
    check_kind(kind)
    if rule_id.startswith("."):
        raise RuleError(400, "M_INVALID_PARAM", "Server-default rules cannot be deleted (disable them instead)")
    out = user_rules.copy()
    rules = out.own.get(kind, [])
    kept = [r for r in rules if r["rule_id"] != rule_id]
    if len(kept) == len(rules):
        raise RuleError(404, "M_NOT_FOUND", "Push rule not found")
    out.own[kind] = kept
    return out


def set_rule_attribute(user_rules: UserRules, user_id: str, kind: str, rule_id: str, attr: str, value: Any) -> UserRules:
    """``PUT .../enabled`` (``attr`` ``"enabled"``, a boolean) or ``PUT .../actions``
    (``attr`` ``"actions"``) on one of the user's rules or a server-default rule.

    :raises RuleError: 404 ``M_NOT_FOUND`` for an unknown rule, 400 for a bad value.
    """
    check_kind(kind)
    if attr == "enabled":
        if not isinstance(value, bool):
            raise RuleError(400, "M_INVALID_PARAM", "enabled must be a boolean")
    elif attr == "actions":
        value = check_actions(value)
    else:
        raise ValueError(attr)
    out = user_rules.copy()
    if rule_id.startswith("."):
        if find_rule(default_rules(user_id), kind, rule_id) is None:
            raise RuleError(404, "M_NOT_FOUND", "Push rule not found")
        out.defaults.setdefault(rule_id, {})[attr] = value
        return out
    for r in out.own.get(kind, []):
        if r["rule_id"] == rule_id:
            r[attr] = value
            return out
    raise RuleError(404, "M_NOT_FOUND", "Push rule not found")


def default_rules_single_out(event: Mapping[str, Any]) -> Optional[frozenset[str]]:
    """The users for whom the server-default rules (:func:`default_rules`, no edits) may
    decide about ``event`` otherwise than for any other user; ``None`` if that may be
    everyone. Push rules are evaluated for every local member of a room on each event:
    for the users left out, one evaluation serves them all.

    Of the server-default rules, only these read who the user is: ``.m.rule.invite_for_me``
    (``state_key`` is the user), ``.m.rule.is_user_mention`` (the user is in
    ``content.m.mentions.user_ids``), and ``.m.rule.contains_display_name`` and
    ``.m.rule.contains_user_name``, which match the user's display name or localpart in
    ``content.body``; so for an event with a body, ``None``. Every other condition reads
    the event or what is the same for all the room's members (member count, the sender's
    power). The sender is singled out too (their own events never notify them).
    """
    content = event.get("content")
    if not isinstance(content, Mapping):
        content = {}
    if "body" in content:
        return None
    out = {v for v in (event.get("state_key"), event.get("sender")) if isinstance(v, str)}
    mentions = content.get("m.mentions")
    if isinstance(mentions, Mapping) and isinstance(mentions.get("user_ids"), list):
        out.update(u for u in mentions["user_ids"] if isinstance(u, str))
    return frozenset(out)


def iter_rules(ruleset: Mapping[str, list[dict[str, Any]]]) -> Iterable[tuple[str, dict[str, Any]]]:
    """``(kind, rule)`` in the order rules are checked."""
    for kind in KINDS:
        for r in ruleset.get(kind, []):
            yield kind, r


__all__ = [
    "CONDITION_KINDS",
    "KINDS",
    "LEGACY_MENTION_RULES",
    "RuleError",
    "UserRules",
    "build_ruleset",
    "check_actions",
    "check_conditions",
    "check_kind",
    "check_new_rule_id",
    "default_rules",
    "default_rules_single_out",
    "delete_rule",
    "find_rule",
    "iter_rules",
    "put_rule",
    "set_rule_attribute",
]
