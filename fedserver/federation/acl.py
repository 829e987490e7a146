"""Server ACLs (``m.room.server_acl``): whether a server may take part in a room over federation.

Spec: client-server API module "Server Access Control Lists (ACLs) for rooms", the
``m.room.server_acl`` event schema (its five ordered rules), appendix "Glob-style matching",
and server-server API "Server Access Control Lists (ACLs)" (which endpoints must check).
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable, Mapping

from twisted.internet import defer
from twisted.logger import Logger

from fedserver.errors import forbidden

log = Logger()

#: The state event holding a room's ACL (its ``state_key`` is empty).
SERVER_ACL_EVENT = ("m.room.server_acl", "")

#: Globs longer than this never match (a hostile ACL must not cost us much time).
MAX_GLOB_LENGTH = 1024


def glob_matches(glob: Any, text: str) -> bool:
    """Whether ``text`` matches the glob ``glob``, ignoring letter case: ``*`` matches zero
    or more characters, ``?`` exactly one, everything else itself. A glob that is not a
    string, or is longer than :data:`MAX_GLOB_LENGTH`, matches nothing.

    Greedy matching that backtracks only to the last ``*``: at most
    ``len(glob) * len(text)`` steps, whatever the glob (a regex could take exponential
    time on globs like ``*a*a*a*b``, and ACLs are written by other servers' users).
    """
    if type(glob) is not str or len(glob) > MAX_GLOB_LENGTH:
        return False
    g, t = glob.lower(), text.lower()
    gi = ti = 0
    star = -1  # position of the last '*' seen in the glob
    resume = 0  # where in the text that '*' currently stops
    while ti < len(t):
        if gi < len(g) and g[gi] == "*":
            star, resume = gi, ti
            gi += 1
        elif gi < len(g) and (g[gi] == "?" or g[gi] == t[ti]):
            gi += 1
            ti += 1
        elif star >= 0:
            resume += 1  # let the last '*' swallow one more character
            gi, ti = star + 1, resume
        else:
            return False
    while gi < len(g) and g[gi] == "*":
        gi += 1
    return gi == len(g)


def strip_port(server_name: str) -> str:
    """The host of a server name without its port ("the suspect server's port number must
    not be considered"); IPv6 literals keep their brackets."""
    if server_name.startswith("["):
        end = server_name.find("]")
        return server_name[: end + 1] if end >= 0 else server_name
    return server_name.split(":", 1)[0]


def _is_ip_literal(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _globs(value: Any) -> list[Any]:
    # allow / deny default to [] when absent or not a list.
    return value if type(value) is list else []


def server_acl_allows(acl_content: Mapping[str, Any] | None, server_name: str) -> bool:
    """Whether the ACL ``acl_content`` lets ``server_name`` take part in its room.

    Follows the ``m.room.server_acl`` schema's rules, in order:

    1. no ACL event in the room state (``acl_content`` is ``None``): allow;
    2. an IP literal server name when ``allow_ip_literals`` is ``false``: deny
       (it defaults to ``true`` when missing or not a boolean);
    3. a match in ``deny``: deny;
    4. a match in ``allow``: allow;
    5. otherwise deny (``allow`` defaults to an empty list).

    Matching ignores the port and letter case. Entries that are not strings are ignored.

    :param acl_content: the content of the room's current ``m.room.server_acl`` event, or
        ``None`` if there is none.
    :param server_name: the server asking.
    """
    if acl_content is None:
        return True
    if type(acl_content) is not dict:
        acl_content = {}
    host = strip_port(server_name)
    if acl_content.get("allow_ip_literals") is False and _is_ip_literal(host):
        return False
    if any(glob_matches(g, host) for g in _globs(acl_content.get("deny"))):
        return False
    return any(glob_matches(g, host) for g in _globs(acl_content.get("allow")))


class ServerAcls:
    """Reads rooms' current ACLs from the store and applies :func:`server_acl_allows`.

    :param store: has ``get_current_state_events(room_id, types)`` (the storage API).
    """

    def __init__(self, store: Any) -> None:
        self._store = store

    def acl_content(self, room_id: str) -> "defer.Deferred[dict[str, Any] | None]":
        """:returns: Deferred firing with the content of the room's current ACL event, or
            ``None`` if it has none (or the room is unknown)."""
        d = defer.maybeDeferred(self._store.get_current_state_events, room_id, [SERVER_ACL_EVENT])

        def pick(events: Mapping[Any, Any]) -> dict[str, Any] | None:
            event = (events or {}).get(SERVER_ACL_EVENT)
            return None if event is None else event.content

        return d.addCallback(pick)

    def is_allowed(self, server_name: str, room_id: str) -> "defer.Deferred[bool]":
        """:returns: Deferred firing with whether ``server_name`` may take part in
            ``room_id``."""
        return self.acl_content(room_id).addCallback(server_acl_allows, server_name)

    async def denied_rooms(self, server_name: str, room_ids: Iterable[str]) -> set[str]:
        """:returns: the set of ``room_ids`` whose ACL denies ``server_name`` (one state
            lookup per room)."""
        denied = set()
        for room_id in set(room_ids):
            if not await self.is_allowed(server_name, room_id):
                denied.add(room_id)
        return denied

    def check(self, server_name: str, room_id: str) -> "defer.Deferred[None]":
        """Server-server API "Server ACLs": a denied server gets 403 ``M_FORBIDDEN``.

        :returns: Deferred firing with ``None`` if allowed.
        :raises MatrixError: (through the Deferred) 403 ``M_FORBIDDEN`` if denied.
        """

        def decide(allowed: bool) -> None:
            if not allowed:
                log.info("Server ACL of {room_id} denies {server}", room_id=room_id, server=server_name)
                raise forbidden("Server is banned from this room by its server ACL")

        return self.is_allowed(server_name, room_id).addCallback(decide)


__all__ = ["ServerAcls", "glob_matches", "server_acl_allows", "strip_port"]
