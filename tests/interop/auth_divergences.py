"""The documented differences between our auth verdicts and Synapse's, as predicates.

Each :class:`Divergence` is one section of ``docs/auth-conformance.md`` (same id): a
place where the spec says otherwise than Synapse does, or where Synapse cannot process an
event at all.  :func:`classify` names the divergence that explains a disagreement on a
case; a disagreement that none explains is a conformance failure.

The predicates look only at the case's data and the two verdicts, never at how the case
was generated, and each is as narrow as the difference it documents.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

from fedserver.auth.power_levels import SCALAR_DEFAULTS, parse_level
from fedserver.auth.rules.third_party_invite import signed_matches_keys
from fedserver.events.validation import is_valid_user_id
from fedserver.room_versions import SPEC_ROOM_VERSIONS, RoomVersion

PL = "m.room.power_levels"
_SCALARS = tuple(SCALAR_DEFAULTS)


@dataclass(frozen=True)
class Divergence:
    """One documented divergence.

    :ivar id: the anchor in docs/auth-conformance.md.
    :ivar title: one line.
    :ivar matches: ``(case, ours, synapse, rejudge) -> bool``, with ``ours``
        ``(verdict, rule)``, ``synapse`` the driver's ``{"verdict", "detail"}`` and
        ``rejudge`` our verdict on a modified copy of the case.  Where it can, a predicate
        shows that the divergence explains the disagreement: with the divergent value
        replaced by what Synapse makes of it, our verdict becomes Synapse's.
    """

    id: str
    title: str
    matches: Callable[..., bool]


def _rv(case: dict[str, Any]) -> RoomVersion:
    return next(v for v in SPEC_ROOM_VERSIONS if v.identifier == case["room_version"])


def _domain(user_id: Any) -> str | None:
    if not isinstance(user_id, str) or ":" not in user_id:
        return None
    return user_id.split(":", 1)[1]


def _create(case: dict[str, Any]) -> dict[str, Any] | None:
    for entry in case["known"]:
        if entry["pdu"]["type"] == "m.room.create":
            return entry["pdu"]
    return None


def _judged_against(case: dict[str, Any]) -> list[dict[str, Any]]:
    """The PDUs the event is judged against (its cited auth events, or the state)."""
    ids = case.get("state")
    if ids is None:
        edges = case["event"].get("auth_events", [])
        ids = [e[0] if isinstance(e, list) else e for e in edges]
    by_id = {e["event_id"]: e["pdu"] for e in case["known"]}
    return [by_id[i] for i in ids if i in by_id]


def _power_levels_contents(case: dict[str, Any]) -> list[dict[str, Any]]:
    """The power levels in force and, for a power levels event, the new content."""
    out = [p["content"] for p in _judged_against(case) if p["type"] == PL]
    if case["event"]["type"] == PL and isinstance(case["event"]["content"], dict):
        out.append(case["event"]["content"])
    return out


def _level_values(content: dict[str, Any]) -> list[Any]:
    values = [content.get(k) for k in (
        "users_default", "events_default", "state_default", "ban", "kick", "redact", "invite")]
    for key in ("users", "events", "notifications"):
        m = content.get(key)
        if isinstance(m, dict):
            values.extend(m.values())
    return values


def _python_int_only(value: Any, rv: RoomVersion) -> bool:
    """A value Python's ``int()`` reads as a number but that is not a power level of
    ``rv`` under the spec: ``true``/``false``, or (v1-v9) a string with ``_`` between
    digits or with non-ASCII digits."""
    if parse_level(value, rv) is not None or value is None:
        return False
    if type(value) is bool:
        return True
    if type(value) is str and not rv.integer_power_levels:
        try:
            int(value)
        except ValueError:
            return False
        return True
    return False


def _map_levels(case: dict[str, Any], fn: Callable[[Any], Any]) -> dict[str, Any]:
    """A copy of ``case`` whose power levels values (in force and new) are ``fn(value)``;
    event ids unchanged (our side takes them as given)."""
    case = copy.deepcopy(case)
    pdus = [e["pdu"] for e in case["known"] if e["pdu"]["type"] == PL]
    if case["event"]["type"] == PL:
        pdus.append(case["event"])
    for pdu in pdus:
        c = pdu["content"]
        if not isinstance(c, dict):
            continue
        for k in _SCALARS:
            if k in c:
                c[k] = fn(c[k])
        for key in ("users", "events", "notifications"):
            if isinstance(c.get(key), dict):
                c[key] = {n: fn(v) for n, v in c[key].items()}
    return case


def _int_forms(case, ours, synapse, rejudge) -> bool:
    """Read the way Synapse's ``int()`` reads them, the values make our verdict
    Synapse's."""
    rv = _rv(case)
    if not any(_python_int_only(v, rv) for c in _power_levels_contents(case) for v in _level_values(c)):
        return False
    return agree(rejudge(_as_synapse_reads_levels(case)), synapse)


def _bad_user_keys(case: dict[str, Any]) -> list[str]:
    """Keys of the new power levels' ``users`` that Synapse takes for user IDs (an ``@``
    and a ``:``) but that are not valid user IDs."""
    event = case["event"]
    users = event["content"].get("users") if event["type"] == PL else None
    if not isinstance(users, dict):
        return []
    return [u for u in users if not is_valid_user_id(u) and u.startswith("@") and ":" in u]


def _as_synapse_reads_levels(case: dict[str, Any]) -> dict[str, Any]:
    """``case`` with the power levels read as Synapse reads them: values through
    ``int()``, and ``users`` keys with an ``@`` and a ``:`` taken as user IDs (dropped, so
    that our rules accept the rest).  A case may show both divergences at once."""
    rv = _rv(case)
    out = _map_levels(case, lambda v: int(v) if _python_int_only(v, rv) else v)
    for u in _bad_user_keys(case):
        del out["event"]["content"]["users"][u]
    return out


def _synapse_int_error(case, ours, synapse, rejudge) -> bool:
    """Synapse raised converting a power level with ``int()``: a ``null`` (for which the
    spec's default applies: our verdict is the same without it) or a value that is no
    power level at all, which the spec's rule for this event never compares or reads
    (our verdict is the same whatever number stands there)."""
    if synapse["verdict"] != "error" or ours[0] != "allow":
        return False
    detail = synapse["detail"]
    if not detail.startswith(("ValueError: invalid literal for int()", "TypeError: int() argument",
                              "TypeError: string indices", "TypeError: list indices",
                              "TypeError: 'int' object", "AttributeError: ")):
        return False
    rv = _rv(case)
    contents = _power_levels_contents(case)
    if not any(v is None or parse_level(v, rv) is None for c in contents for v in _level_values(c)) \
            and not any(k in c and not isinstance(c[k], dict)
                        for c in contents for k in ("events", "notifications", "users")):
        return False
    # null is a level "not explicitly supplied": the default applies (we drop it); any
    # other value that is no power level must not matter (two far-apart numbers for it).
    without_null = _drop_null_levels(case)
    for number in (-(2**40), 2**40):
        fixed = _map_levels(without_null, lambda v: number if parse_level(v, rv) is None else v)
        if rejudge(fixed)[0] != "allow":
            return False
    return True


def _drop_null_levels(case: dict[str, Any]) -> dict[str, Any]:
    case = copy.deepcopy(case)
    pdus = [e["pdu"] for e in case["known"] if e["pdu"]["type"] == PL]
    if case["event"]["type"] == PL:
        pdus.append(case["event"])
    for pdu in pdus:
        c = pdu["content"]
        if not isinstance(c, dict):
            continue
        for k in _SCALARS:
            if k in c and c[k] is None:
                del c[k]
        for key in ("users", "events", "notifications"):
            if isinstance(c.get(key), dict):
                c[key] = {n: v for n, v in c[key].items() if v is not None}
    return case


def _federate_not_boolean(case, ours, synapse, rejudge) -> bool:
    """With ``m.federate: false`` instead, we reject too."""
    create = _create(case)
    if create is None or ours[0] != "allow" or synapse["verdict"] != "reject":
        return False
    federate = create["content"].get("m.federate", True)
    if type(federate) is bool or "unfederatable" not in synapse["detail"]:
        return False
    as_false = copy.deepcopy(case)
    for e in as_false["known"]:
        if e["pdu"]["type"] == "m.room.create":
            e["pdu"]["content"]["m.federate"] = False
    return agree(rejudge(as_false), synapse)


def _federate_target(case, ours, synapse, rejudge) -> bool:
    create = _create(case)
    event = case["event"]
    if create is None or ours[0] != "allow" or synapse["verdict"] != "reject":
        return False
    if event["type"] != "m.room.member" or "unfederatable" not in synapse["detail"]:
        return False
    creator_domain = _domain(create["sender"])
    return (_domain(event["sender"]) == creator_domain
            and _domain(event.get("state_key")) != creator_domain)


def _via_on_other_memberships(case, ours, synapse, rejudge) -> bool:
    """Without the key we allow it too."""
    rv = _rv(case)
    event = case["event"]
    content = event.get("content")
    if not rv.restricted_joins or event["type"] != "m.room.member" or not isinstance(content, dict):
        return False
    if ours[0] != "reject" or synapse["verdict"] != "allow":
        return False
    if content.get("membership") == "join" or "join_authorised_via_users_server" not in content:
        return False
    server = _domain(content["join_authorised_via_users_server"])
    if server is not None and server in event.get("signatures", {}):
        return False
    without = copy.deepcopy(case)
    del without["event"]["content"]["join_authorised_via_users_server"]
    return agree(rejudge(without), synapse)


def _tpi_first_signature(case, ours, synapse, rejudge) -> bool:
    """The first ed25519 signature in ``signed`` (servers and key ids in canonical order,
    as Synapse reads them) matches none of the invite's public keys, and another one
    does."""
    event = case["event"]
    if event["type"] != "m.room.member" or ours[0] != "allow" or synapse["verdict"] != "reject":
        return False
    tpi = event["content"].get("third_party_invite")
    signed = tpi.get("signed") if isinstance(tpi, dict) else None
    sigs = signed.get("signatures") if isinstance(signed, dict) else None
    token = signed.get("token") if isinstance(signed, dict) else None
    if not isinstance(sigs, dict):
        return False
    invite = next((p for p in _judged_against(case)
                   if p["type"] == "m.room.third_party_invite" and p.get("state_key") == token), None)
    if invite is None:
        return False
    entries = [(server, key_id) for server in sorted(sigs) if isinstance(sigs[server], dict)
               for key_id in sorted(sigs[server]) if key_id.startswith("ed25519:")]
    if len(entries) < 2:
        return False

    def verifies(server: str, key_id: str) -> bool:
        one = dict(signed, signatures={server: {key_id: sigs[server][key_id]}})
        return signed_matches_keys(one, invite["content"], False)

    return not verifies(*entries[0]) and any(verifies(*e) for e in entries[1:])


def _users_keys(case, ours, synapse, rejudge) -> bool:
    """Without those keys (and with power levels read as Synapse reads them) we allow it
    too."""
    if case["event"]["type"] != PL or ours[0] != "reject" or synapse["verdict"] != "allow":
        return False
    if not _bad_user_keys(case):
        return False
    return agree(rejudge(_as_synapse_reads_levels(case)), synapse)


def _member_state_key(case, ours, synapse, rejudge) -> bool:
    event = case["event"]
    sk = event.get("state_key")
    return (event["type"] == "m.room.member" and isinstance(sk, str) and ":" in sk
            and not is_valid_user_id(sk) and ours[0] == "reject" and synapse["verdict"] == "allow")


def _redacts_not_string(case, ours, synapse, rejudge) -> bool:
    rv = _rv(case)
    event = case["event"]
    return (not rv.redacts_in_content and "redacts" in event
            and type(event["redacts"]) is not str
            and ours[0] == "invalid" and synapse["verdict"] == "allow")


def _v1_redaction_without_target(case, ours, synapse, rejudge) -> bool:
    rv = _rv(case)
    event = case["event"]
    return (rv.identifier in ("1", "2") and event["type"] == "m.room.redaction"
            and not isinstance(event.get("redacts"), str)
            and ours[0] == "reject" and synapse["verdict"] == "allow")


DIVERGENCES: tuple[Divergence, ...] = (
    Divergence("federate-not-boolean",
               "m.federate set to something other than true or false", _federate_not_boolean),
    Divergence("federate-target",
               "m.federate false: membership of a user of another server", _federate_target),
    Divergence("authorised-via-other-memberships",
               "join_authorised_via_users_server on a membership other than join",
               _via_on_other_memberships),
    Divergence("third-party-invite-signatures",
               "third-party invite whose valid signature is not the first one",
               _tpi_first_signature),
    Divergence("power-level-forms",
               "power levels Python's int() reads but the spec does not (true, \"1_0\")",
               _int_forms),
    Divergence("power-levels-user-ids",
               "power levels users keys that are not valid user IDs", _users_keys),
    Divergence("member-state-key",
               "a membership event whose state_key is not a valid user ID", _member_state_key),
    Divergence("redacts-not-string",
               "a top-level redacts that is not a string (v1-v10)", _redacts_not_string),
    Divergence("v1-redaction-without-target",
               "a v1/v2 redaction without a redacts string", _v1_redaction_without_target),
    Divergence("synapse-int-error",
               "Synapse raises reading a power level the rule does not need", _synapse_int_error),
)


def agree(ours: tuple[str, str], synapse: dict[str, Any]) -> bool:
    """Whether the two verdicts agree: both accept, or neither does (a rejection, a
    malformed event and a Synapse internal error all keep the event out of the room)."""
    return (ours[0] == "allow") == (synapse["verdict"] == "allow")


def classify(
    case: dict[str, Any],
    ours: tuple[str, str],
    synapse: dict[str, Any],
    rejudge: Callable[[dict[str, Any]], tuple[str, str]],
) -> str | None:
    """The id of the documented divergence explaining a disagreement, or ``None``.

    :param rejudge: our verdict on a modified copy of a case (a fresh engine: the
        copies keep the event ids of events whose content they change).
    """
    for d in DIVERGENCES:
        if d.matches(case, ours, synapse, rejudge):
            return d.id
    return None
