"""Daily use across fedserver and a real Synapse, through both client APIs: read receipts,
typing and presence seen on both sides, unread counts from Synapse's events (a mention
highlights) dropping with a receipt, the user directory and remote profiles; and the
daily-use flow driven by matrix-js-sdk under node (tests/js/scenarios/daily_use.mjs).

Both servers run as child processes, started once for this module (Synapse with presence
on). Skipped without ``FEDSERVER_SYNAPSE_PYTHON`` unless ``FEDSERVER_INTEROP=require``.
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any, Optional
from urllib.parse import quote

from twisted.trial.unittest import TestCase

from tests.interop.peers import HTTPError, PeerPair, Synapse, wait_until
from tests.jsclient import account, node_or_skip, run_scenario

#: Seconds allowed for anything to cross between the servers.
CONVERGE = 30

_pair = PeerPair("interop-daily-", synapse_presence=True)
_names = (f"d{i}" for i in itertools.count())


def q(value: str) -> str:
    return quote(value, safe="")


class DailyUseWithSynapseTests(TestCase):
    def setUp(self) -> None:
        self.synapse, self.fedserver = _pair.get()

    # -- helpers ------------------------------------------------------------------------------

    def user(self, server: Any, displayname: Optional[str] = None) -> str:
        name = next(_names)
        user_id = server.register(name) if isinstance(server, Synapse) else server.admin_user(name)
        if displayname is not None:
            self.call(server, "PUT", f"/profile/{q(user_id)}/displayname", {"displayname": displayname}, user_id)
        return user_id

    @staticmethod
    def call(server: Any, method: str, path: str, body: Any = None, user: Optional[str] = None,
             params: Optional[dict] = None) -> Any:
        return server.client(method, "/_matrix/client/v3" + path, body, as_user=user, params=params)

    def sync(self, server: Any, user: str, since: Optional[str] = None) -> dict:
        params = {"timeout": "0"}
        if since:
            params["since"] = since
        return self.call(server, "GET", "/sync", user=user, params=params)

    def shared_room(self, host: Any, owner: str, other: Any, guest: str) -> str:
        alias = "daily" + uuid.uuid4().hex[:8]
        room = self.call(host, "POST", "/createRoom", {"preset": "public_chat", "room_alias_name": alias}, owner)["room_id"]
        self.call(other, "POST", f"/join/{q('#' + alias + ':' + host.server_name)}", {}, guest)
        return room

    def send(self, server: Any, user: str, room: str, body: str, **content: Any) -> str:
        return self.call(server, "PUT", f"/rooms/{q(room)}/send/m.room.message/{uuid.uuid4().hex}",
                         {"msgtype": "m.text", "body": body, **content}, user)["event_id"]

    def ephemeral(self, server: Any, user: str, room: str, event_type: str, since: Optional[str] = None) -> list:
        joined = self.sync(server, user, since)["rooms"]["join"].get(room, {})
        return [e for e in joined.get("ephemeral", {}).get("events", []) if e["type"] == event_type]

    def sees_event(self, server: Any, user: str, room: str, event_id: str) -> bool:
        try:
            self.call(server, "GET", f"/rooms/{q(room)}/event/{q(event_id)}", user=user)
            return True
        except Exception:
            return False

    def receipt_seen(self, server: Any, user: str, room: str, event_id: str, reader: str) -> bool:
        for e in self.ephemeral(server, user, room, "m.receipt"):
            if reader in e["content"].get(event_id, {}).get("m.read", {}):
                return True
        return False

    # -- scenarios ----------------------------------------------------------------------------

    def test_receipts_typing_and_presence_both_ways(self):
        """A fedserver user and a Synapse user in a room on fedserver: each one's read
        receipt on the other's message reaches the other's /sync; each one's typing
        reaches the other's /sync and stops; each one's presence (with a status message)
        reaches the other's GET /presence/{userId}/status."""
        fs, syn = self.fedserver, self.synapse
        ours, theirs = self.user(fs), self.user(syn)
        room = self.shared_room(fs, ours, syn, theirs)
        mine = self.send(fs, ours, room, "from fedserver")
        wait_until(lambda: self.sees_event(syn, theirs, room, mine), CONVERGE, "Synapse to get our message")
        self.call(syn, "POST", f"/rooms/{q(room)}/receipt/m.read/{q(mine)}", {}, theirs)
        wait_until(lambda: self.receipt_seen(fs, ours, room, mine, theirs), CONVERGE, "Synapse's receipt on fedserver")
        yours = self.send(syn, theirs, room, "from synapse")
        wait_until(lambda: self.sees_event(fs, ours, room, yours), CONVERGE, "fedserver to get Synapse's message")
        self.call(fs, "POST", f"/rooms/{q(room)}/receipt/m.read/{q(yours)}", {}, ours)
        wait_until(lambda: self.receipt_seen(syn, theirs, room, yours, ours), CONVERGE, "our receipt on Synapse")

        def typing_seen(server: Any, viewer: str, since: str, expected: list) -> bool:
            events = self.ephemeral(server, viewer, room, "m.typing", since)
            return bool(events) and events[-1]["content"]["user_ids"] == expected

        base = self.sync(syn, theirs)["next_batch"]
        self.call(fs, "PUT", f"/rooms/{q(room)}/typing/{q(ours)}", {"typing": True, "timeout": 30000}, ours)
        wait_until(lambda: typing_seen(syn, theirs, base, [ours]), CONVERGE, "our typing on Synapse")
        self.call(fs, "PUT", f"/rooms/{q(room)}/typing/{q(ours)}", {"typing": False}, ours)
        wait_until(lambda: typing_seen(syn, theirs, base, []), CONVERGE, "our typing to stop on Synapse")
        base = self.sync(fs, ours)["next_batch"]
        self.call(syn, "PUT", f"/rooms/{q(room)}/typing/{q(theirs)}", {"typing": True, "timeout": 30000}, theirs)
        wait_until(lambda: typing_seen(fs, ours, base, [theirs]), CONVERGE, "Synapse's typing on fedserver")
        self.call(syn, "PUT", f"/rooms/{q(room)}/typing/{q(theirs)}", {"typing": False}, theirs)
        wait_until(lambda: typing_seen(fs, ours, base, []), CONVERGE, "Synapse's typing to stop on fedserver")

        def status_seen(server: Any, viewer: str, target: str, msg: str) -> bool:
            status = self.call(server, "GET", f"/presence/{q(target)}/status", user=viewer)
            return status.get("presence") == "online" and status.get("status_msg") == msg

        self.call(fs, "PUT", f"/presence/{q(ours)}/status", {"presence": "online", "status_msg": "on fedserver"}, ours)
        wait_until(lambda: status_seen(syn, theirs, ours, "on fedserver"), CONVERGE, "our presence on Synapse")
        self.call(syn, "PUT", f"/presence/{q(theirs)}/status", {"presence": "online", "status_msg": "on synapse"}, theirs)
        wait_until(lambda: status_seen(fs, ours, theirs, "on synapse"), CONVERGE, "Synapse's presence on fedserver")
        presence = self.sync(fs, ours)["presence"]["events"]
        self.assertIn(theirs, [e["sender"] for e in presence])

    def test_counts_from_synapse_events_directory_and_profiles(self):
        """In a room on Synapse, a Synapse user's message mentioning our user notifies and
        highlights on fedserver (push rules evaluated on events from other servers); our
        user's read receipt clears the counts. Our user finds the Synapse user in the user
        directory (they share a room) and reads their profile over federation."""
        fs, syn = self.fedserver, self.synapse
        theirs = self.user(syn, "Synapse Sam")
        ours = self.user(fs)
        room = self.shared_room(syn, theirs, fs, ours)
        mention = self.send(syn, theirs, room, "look here", **{"m.mentions": {"user_ids": [ours]}})

        def counts() -> Optional[dict]:
            joined = self.sync(fs, ours)["rooms"]["join"].get(room, {})
            return joined.get("unread_notifications")

        wait_until(lambda: counts() == {"highlight_count": 1, "notification_count": 1}, CONVERGE,
                   "the mention to be counted on fedserver")
        self.call(fs, "POST", f"/rooms/{q(room)}/receipt/m.read/{q(mention)}", {}, ours)
        self.assertEqual(counts(), {"highlight_count": 0, "notification_count": 0})
        note = self.call(fs, "GET", "/notifications", user=ours)["notifications"][0]
        self.assertEqual((note["event"]["event_id"], note["read"]), (mention, True))

        def found() -> bool:
            results = self.call(fs, "POST", "/user_directory/search", {"search_term": "synapse sam"}, ours)["results"]
            return [r["user_id"] for r in results] == [theirs]

        wait_until(found, CONVERGE, "the Synapse user in our user directory")
        self.assertEqual(self.call(fs, "GET", f"/profile/{q(theirs)}", user=ours)["displayname"], "Synapse Sam")

    def test_ignoring_a_synapse_user_then_deactivating(self):
        """A fedserver user in a Synapse room ignores the Synapse user: the Synapse user's
        messages stop reaching their /sync and /messages (another fedserver user still
        gets them), their state events still come, and an invite from them to another room
        is not shown. The fedserver user then deactivates their account (password UIA):
        Synapse sees them leave the room and reject the invite."""
        fs, syn = self.fedserver, self.synapse
        ours, other, theirs = self.user(fs), self.user(fs), self.user(syn)
        room = self.shared_room(syn, theirs, fs, ours)
        self.call(fs, "POST", f"/join/{q(room)}", {}, other, params={"via": syn.server_name})
        self.call(fs, "PUT", f"/user/{q(ours)}/account_data/m.ignored_user_list", {"ignored_users": {theirs: {}}}, ours)
        base = self.sync(fs, ours)["next_batch"]
        hidden = self.send(syn, theirs, room, "you cannot see me")
        wait_until(lambda: self.sees_event(fs, other, room, hidden), CONVERGE, "Synapse's message on fedserver")
        self.call(syn, "PUT", f"/rooms/{q(room)}/state/m.room.name", {"name": "Renamed"}, theirs)

        def renamed() -> Any:
            joined = self.sync(fs, ours, base)["rooms"]["join"].get(room)
            events = joined["timeline"]["events"] + joined["state"]["events"] if joined else []
            return [e for e in events if e["type"] == "m.room.name"] and joined

        joined = wait_until(renamed, CONVERGE, "the rename to reach the ignoring user")
        self.assertNotIn(hidden, [e["event_id"] for e in joined["timeline"]["events"]])
        page = self.call(fs, "GET", f"/rooms/{q(room)}/messages", user=ours, params={"dir": "b", "limit": "50"})
        self.assertNotIn(hidden, [e["event_id"] for e in page["chunk"]])
        self.assertFalse(self.sees_event(fs, ours, room, hidden))
        invite_room = self.call(syn, "POST", "/createRoom", {"invite": [ours, other]}, theirs)["room_id"]
        wait_until(lambda: invite_room in self.sync(fs, other)["rooms"]["invite"], CONVERGE, "the invites to arrive")
        self.assertNotIn(invite_room, self.sync(fs, ours)["rooms"]["invite"])

        try:
            self.call(fs, "POST", "/account/deactivate", {}, ours)
            self.fail("deactivation without auth must ask for it")
        except HTTPError as e:
            self.assertEqual(e.status, 401)
            session = e.body["session"]
        self.call(fs, "POST", "/account/deactivate", {"auth": {
            "type": "m.login.password", "session": session, "password": "pw-" + ours[1:].split(":")[0],
            "identifier": {"type": "m.id.user", "user": ours}}}, ours)

        def membership(r: str) -> Optional[str]:
            try:
                return self.call(syn, "GET", f"/rooms/{q(r)}/state/m.room.member/{q(ours)}", user=theirs)["membership"]
            except HTTPError:
                return None

        wait_until(lambda: membership(room) == "leave", CONVERGE, "Synapse to see the deactivated user leave")
        wait_until(lambda: membership(invite_room) == "leave", CONVERGE, "Synapse to see the invite rejected")

    def test_matrix_js_sdk_daily_use(self):
        """matrix-js-sdk clients, one on fedserver and one on Synapse, in a room on
        fedserver: messages both ways, read receipts and typing seen on both sides, the
        fedserver client's unread count dropping after its read receipt, the default push
        rules present (no SDK warning about missing ones), a tag, and the user directory
        finding the Synapse user."""
        node_or_skip()
        fs, syn = self.fedserver, self.synapse
        a = account(fs, self.user(fs, "Fed Fiona"))
        b_id = self.user(syn, "Syn Simon")
        b = account(syn, b_id)
        out = run_scenario("daily_use", {"a": a, "b": b, "alias": "daily" + uuid.uuid4().hex[:8]}, timeout=180)
        self.assertEqual(out["pushRuleWarnings"], [])
        self.assertTrue(out["hasDefaultRules"])
        self.assertEqual(out["unreadBefore"], 1)
        self.assertEqual(out["unreadAfter"], 0)
        self.assertTrue(out["aSawReceipt"])
        self.assertTrue(out["bSawReceipt"])
        self.assertTrue(out["aSawTyping"])
        self.assertTrue(out["bSawTyping"])
        self.assertEqual(out["tags"], {"m.favourite": {"order": 0.5}})
        self.assertIn(b_id, out["directory"])
