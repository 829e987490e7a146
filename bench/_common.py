"""Shared by the benchmarks: a fedserver database with a populated room, built in-process."""

from __future__ import annotations

import os
import time
from typing import Any, Iterable

from twisted.internet import reactor

from fedserver.auth.selection import select_auth_events
from fedserver.config import config_from_dict
from fedserver.events.builder import build_event
from fedserver.room_versions import RoomVersion
from fedserver.service import FedserverService


def now_ms() -> int:
    return int(time.time() * 1000)


async def with_service(directory: str, server_name: str, work) -> Any:
    """Start a fedserver on the files in ``directory`` (as the benchmarks' servers will use
    them), run ``await work(service)``, stop it, and return what ``work`` returned."""
    config = config_from_dict({
        "server_name": server_name,
        "database_path": os.path.join(directory, "fedserver.db"),
        "signing_key_path": os.path.join(directory, "fedserver.signing.key"),
        "tls_certificate_path": os.path.join(directory, "fedserver.tls.crt"),
        "tls_private_key_path": os.path.join(directory, "fedserver.tls.key"),
        "federation_listen": "127.0.0.1:0",
        "client_listen": "127.0.0.1:0",
    })
    service = FedserverService(config, reactor)
    service.privilegedStartService()
    service.startService()
    await service.when_ready()
    try:
        return await work(service)
    finally:
        await service.stopService()


async def populated_room(
    service, rv: RoomVersion, owner: str, joiners: Iterable[tuple[str, str, Any]], batch_size: int = 500
) -> tuple[str, dict, str, int]:
    """A public room owned by ``owner`` (a local user) that every ``(user_id, server_name,
    signing_key)`` of ``joiners`` has joined, taken in through the room pipeline.

    :returns: ``(room_id, current state ids, last event id, next depth)``.
    """
    content = {"room_version": rv.identifier}
    if not rv.implicit_room_creator:
        content["creator"] = owner
    create, _ = await service.creator.create_room_event(rv, sender=owner, content=content)
    room = create.room_id
    users = {} if rv.privileged_creators else {owner: 100}
    for t, c, k in (("m.room.member", {"membership": "join"}, owner),
                    ("m.room.power_levels", {"users": users}, ""),
                    ("m.room.join_rules", {"join_rule": "public"}, ""),
                    ("m.room.history_visibility", {"history_visibility": "shared"}, "")):
        await service.creator.send(room, rv, type=t, sender=owner, content=c, state_key=k)
    state = dict(await service.pipeline.current_state(room))
    prev = sorted(await service.pipeline.forward_extremities(room))
    depth, batch = 10, []

    async def flush():
        out = await service.pipeline.process(room, batch)
        refused = [o for o in out.values() if not o.accepted]
        assert not refused, refused[:3]
        batch.clear()

    for user, server_name, key in joiners:
        fields = {"type": "m.room.member", "state_key": user, "sender": user, "content": {"membership": "join"}}
        ev = build_event(
            rv, room_id=room, prev_event_ids=prev, auth_event_ids=select_auth_events(rv, fields, state),
            depth=depth, origin_server_ts=now_ms(), server_name=server_name, signing_key=key, **fields,
        )
        state[("m.room.member", user)] = ev.event_id
        prev, depth = [ev.event_id], depth + 1
        batch.append(ev)
        if len(batch) >= batch_size:
            await flush()
    if batch:
        await flush()
    return room, state, prev[0], depth


def rss(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of a process (bytes) from /proc: VmRSS now, or VmHWM (peak)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_line() -> str:
    """The machine's load averages, to print next to figures (others share the machine)."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"
