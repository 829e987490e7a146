"""The plugin on fedserver's real pipeline, event creator and SQLite store, asking a real
policy server of our own over loopback TLS (X-Matrix signed requests, checked by it)."""

from __future__ import annotations

import os
from typing import Any

from signedjson.key import generate_signing_key
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from fedserver.auth import make_plugin_manager
from fedserver.auth.engine import AuthEngine
from fedserver.events.builder import build_from_template
from fedserver.events.signing import sign_bytes, signed_bytes_for_event
from fedserver.handlers.rooms.creator import EventCreator
from fedserver.handlers.rooms.pipeline import ACCEPTED, SOFT_FAILED, RoomPipeline
from fedserver.room_versions import V10, V12
from fedserver.storage.sqlite import open_store
from fedserver.testing import database_for_test

from fedserver_policy_server.options import PolicyServerOptions
from fedserver_policy_server.room_policy import (
    POLICY_KEY_ID,
    has_valid_signature,
    is_exempt,
    policy_server_from_content,
)
from fedserver_policy_server.tests.policy_server import PolicyServer, loopback_client, start_policy_server

PLUGIN = "fedserver_policy_server"
CHECKER = f"{PLUGIN}.checker"
REMOTE = "remote.test"
BOB = f"@bob:{REMOTE}"
REMOTE_KEY = generate_signing_key("r1")


class PolicyRoomTestCase(TestCase):
    """Our server (its keys served over TLS, so the policy server can check our requests),
    a room of ours with the plugin on its pipeline, and the small policy server."""

    timeout = 60
    room_version = V12

    async def set_up(self, **options: Any) -> None:
        # "home" only serves our server's key document, as our federation listener would.
        self.home = await start_policy_server(reactor, os.path.abspath(self.mktemp()))
        self.addCleanup(self.home.stop)
        self.ps = await start_policy_server(reactor, os.path.abspath(self.mktemp()))
        self.addCleanup(self.ps.stop)
        self.name = self.home.server_name
        self.alice = f"@alice:{self.name}"
        self.store = await open_store(database_for_test(self, self.mktemp()), reactor)
        self.addCleanup(self.store.close)
        self.client = loopback_client(reactor, self.name, self.home.server_key, timeout=10)
        self.addCleanup(self.client.close)
        self.pm = make_plugin_manager(load_entrypoints=False, module_paths=[PLUGIN])
        self.start_plugin(**options)
        self.pipeline = RoomPipeline(self.store, AuthEngine(self.pm), self.pm)
        self.creator = EventCreator(reactor, self.store, self.pipeline, self.name, self.home.server_key)
        rv = self.room_version
        content = {"room_version": rv.identifier}
        if not rv.implicit_room_creator:
            content["creator"] = self.alice
        create, _ = await self.creator.create_room_event(rv, sender=self.alice, content=content)
        self.room_id = create.room_id
        await self.send("m.room.member", {"membership": "join"}, self.alice)
        await self.send("m.room.power_levels", {"users": {} if rv.privileged_creators else {self.alice: 100}}, "")
        await self.send("m.room.join_rules", {"join_rule": "public"}, "")

    def start_plugin(self, **options: Any) -> None:
        """``fedserver_on_start`` as the server calls it (again: a fresh checker)."""
        self.pm.hook.fedserver_on_start(
            reactor=reactor, server_name=self.name, federation_client=self.client, store=self.store,
            plugin_manager=self.pm, plugin_config={PLUGIN: options},
        )
        self.checker = self.pm.get_plugin(CHECKER)

    async def send(self, type: str, content: dict, state_key=None, sender=None):
        event, outcome = await self.creator.send(self.room_id, self.room_version, type=type,
                                                 sender=sender or self.alice, content=content, state_key=state_key)
        return event, outcome

    async def remote(self, server: str, key: Any, sender: str, type: str, content: dict, state_key=None, policy_key=None):
        """An event of another server built on our current state (as it would after
        make_join or /send), optionally signed by a policy key, through the pipeline."""
        template, _ = await self.creator.template(self.room_id, self.room_version, type=type, sender=sender,
                                                  content=content, state_key=state_key)
        event = build_from_template(template, self.room_version, origin_server_ts=int(reactor.seconds() * 1000),
                                    server_name=server, signing_key=key)
        if policy_key is not None:
            sig = sign_bytes(signed_bytes_for_event(event.pdu, self.room_version), policy_key)
            event.pdu["signatures"].setdefault(self.ps.server_name, {})[POLICY_KEY_ID] = sig
        outcomes = await self.pipeline.process(self.room_id, [event])
        return event, outcomes[event.event_id]

    async def bob(self, type: str, content: dict, state_key=None, **kw):
        return await self.remote(REMOTE, REMOTE_KEY, BOB, type, content, state_key, **kw)

    async def enable_policy_server(self) -> None:
        """``m.room.policy`` naming the policy server, which then joins."""
        _, outcome = await self.send("m.room.policy", self.ps.policy_content(), "")
        self.assertEqual(outcome.status, ACCEPTED)
        user = f"@policy:{self.ps.server_name}"
        join, outcome = await self.remote(self.ps.server_name, self.ps.server_key, user, "m.room.member",
                                          {"membership": "join"}, user)
        self.assertEqual(outcome.status, ACCEPTED)
        self.ps.protect(self.room_id, self.room_version)
        _, outcome = await self.bob("m.room.member", {"membership": "join"}, BOB)
        self.assertEqual(outcome.status, ACCEPTED)

    async def stored_signatures(self, event_id: str) -> dict:
        return (await self.store.get_event(event_id)).pdu["signatures"]

    async def soft_failure(self, event_id: str):
        refused = await self.store.get_refused_events(self.room_id, kind="soft_failed")
        return next((r for r in refused if r.event_id == event_id), None)


class ReceivedEventsTests(PolicyRoomTestCase):
    """Events of other servers in a room using a policy server."""

    async def test_signed_on_request_and_signature_kept(self):
        """An event without the policy server's signature is sent to ``/sign`` (X-Matrix
        signed as us); the signature it returns is persisted with the event and verifies
        with the room's key."""
        await self.set_up()
        await self.enable_policy_server()
        event, outcome = await self.bob("m.room.message", {"msgtype": "m.text", "body": "hello"})
        self.assertEqual(outcome.status, ACCEPTED)
        (request,) = self.ps.requests_for(event.event_id)
        self.assertEqual((request["origin"], request["verified"], request["answer"]), (self.name, True, "sign_all"))
        stored = await self.store.get_event(event.event_id)
        self.assertIn(POLICY_KEY_ID, stored.pdu["signatures"][self.ps.server_name])
        self.assertIn(REMOTE, stored.pdu["signatures"])
        server = policy_server_from_content(self.ps.policy_content())
        self.assertTrue(has_valid_signature(stored, server))
        self.assertEqual(stored.event_id, event.event_id)

    async def test_refused_event_soft_failed(self):
        """An event the policy server refuses is soft-failed, never rejected: stored with
        the plugin's name and the policy server's answer, not current state, not a
        forward extremity; the room goes on."""
        await self.set_up()
        await self.enable_policy_server()
        extremities = await self.store.get_forward_extremities(self.room_id)
        member_before = (await self.store.get_current_state_ids(self.room_id))[("m.room.member", BOB)]
        event, outcome = await self.bob("m.room.member", {"membership": "join", "displayname": "buy spam now"}, BOB)
        self.assertEqual(outcome.status, SOFT_FAILED)
        self.assertEqual((outcome.refusal.rule, outcome.refusal.plugin), ("policy", CHECKER))
        self.assertIn("refused to sign", outcome.refusal.reason)
        self.assertIn("M_FORBIDDEN", outcome.refusal.reason)
        meta = (await self.store.get_event_meta([event.event_id]))[event.event_id]
        self.assertEqual((meta.soft_failed, meta.rejected), (True, False))
        refusal = await self.soft_failure(event.event_id)
        self.assertEqual((refusal.plugin, refusal.rule), (CHECKER, "policy"))
        current = await self.store.get_current_state_ids(self.room_id)
        self.assertEqual(current[("m.room.member", BOB)], member_before)
        self.assertEqual(await self.store.get_forward_extremities(self.room_id), extremities)
        later, outcome = await self.bob("m.room.message", {"msgtype": "m.text", "body": "fine"})
        self.assertEqual(outcome.status, ACCEPTED)

    async def test_valid_signature_not_asked_again(self):
        """An event carrying a valid signature by the room's policy key is accepted
        without a request."""
        await self.set_up()
        await self.enable_policy_server()
        event, outcome = await self.bob("m.room.message", {"msgtype": "m.text", "body": "spam, but signed"},
                                        policy_key=self.ps.policy_key)
        self.assertEqual(outcome.status, ACCEPTED)
        self.assertEqual(self.ps.requests_for(event.event_id), [])

    async def test_wrong_key_signature_asks_again(self):
        """A signature by another key (a rotated or forged one) does not count: the policy
        server is asked; its refusal soft-fails, its signature replaces the bad one."""
        await self.set_up()
        await self.enable_policy_server()
        forged = generate_signing_key("policy_server")
        bad, outcome = await self.bob("m.room.message", {"msgtype": "m.text", "body": "spam"}, policy_key=forged)
        self.assertEqual(outcome.status, SOFT_FAILED)
        self.assertEqual(len(self.ps.requests_for(bad.event_id)), 1)
        good, outcome = await self.bob("m.room.message", {"msgtype": "m.text", "body": "ok"}, policy_key=forged)
        self.assertEqual(outcome.status, ACCEPTED)
        server = policy_server_from_content(self.ps.policy_content())
        self.assertTrue(has_valid_signature(await self.store.get_event(good.event_id), server))

    async def test_refusal_forms(self):
        """``200 {}``, a signature by the wrong key and a 4xx error are refusals
        (soft failure) whatever the operator chose for unreachable servers."""
        await self.set_up()
        await self.enable_policy_server()
        for mode in ("empty", "bad_signature", "refuse_all"):
            self.ps.mode = mode
            event, outcome = await self.bob("m.room.message", {"msgtype": "m.text", "body": mode})
            self.assertEqual(outcome.status, SOFT_FAILED, mode)
        self.assertEqual(len(self.ps.sign_requests), 4)  # Bob's join, then one per mode

    async def test_membership_events_checked(self):
        """Membership events are checked too ("all events except the m.room.policy state
        event"): a join the policy server refuses is soft-failed."""
        await self.set_up()
        await self.enable_policy_server()
        carol = "@carol:remote.test"
        _, outcome = await self.remote(REMOTE, REMOTE_KEY, carol, "m.room.member",
                                       {"membership": "join", "displayname": "spammer"}, carol)
        self.assertEqual(outcome.status, SOFT_FAILED)
        self.assertNotIn(carol, await self.store.get_room_members(self.room_id))


class UnreachableTests(PolicyRoomTestCase):
    """The operator's choice when no answer can be had."""

    async def unreachable_outcomes(self) -> list[str]:
        statuses = []
        for mode in ("error", "rate_limited", "unrecognized"):
            self.ps.mode = mode
            _, outcome = await self.bob("m.room.message", {"msgtype": "m.text", "body": mode})
            statuses.append(outcome.status)
        await self.ps.stop()
        _, outcome = await self.bob("m.room.message", {"msgtype": "m.text", "body": "down"})
        statuses.append(outcome.status)
        return statuses

    async def test_fail_open(self):
        """By default (``when_unreachable: open``) a 500, a 429, ``M_UNRECOGNIZED`` or no
        connection at all let the event through, unsigned."""
        await self.set_up()
        await self.enable_policy_server()
        self.assertEqual(self.checker.options.when_unreachable, "open")
        self.assertEqual(await self.unreachable_outcomes(), [ACCEPTED] * 4)

    async def test_fail_closed(self):
        """With ``when_unreachable: closed`` the same events are soft-failed, saying the
        policy server could not be asked."""
        await self.set_up(when_unreachable="closed", timeout=5)
        await self.enable_policy_server()
        self.assertEqual(await self.unreachable_outcomes(), [SOFT_FAILED] * 4)
        refused = await self.store.get_refused_events(self.room_id, kind="soft_failed")
        self.assertTrue(all("could not be asked" in r.reason for r in refused))


class LocalEventsTests(PolicyRoomTestCase):
    """Our own events in a room using a policy server."""

    async def test_our_events_signed_before_sending(self):
        """Our event is signed by the policy server before it is taken in, asked once:
        the policy hook finds the signature valid and does not ask again."""
        await self.set_up()
        await self.enable_policy_server()
        event, outcome = await self.send("m.room.message", {"msgtype": "m.text", "body": "hi"})
        self.assertEqual(outcome.status, ACCEPTED)
        (request,) = self.ps.requests_for(event.event_id)
        self.assertTrue(request["verified"])
        sigs = await self.stored_signatures(event.event_id)
        self.assertEqual(set(sigs), {self.name, self.ps.server_name})

    async def test_refused_local_event_soft_failed_asked_once(self):
        """Our event the policy server refuses is soft-failed (not current state, so not
        sent) and the refusal is not asked for twice."""
        await self.set_up()
        await self.enable_policy_server()
        event, outcome = await self.send("m.room.name", {"name": "spam"}, "")
        self.assertEqual(outcome.status, SOFT_FAILED)
        self.assertEqual(len(self.ps.requests_for(event.event_id)), 1)
        self.assertNotIn(("m.room.name", ""), await self.store.get_current_state_ids(self.room_id))

    async def test_policy_event_exempt(self):
        """Changing or removing ``m.room.policy`` never needs the policy server (a room
        can always get rid of an obstructive one); after removal nothing is asked."""
        await self.set_up()
        await self.enable_policy_server()
        self.ps.mode = "refuse_all"
        before = len(self.ps.sign_requests)
        _, outcome = await self.send("m.room.policy", {}, "")
        self.assertEqual(outcome.status, ACCEPTED)
        event, outcome = await self.bob("m.room.message", {"msgtype": "m.text", "body": "spam"})
        self.assertEqual(outcome.status, ACCEPTED)
        self.assertEqual(len(self.ps.sign_requests), before)


class WhenNotUsedTests(PolicyRoomTestCase):
    """Rooms that do not use a policy server: nothing is asked, nothing impeded."""

    async def test_room_without_policy(self):
        """Without ``m.room.policy`` no request is made for local or remote events."""
        await self.set_up()
        _, outcome = await self.bob("m.room.member", {"membership": "join"}, BOB)
        self.assertEqual(outcome.status, ACCEPTED)
        _, outcome = await self.bob("m.room.message", {"msgtype": "m.text", "body": "spam"})
        self.assertEqual(outcome.status, ACCEPTED)
        _, outcome = await self.send("m.room.message", {"msgtype": "m.text", "body": "spam"})
        self.assertEqual(outcome.status, ACCEPTED)
        self.assertEqual((self.ps.sign_requests, self.checker.requests), ([], 0))

    async def test_policy_server_not_joined(self):
        """A valid ``m.room.policy`` whose server has no joined member is not used ("if
        the server name in the state event has zero joined users in the room, the room
        also does not use a Policy Server"); once it leaves again it is not used either."""
        await self.set_up()
        await self.send("m.room.policy", self.ps.policy_content(), "")
        self.ps.protect(self.room_id, self.room_version)
        _, outcome = await self.bob("m.room.member", {"membership": "join"}, BOB)
        _, outcome = await self.bob("m.room.message", {"msgtype": "m.text", "body": "spam"})
        self.assertEqual(outcome.status, ACCEPTED)
        self.assertEqual(self.ps.sign_requests, [])
        user = f"@policy:{self.ps.server_name}"
        _, outcome = await self.remote(self.ps.server_name, self.ps.server_key, user, "m.room.member",
                                       {"membership": "join"}, user)
        self.assertEqual(outcome.status, ACCEPTED)
        _, outcome = await self.bob("m.room.message", {"msgtype": "m.text", "body": "spam"})
        self.assertEqual(outcome.status, SOFT_FAILED)
        self.ps.mode = "sign_all"
        _, outcome = await self.remote(self.ps.server_name, self.ps.server_key, user, "m.room.member",
                                       {"membership": "leave"}, user)
        self.assertEqual(outcome.status, ACCEPTED)
        self.ps.mode = "refuse_all"
        asked = len(self.ps.sign_requests)
        _, outcome = await self.bob("m.room.message", {"msgtype": "m.text", "body": "spam"})
        self.assertEqual(outcome.status, ACCEPTED)
        self.assertEqual(len(self.ps.sign_requests), asked)

    async def test_invalid_policy_events(self):
        """An ``m.room.policy`` missing ``via`` or ``public_keys.ed25519``, or with a key
        that is not 32 bytes, means no policy server."""
        await self.set_up()
        for content in ({"via": "x.test"}, {"public_keys": {"ed25519": self.ps.public_key}},
                        {"via": "x.test", "public_keys": {"ed25519": "AAAA"}},
                        {"via": "not a server", "public_keys": {"ed25519": self.ps.public_key}},
                        {"via": "x.test", "public_key": self.ps.public_key}):
            self.assertIsNone(policy_server_from_content(content), content)
        self.assertIsNotNone(policy_server_from_content(self.ps.policy_content()))


class V10RoomTests(PolicyRoomTestCase):
    """Room versions before v12 (room ids not derived from the create event, other
    redaction rules) work the same."""

    room_version = V10

    async def test_v10_room(self):
        """In a v10 room refused events are soft-failed and signed ones accepted."""
        await self.set_up()
        await self.enable_policy_server()
        _, outcome = await self.bob("m.room.message", {"msgtype": "m.text", "body": "spam"})
        self.assertEqual(outcome.status, SOFT_FAILED)
        event, outcome = await self.send("m.room.message", {"msgtype": "m.text", "body": "ok"})
        self.assertEqual(outcome.status, ACCEPTED)
        self.assertIn(self.ps.server_name, await self.stored_signatures(event.event_id))


class OptionsTests(SynchronousTestCase):
    """The operator's options."""

    def test_defaults_and_values(self):
        """No options: fail open, 10 s; valid values are taken."""
        self.assertEqual(PolicyServerOptions.from_mapping(None), PolicyServerOptions())
        self.assertFalse(PolicyServerOptions().fail_closed)
        o = PolicyServerOptions.from_mapping({"when_unreachable": "closed", "timeout": 3, "verdict_cache_size": 5})
        self.assertEqual((o.fail_closed, o.timeout, o.verdict_cache_size), (True, 3.0, 5))

    def test_invalid(self):
        """Unknown options and bad values are refused, naming the option."""
        for raw, name in (({"when_unreachable": "maybe"}, "when_unreachable"), ({"timeout": 0}, "timeout"),
                          ({"timeout": True}, "timeout"), ({"verdict_cache_size": 0}, "verdict_cache_size"),
                          ({"fail": "open"}, "fail"), ([], "mapping")):
            with self.assertRaises(ValueError) as cm:
                PolicyServerOptions.from_mapping(raw)
            self.assertIn(name, str(cm.exception))

    def test_bad_options_stop_start(self):
        """``fedserver_on_start`` with invalid options raises (so the server does not
        start), and registers nothing."""
        pm = make_plugin_manager(load_entrypoints=False, module_paths=[PLUGIN])
        with self.assertRaises(ValueError):
            pm.hook.fedserver_on_start(reactor=reactor, server_name="x.test", federation_client=None, store=None,
                                       plugin_manager=pm, plugin_config={PLUGIN: {"when_unreachable": "sometimes"}})
        self.assertIsNone(pm.get_plugin(CHECKER))

    def test_start_again_replaces_checker(self):
        """Calling ``fedserver_on_start`` again (a server started twice, or a test
        choosing options) leaves one checker, with the new options; the plugin's options
        are found under its registered name or ``policy_server``."""
        pm = make_plugin_manager(load_entrypoints=False, module_paths=[PLUGIN])
        for config in ({PLUGIN: {"timeout": 2}}, {"policy_server": {"when_unreachable": "closed"}}):
            pm.hook.fedserver_on_start(reactor=reactor, server_name="x.test", federation_client=None, store=None,
                                       plugin_manager=pm, plugin_config=config)
        impls = pm.hook.fedserver_check_event_policy.get_hookimpls()
        self.assertEqual([i.plugin_name for i in impls], [CHECKER])
        self.assertEqual(pm.get_plugin(CHECKER).options, PolicyServerOptions(when_unreachable="closed"))

    def test_exempt(self):
        """Only the ``m.room.policy`` event with an empty state key is exempt."""
        from fedserver.events.model import Event

        def ev(type, state_key):
            pdu = {"type": type, "sender": "@a:x.test", "room_id": "!r:x.test", "content": {},
                   "prev_events": [], "auth_events": [], "depth": 1, "origin_server_ts": 1}
            if state_key is not None:
                pdu["state_key"] = state_key
            return Event.from_pdu(pdu, V12, event_id="$e")

        self.assertTrue(is_exempt(ev("m.room.policy", "")))
        self.assertFalse(is_exempt(ev("m.room.policy", "x")))
        self.assertFalse(is_exempt(ev("m.room.policy", None)))
        self.assertFalse(is_exempt(ev("m.room.message", None)))


__all__ = ["PolicyRoomTestCase", "PolicyServer"]
