"""What areas beyond room events add to /sync (receipts, typing, presence, to-device, device
lists, notification counts), each with its own stream position in the sync token."""

# /sync assembles sections; it owns none of them (DESIGN "As it grows"). An area that has
# something to say in /sync implements :class:`SyncSection` and is registered with
# ``SyncHandler.register_section`` by the wiring code. Its position is one part of the
# sync token, so an incremental sync asks each section only for what changed since the
# position the client last saw.
#
# Token format: ``s<event nid>_<account data position>`` followed by one ``_<key><position>``
# per section, e.g. ``s1203_7_r88_t4_d12``. Tokens without a section's part (older tokens,
# or a section added since) give that section ``since=None``.

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Protocol

from twisted.internet.defer import Deferred
from fedserver.handlers.requester import Requester

#: A section key: one to three lowercase ASCII letters.
_KEY = re.compile(r"^[a-z]{1,3}$")
#: One section part of a token.
_PART = re.compile(r"^([a-z]{1,3})([0-9]{1,18})$")
#: Longest token accepted.
MAX_TOKEN_LENGTH = 400


@dataclass(frozen=True)
class SyncToken:
    """A parsed /sync token.

    :ivar events: the event stream position (an event nid).
    :ivar account_data: the account data stream position.
    :ivar sections: each section's position by key.
    """

    events: int
    account_data: int = 0
    sections: Mapping[str, int] = field(default_factory=dict)

    def render(self) -> str:
        """The token as sent to clients."""
        parts = [f"s{self.events}_{self.account_data}"]
        parts.extend(f"_{k}{v}" for k, v in sorted(self.sections.items()))
        return "".join(parts)

    @classmethod
    def parse(cls, token: Any) -> Optional["SyncToken"]:
        """:returns: the token, or ``None`` if ``token`` is not a sync token."""
        if not isinstance(token, str) or not token.startswith("s") or len(token) > MAX_TOKEN_LENGTH:
            return None
        if not token.isascii():
            return None
        pieces = token[1:].split("_")
        first = pieces[0]
        if not first.isdigit() or len(first) > 18:
            return None
        account_data = 0
        rest = pieces[1:]
        if rest and rest[0].isdigit():
            if len(rest[0]) > 18:
                return None
            account_data = int(rest[0])
            rest = rest[1:]
        sections: dict[str, int] = {}
        for part in rest:
            m = _PART.match(part)
            if m is None or m.group(1) in sections:
                return None
            sections[m.group(1)] = int(m.group(2))
        return cls(int(first), account_data, sections)


@dataclass
class SyncContext:
    """What a section may read and add to while one /sync answer is built.

    :ivar requester: the authenticated requester (``user_id``, ``device_id``).
    :ivar filter: the :class:`~fedserver.handlers.client.sync.SyncFilter` in force.
    :ivar full_state: the client asked for ``full_state``.
    :ivar initial: no ``since`` token was given.
    :ivar joined: the rooms the user is joined to (after the filter's room selection).
    :ivar newly_joined: rooms joined since the token (every joined room on an initial sync).
    :ivar left: rooms left (or banned from) since the token.
    :ivar result: the answer being built; sections add to it in place.
    :ivar since_events: the event stream position of the client's token (``None`` on an
        initial sync), for sections that follow what happened in rooms (device lists).
    :ivar now_events: the event stream position the answer is built up to.
    """

    requester: Requester
    filter: Any
    full_state: bool
    initial: bool
    joined: list[str]
    newly_joined: set[str]
    left: set[str]
    result: dict[str, Any]
    _empty_room: Any = None
    since_events: Optional[int] = None
    now_events: int = 0

    @property
    def user_id(self) -> str:
        return self.requester.user_id

    @property
    def device_id(self) -> Optional[str]:
        return getattr(self.requester, "device_id", None)

    def joined_room(self, room_id: str) -> dict[str, Any]:
        """The entry of a joined room in ``rooms.join``, added (empty) if the room had
        nothing else new, so that a section can put ephemeral events or counts in it."""
        rooms = self.result["rooms"]["join"]
        entry = rooms.get(room_id)
        if entry is None:
            entry = rooms[room_id] = self._empty_room()
        return entry


class SyncSection(Protocol):
    """One area's part of /sync.

    :ivar key: the section's part of the sync token: one to three lowercase letters,
        unique among sections (``r`` receipts, ``t`` typing, ``p`` presence, ``d``
        to-device, ``l`` device lists, ...).
    """

    key: str

    def current_position(self, user_id: str) -> "int | Deferred[int]":
        """The section's stream position now (read BEFORE the answer is built, so that
        nothing that happens while it is built is skipped by the next sync)."""

    async def contribute(self, ctx: SyncContext, since: Optional[int], now: int) -> bool:
        """Add what changed in ``(since, now]`` for ``ctx.user_id`` to ``ctx.result``.

        :param since: the client's position (``None``: an initial sync, or a token from
            before this section existed: send the current state of the section).
        :returns: whether anything was added (an incremental sync with nothing new from
            any section waits for a notification instead of answering).
        """


def check_section_key(key: Any) -> str:
    """:raises ValueError: unless ``key`` is a valid section key."""
    if not isinstance(key, str) or not _KEY.match(key):
        raise ValueError(f"invalid sync section key {key!r}: one to three lowercase letters")
    return key
