"""Benchmark: what the policy server plugin costs the room pipeline (not a test: it prints).

Run as ``python plugins/policy_server/bench/overhead.py [--events 3000]`` with fedserver and the
plugin importable (installed, or ``PYTHONPATH=.`` from the repository root).  A room of ours on
a real SQLite store receives ``--events`` chained messages from another server, in batches
of 50 through ``RoomPipeline.process`` (as ``/send`` gives them), three ways:

- ``without plugin``: no policy hook implemented (the pipeline skips the policy step);
- ``no policy server``: the plugin's checker registered, the room has no ``m.room.policy``
  (every room but those that opt in);
- ``signed events``: the room uses a policy server and every event carries its valid
  signature (verified with the room's key, nothing asked).

It prints events per second for each.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from signedjson.key import generate_signing_key
from twisted.internet import defer, reactor, task

from fedserver.auth import make_plugin_manager
from fedserver.auth.engine import AuthEngine
from fedserver.auth.selection import select_auth_events
from fedserver.crypto import verify_key_base64
from fedserver.events.builder import build_event
from fedserver.events.signing import sign_bytes, signed_bytes_for_event
from fedserver.handlers.rooms.creator import EventCreator
from fedserver.handlers.rooms.pipeline import RoomPipeline
from fedserver.room_versions import V12
from fedserver.storage.sqlite import open_store

HERE = "here.test"
REMOTE = "remote.test"
POLICY = "policy.test"


async def run(label: str, events: int, *, plugin: bool, policy: bool) -> None:
    directory = tempfile.mkdtemp(prefix="policy-bench-")
    try:
        store = await open_store(os.path.join(directory, "db"), reactor)
        pm = make_plugin_manager(load_entrypoints=False, module_paths=["fedserver_policy_server"] if plugin else ())
        if plugin:
            pm.hook.fedserver_on_start(reactor=reactor, server_name=HERE, federation_client=None, store=store,
                                       plugin_manager=pm, plugin_config={})
        pipeline = RoomPipeline(store, AuthEngine(pm), pm)
        key, remote_key, policy_key = (generate_signing_key(v) for v in ("h", "r", "policy_server"))
        creator = EventCreator(reactor, store, pipeline, HERE, key)
        alice, bob = f"@alice:{HERE}", f"@bob:{REMOTE}"
        create, _ = await creator.create_room_event(V12, sender=alice, content={"room_version": "12"})
        room_id = create.room_id

        async def local(type, content, state_key=None):
            await creator.send(room_id, V12, type=type, sender=alice, content=content, state_key=state_key)

        await local("m.room.member", {"membership": "join"}, alice)
        await local("m.room.power_levels", {}, "")
        await local("m.room.join_rules", {"join_rule": "public"}, "")
        if policy:
            await local("m.room.policy", {"via": POLICY, "public_keys": {"ed25519": verify_key_base64(policy_key)}}, "")

        def remote(sender, server, skey, type, content, state_key, prev, depth, state):
            ev = build_event(V12, room_id=room_id, type=type, sender=sender, content=content, state_key=state_key,
                             prev_event_ids=prev, depth=depth, origin_server_ts=depth, server_name=server,
                             signing_key=skey, auth_event_ids=select_auth_events(
                                 V12, {"type": type, "state_key": state_key, "sender": sender, "content": content},
                                 state))
            if policy:
                sig = sign_bytes(signed_bytes_for_event(ev.pdu, V12), policy_key)
                ev.pdu["signatures"][POLICY] = {"ed25519:policy_server": sig}
            return ev

        state = dict(await pipeline.current_state(room_id))
        prev = sorted(await pipeline.forward_extremities(room_id))
        depth = 10
        if policy:  # the policy server's member, so the room uses it
            ps = remote(f"@ps:{POLICY}", POLICY, policy_key, "m.room.member", {"membership": "join"}, f"@ps:{POLICY}",
                        prev, depth, state)
            await pipeline.process(room_id, [ps])
            state[("m.room.member", ps.state_key)] = ps.event_id
            prev, depth = [ps.event_id], depth + 1
        join = remote(bob, REMOTE, remote_key, "m.room.member", {"membership": "join"}, bob, prev, depth, state)
        await pipeline.process(room_id, [join])
        state[("m.room.member", bob)] = join.event_id
        prev, depth = [join.event_id], depth + 1
        batch = []
        for i in range(events):
            ev = remote(bob, REMOTE, remote_key, "m.room.message", {"msgtype": "m.text", "body": f"m{i}"}, None,
                        prev, depth, state)
            batch.append(ev)
            prev, depth = [ev.event_id], depth + 1
        start = time.perf_counter()
        accepted = 0
        for i in range(0, len(batch), 50):
            outcomes = await pipeline.process(room_id, batch[i:i + 50])
            accepted += sum(o.accepted for o in outcomes.values())
        elapsed = time.perf_counter() - start
        assert accepted == events, (label, accepted)
        print(f"{label:20s} {events / elapsed:8.0f} events/s  ({events} events in {elapsed:.2f} s)")
        store.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def main(events: int) -> None:
    await run("without plugin", events, plugin=False, policy=False)
    await run("no policy server", events, plugin=True, policy=False)
    await run("signed events", events, plugin=True, policy=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000)
    args = parser.parse_args()
    task.react(lambda _reactor: defer.ensureDeferred(main(args.events)))
