"""Relations over plain data: parsing ``m.relates_to``, valid replacements, and the bundled aggregations."""

# Spec (client-server API, "Forming relationships between events"): "The relationship
# between a child and its parent event is described in the child event's content as
# m.relates_to". "Relationships which don't match the schema, or which break the rules of
# a relationship, are simply ignored." The aggregations ("Aggregations of child events")
# are keyed by rel_type under unsigned.m.relations:
#
# - m.replace ("Event replacements", "Server-side aggregation of m.replace
#   relationships", changed in v1.7): "the most recent valid replacement event, formatted
#   as normal"; most recent by origin_server_ts, ties broken by the lexicographically
#   largest event_id; not bundled with a redacted original.
# - m.thread ("Threading", "Server-side aggregation of m.thread relationships"):
#   latest_event (the most recent event in the thread, topologically), count (events
#   using m.thread pointing at the root) and current_user_participated (the user sent
#   the root or a thread event).
# - m.reference ("Reference relations"): {"chunk": [{"event_id": ...}, ...]}.
# - m.annotation is "not aggregated by the server".

from __future__ import annotations

from typing import Any, Iterable, Mapping, NamedTuple, Optional, Sequence

REPLACE = "m.replace"
THREAD = "m.thread"
REFERENCE = "m.reference"
ANNOTATION = "m.annotation"

#: Longest event id, rel_type or key we index (spec: identifiers are at most 255 bytes).
MAX_FIELD_BYTES = 255


class Relation(NamedTuple):
    """What ``content["m.relates_to"]`` declares.

    :ivar rel_type: the relationship type.
    :ivar event_id: the parent event.
    :ivar key: the annotation key (``m.annotation`` only), else ``None``.
    """

    rel_type: str
    event_id: str
    key: Optional[str] = None


def _short_string(value: Any) -> bool:
    if not isinstance(value, str) or not value:
        return False
    try:
        return len(value.encode("utf-8")) <= MAX_FIELD_BYTES
    except UnicodeEncodeError:
        return False


def parse_relation(content: Any) -> Optional[Relation]:
    """The relation ``content`` declares, or ``None`` if it has no well-formed one.

    A relation needs ``m.relates_to`` to be an object with a string ``rel_type`` and an
    ``event_id`` that looks like an event id. Rich replies (``m.in_reply_to`` without a
    ``rel_type``) are not relations the server aggregates.
    """
    if not isinstance(content, Mapping):
        return None
    rel = content.get("m.relates_to")
    if not isinstance(rel, Mapping):
        return None
    rel_type = rel.get("rel_type")
    event_id = rel.get("event_id")
    if not isinstance(rel_type, str) or not isinstance(event_id, str):
        return None
    if not _short_string(rel_type) or not _short_string(event_id) or not event_id.startswith("$"):
        return None
    key = rel.get("key") if rel_type == ANNOTATION else None
    if key is not None and not isinstance(key, str):
        key = None
    return Relation(rel_type, event_id, key)


class EventFacts(NamedTuple):
    """The fields of an event the aggregation rules read (from a stored event)."""

    event_id: str
    type: str
    sender: str
    origin_server_ts: int
    state_key: Optional[str]
    content: Mapping[str, Any]


def is_valid_replacement(original: EventFacts, replacement: EventFacts) -> bool:
    """Spec "Validity of replacement events": same sender and type, neither a state
    event, the original not itself an edit, and ``m.new_content`` in the replacement.
    (Same room is checked by whoever pairs them.)

    For an encrypted replacement the ``m.new_content`` is inside the ciphertext, so it
    cannot be checked here: spec "once decrypted, if appropriate".
    """
    if original.sender != replacement.sender or original.type != replacement.type:
        return False
    if original.state_key is not None or replacement.state_key is not None:
        return False
    own = parse_relation(original.content)
    if own is not None and own.rel_type == REPLACE:
        return False
    if replacement.type == "m.room.encrypted":
        return True
    return isinstance(replacement.content.get("m.new_content"), Mapping)


def latest_replacement(original: EventFacts, candidates: Iterable[EventFacts]) -> Optional[EventFacts]:
    """The most recent valid replacement of ``original`` among ``candidates``: largest
    ``origin_server_ts``, then lexicographically largest ``event_id``."""
    best: Optional[EventFacts] = None
    for c in candidates:
        if not is_valid_replacement(original, c):
            continue
        if best is None or (c.origin_server_ts, c.event_id) > (best.origin_server_ts, best.event_id):
            best = c
    return best


def thread_participated(user_id: str, root_sender: str, thread_senders: Iterable[str]) -> bool:
    """``current_user_participated``: the user sent the root or an ``m.thread`` event
    pointing at it."""
    return root_sender == user_id or any(s == user_id for s in thread_senders)


def may_start_thread(root_content: Any) -> bool:
    """Spec "Validation of m.thread relationships": servers SHOULD reject a thread off an
    event with an ``m.relates_to`` property (400 ``M_UNKNOWN``)."""
    return not (isinstance(root_content, Mapping) and "m.relates_to" in root_content)


def bundle(
    *,
    replacement: Optional[Mapping[str, Any]] = None,
    thread: Optional[tuple[Mapping[str, Any], int, bool]] = None,
    references: Sequence[str] = (),
) -> dict[str, Any]:
    """The ``unsigned.m.relations`` object of one parent (empty if nothing applies).

    :param replacement: the serialized latest valid edit.
    :param thread: ``(serialized latest event, count, current_user_participated)``.
    :param references: ids of the events referencing the parent, oldest first.
    """
    out: dict[str, Any] = {}
    if replacement is not None:
        out[REPLACE] = dict(replacement)
    if thread is not None:
        latest, count, participated = thread
        out[THREAD] = {"latest_event": dict(latest), "count": count, "current_user_participated": participated}
    if references:
        out[REFERENCE] = {"chunk": [{"event_id": e} for e in references]}
    return out


__all__ = [
    "ANNOTATION", "REFERENCE", "REPLACE", "THREAD", "EventFacts", "Relation", "bundle",
    "is_valid_replacement", "latest_replacement", "may_start_thread", "parse_relation",
    "thread_participated",
]
