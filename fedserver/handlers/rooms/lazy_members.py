"""Lazy-loading room members: which membership events a response must carry for the senders it shows, and which a device has already been sent."""

# Client-server API, "Lazy-loading room members": "When enabled, lazy-loading aware
# endpoints will only include membership events for the sender of events being included
# in the response." "The server MAY assume that clients will remember membership events
# they have already been sent, and choose to skip sending membership events for members
# whose membership has not changed. These are called 'redundant membership events'.
# Clients may request that redundant membership events are always included in responses
# by setting include_redundant_members to true in the filter." And: "it is valid for the
# server to send redundant membership events to the client to ease implementation".
#
# What each device was sent is remembered in memory, per device, bounded (an evicted or
# restarted cache only means some redundant events are sent again, which is valid).

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, Mapping, Optional
from fedserver.handlers.requester import Requester

StateKey = tuple[str, str]

#: Devices remembered, and membership events remembered per device.
MAX_DEVICES = 2_000
MAX_PER_DEVICE = 20_000


class SentMembers:
    """The membership events (by id, per room) each device has been sent, least recently
    used devices forgotten first."""

    def __init__(self, max_devices: int = MAX_DEVICES, max_per_device: int = MAX_PER_DEVICE) -> None:
        self._max_devices = max_devices
        self._max_per_device = max_per_device
        self._devices: OrderedDict[tuple[str, str], OrderedDict[tuple[str, str], None]] = OrderedDict()

    @staticmethod
    def _key(requester: Requester) -> tuple[str, str]:
        device = getattr(requester, "device_id", None) or "t" + str(getattr(requester, "access_token_id", ""))
        return requester.user_id, device

    def forget(self, requester: Requester) -> None:
        """The device starts again (an initial /sync): nothing was sent to it."""
        self._devices.pop(self._key(requester), None)

    def unsent(self, requester: Requester, room_id: str, event_ids: Iterable[str]) -> list[str]:
        """Those of ``event_ids`` the device has not been sent for ``room_id``; they are
        remembered as sent from now on."""
        key = self._key(requester)
        sent = self._devices.get(key)
        if sent is None:
            sent = self._devices[key] = OrderedDict()
            while len(self._devices) > self._max_devices:
                self._devices.popitem(last=False)
        else:
            self._devices.move_to_end(key)
        out = []
        for event_id in event_ids:
            item = (room_id, event_id)
            if item in sent:
                sent.move_to_end(item)
                continue
            out.append(event_id)
            sent[item] = None
        while len(sent) > self._max_per_device:
            sent.popitem(last=False)
        return out


def member_keys(senders: Iterable[str], also: Optional[str] = None) -> list[StateKey]:
    """The ``m.room.member`` state keys of ``senders`` (and ``also``, e.g. the user
    syncing), each once, in first-seen order."""
    seen: dict[StateKey, None] = {}
    for s in list(senders) + ([also] if also else []):
        if isinstance(s, str):
            seen.setdefault(("m.room.member", s), None)
    return list(seen)


def pick_members(state: Mapping[StateKey, str], keys: Iterable[StateKey]) -> list[str]:
    """The member event ids ``state`` holds for ``keys``."""
    out = []
    for k in keys:
        v = state.get(k)
        if v is not None and v not in out:
            out.append(v)
    return out


__all__ = ["SentMembers", "member_keys", "pick_members"]
