"""Interop of the policy server plugin with a real Synapse: a room on fedserver names a small
policy server of ours (running in this process, on loopback TLS); a Synapse user joins and
sends events; what the policy server refuses is soft-failed by fedserver while federation
keeps working.

fedserver and Synapse run as child processes (tests/interop/peers.py), started once for
this module. The policy server runs on this process's reactor, so every blocking call to
the peers goes through a thread (``deferToThread``): the reactor must stay free to answer
the peers' ``/sign`` requests. Skipped without ``FEDSERVER_SYNAPSE_PYTHON``, or (naming why)
if the fedserver under test does not start its plugins (``fedserver_on_start``) or lacks
the plugin; under ``FEDSERVER_INTEROP=require`` each of those fails instead.
"""

from __future__ import annotations

import os
from urllib.parse import quote

from twisted.internet import reactor, task, threads
from twisted.trial.unittest import TestCase

from tests.interop.peers import Fedserver, HTTPError, PeerPair, Synapse, unavailable

try:
    from fedserver_policy_server.room_policy import POLICY_KEY_ID
    from fedserver_policy_server.tests.policy_server import start_policy_server
except ImportError:  # pragma: no cover - the plugin is not installed
    start_policy_server = None

#: What fedserver logs once the plugin's checker is registered (fedserver_on_start).
STARTED_LINE = "Policy servers honoured"
_pair = PeerPair("interop-policy-")


def peers() -> tuple[Synapse, Fedserver]:
    """Synapse and fedserver for this module, started on first use."""
    return _pair.get()


def blocking(f, *args, **kw):
    """Run a blocking peer call off the reactor thread."""
    return threads.deferToThread(f, *args, **kw)


class SynapsePolicyServerTests(TestCase):
    """A fedserver room with a policy server, joined from Synapse."""

    timeout = 240

    async def setUp(self):
        if start_policy_server is None:
            raise unavailable("the policy server plugin (plugins/policy_server) is not installed")
        # On the reactor thread, before our policy server runs: the children are asked to
        # die with the thread that started them, and trial stops its pool's threads.
        self.synapse, self.fedserver = peers()
        with open(self.fedserver.log_path, errors="replace") as f:
            if STARTED_LINE not in f.read():
                raise unavailable("the fedserver under test did not start the policy server plugin: its service "
                                  "does not call the fedserver_on_start hook")
        self.ps = await start_policy_server(reactor, os.path.abspath(self.mktemp()))
        self.addCleanup(self.ps.stop)

    async def until(self, predicate, what: str, timeout: float = 60):
        """Poll ``predicate`` (a blocking function, run in a thread) until it is true."""
        last = None
        for _ in range(int(timeout / 0.2)):
            try:
                value = await blocking(predicate)
                if value:
                    return value
            except Exception as e:  # noqa: BLE001 - polling servers
                last = e
            await task.deferLater(reactor, 0.2, lambda: None)
        self.fail(f"timed out waiting for {what} (last error: {last!r})")

    def bodies(self, server, user: str, room_id: str) -> list[str]:
        page = server.client("GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/messages", as_user=user,
                             params={"dir": "b", "limit": "50"})
        return [e["content"].get("body") for e in page["chunk"] if e["type"] == "m.room.message"]

    async def test_refused_synapse_event_soft_failed_federation_goes_on(self):
        """fedserver asks the policy server about Synapse's join (signed, accepted);
        Synapse gets signatures for its messages itself (fedserver verifies them and does
        not ask) and refuses its user's spam (M_FORBIDDEN); the membership update Synapse sends
        without asking is refused by the policy server and soft-failed by fedserver (its
        state keeps the old member event; the refusal names the plugin); Synapse's next
        message is accepted and fedserver's own message reaches Synapse with the policy
        server's signature, which Synapse accepts."""
        synapse, fs, ps = self.synapse, self.fedserver, self.ps
        alice = await blocking(fs.user, "alice_policy")
        bob = await blocking(synapse.register, "bob_policy")
        room_id = (await blocking(fs.client, "POST", "/_matrix/client/v3/createRoom",
                                  {"preset": "public_chat", "room_version": "12"}, as_user=alice))["room_id"]
        room = quote(room_id)
        await blocking(fs.client, "PUT", f"/_matrix/client/v3/rooms/{room}/state/m.room.policy/",
                       ps.policy_content(), as_user=alice)
        await ps.join(fs.server_name, room_id)

        # Synapse's user joins through fedserver: fedserver asks for the join's signature.
        await blocking(synapse.client, "POST", f"/_matrix/client/v3/join/{room}", {}, as_user=bob,
                       params={"server_name": fs.server_name})
        joins = [r for r in ps.sign_requests if r["type"] == "m.room.member" and r["origin"] == fs.server_name]
        self.assertEqual([(r["verified"], r["answer"]) for r in joins], [(True, "sign_all")])

        # Synapse asks the policy server for its own messages and refuses its user's spam.
        await blocking(synapse.client, "PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.message/p1",
                       {"msgtype": "m.text", "body": "hello from synapse"}, as_user=bob)
        with self.assertRaises(HTTPError) as cm:
            await blocking(synapse.client, "PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.message/p2",
                           {"msgtype": "m.text", "body": "spam spam spam"}, as_user=bob)
        # Synapse passes on the policy server's refusal as 400 M_FORBIDDEN.
        self.assertEqual((cm.exception.status, cm.exception.body.get("errcode")), (400, "M_FORBIDDEN"), cm.exception.body)
        await self.until(lambda: "hello from synapse" in self.bodies(fs, alice, room_id), "Synapse's message on fedserver")
        self.assertEqual({r["origin"] for r in ps.sign_requests if r["type"] == "m.room.message"}, {synapse.server_name})

        # A membership update Synapse sends without asking: fedserver asks, and soft-fails it.
        member_path = f"/_matrix/client/v3/rooms/{room}/state/m.room.member/{quote(bob)}"
        before = await blocking(fs.client, "GET", member_path, as_user=alice)
        await blocking(synapse.client, "PUT", member_path, {"membership": "join", "displayname": "spam king"},
                       as_user=bob)

        def refused():
            return [r for r in ps.sign_requests if r["origin"] == fs.server_name and r["type"] == "m.room.member"
                    and (r.get("content") or {}).get("displayname") == "spam king"]

        (request,) = await self.until(refused, "fedserver to ask about the renamed member")
        self.assertEqual(request["answer"], "refuse_all")

        operator = await blocking(fs.admin_user, "operator_policy", True)

        def soft_failed():
            listing = fs.client("GET", "/_fedserver/admin/v1/refusals", as_user=operator,
                                params={"room_id": room_id, "kind": "soft_failed"})
            return [r for r in listing["refusals"] if r["event_id"] == request["event_id"]]

        (refusal,) = await self.until(soft_failed, "the soft failure on fedserver")
        self.assertEqual((refusal["plugin"], refusal["rule"]), ("policy_server.checker", "policy"))
        self.assertEqual(await blocking(fs.client, "GET", member_path, as_user=alice), before)

        # Federation goes on: Synapse's next message arrives, ours reach Synapse signed.
        await blocking(synapse.client, "PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.message/p3",
                       {"msgtype": "m.text", "body": "later from synapse"}, as_user=bob)
        await self.until(lambda: "later from synapse" in self.bodies(fs, alice, room_id), "the later message")
        sent = await blocking(fs.client, "PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.message/f1",
                              {"msgtype": "m.text", "body": "hello from fedserver"}, as_user=alice)
        await self.until(lambda: "hello from fedserver" in self.bodies(synapse, bob, room_id), "our message on Synapse")
        self.assertEqual([r["origin"] for r in ps.requests_for(sent["event_id"])], [fs.server_name])

        def synapse_copy():
            import json

            with synapse.admin_db() as db:
                row = db.execute("SELECT json FROM event_json WHERE event_id = ?", (sent["event_id"],)).fetchone()
            return row and json.loads(row[0])

        pdu = await self.until(synapse_copy, "Synapse to store our message")
        self.assertIn(POLICY_KEY_ID, pdu["signatures"][ps.server_name])


class SynapseMayJoinTests(TestCase):
    """The may_join plugin's room version is fedserver's own: Synapse cannot take part."""

    timeout = 120

    async def setUp(self):
        self.synapse, self.fedserver = peers()  # on the reactor thread (see above)

    async def test_synapse_cannot_join_or_be_invited(self):
        """A Synapse user listed in a may_join room cannot join it (Synapse does not offer
        the version; fedserver answers its make_join M_INCOMPATIBLE_ROOM_VERSION) and an
        invite to Synapse fails with an error, not a 500; the room is unchanged and
        Synapse keeps federating (a public room is joined afterwards)."""
        synapse, fs = self.synapse, self.fedserver
        alice = await blocking(fs.user, "alice_mayjoin")
        bob = await blocking(synapse.register, "bob_mayjoin")
        try:
            created = await blocking(fs.client, "POST", "/_matrix/client/v3/createRoom", {
                "room_version": "org.fedserver.may_join.12",
                "initial_state": [{"type": "m.room.join_rules", "state_key": "",
                                   "content": {"join_rule": "org.fedserver.may_join", "may_join": [bob]}}],
            }, as_user=alice)
        except HTTPError as e:
            if e.body.get("errcode") == "M_UNSUPPORTED_ROOM_VERSION":
                raise unavailable("the fedserver under test does not load the may_join plugin") from None
            raise
        room = quote(created["room_id"])
        members = f"/_matrix/client/v3/rooms/{room}/joined_members"
        before = await blocking(fs.client, "GET", members, as_user=alice)
        with self.assertRaises(HTTPError) as cm:
            await blocking(synapse.client, "POST", f"/_matrix/client/v3/join/{room}", {}, as_user=bob,
                           params={"server_name": fs.server_name})
        self.assertEqual((cm.exception.status, cm.exception.body.get("errcode")), (400, "M_INCOMPATIBLE_ROOM_VERSION"),
                         cm.exception.body)
        self.assertEqual(cm.exception.body.get("room_version"), "org.fedserver.may_join.12")
        with self.assertRaises(HTTPError) as cm:
            await blocking(fs.client, "POST", f"/_matrix/client/v3/rooms/{room}/invite", {"user_id": bob},
                           as_user=alice)
        # Synapse refuses the invite for the version it does not know; fedserver passes its
        # answer on to the inviter.
        self.assertEqual((cm.exception.status, cm.exception.body.get("errcode")), (400, "M_UNSUPPORTED_ROOM_VERSION"),
                         cm.exception.body)
        self.assertEqual(await blocking(fs.client, "GET", members, as_user=alice), before)

        public = (await blocking(fs.client, "POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"},
                                 as_user=alice))["room_id"]
        await blocking(synapse.client, "POST", f"/_matrix/client/v3/join/{quote(public)}", {}, as_user=bob,
                       params={"server_name": fs.server_name})
