"""The sender's in-memory EDUs (typing, presence): sent with queued items, replaced by a
newer one with the same key, and dropped rather than sent stale after an outage."""

from __future__ import annotations

from fedserver.federation.client import FederationUnreachable
from tests.test_sender import DEST, SenderTestCase, pdu


def typing(user: str, on: bool) -> dict:
    return {"room_id": "!r:x.test", "user_id": user, "typing": on}


class EphemeralEduTests(SenderTestCase):
    async def test_sent_alone_and_with_queued_items(self):
        """An in-memory EDU goes out in a transaction of its own when nothing is queued,
        and after that in the same transaction as queued PDUs; nothing of it is stored."""
        self.sender.send_ephemeral_edu("m.typing", typing("@a:us.test", True), [DEST], key=("t", "a"), ttl_ms=20_000)
        await self.puts(1)
        self.assertEqual(self.peer.calls[0][2]["edus"], [{"edu_type": "m.typing", "content": typing("@a:us.test", True)}])
        self.assertEqual(self.peer.calls[0][2]["pdus"], [])
        self.assertEqual(await self.store.destinations_with_pending(), [])
        self.peer.calls[0][3].callback({})
        await self.until(lambda: not self.sender.sending(), "the send to finish")
        await self.sender.send_pdus([pdu(1)], [DEST])
        self.sender.send_ephemeral_edu("m.typing", typing("@a:us.test", False), [DEST], key=("t", "a"), ttl_ms=20_000)
        await self.puts(2)
        body = self.peer.calls[1][2]
        self.assertEqual(body["pdus"], [pdu(1)])
        self.assertEqual([e["content"]["typing"] for e in body["edus"]], [False])
        self.peer.calls[1][3].callback({})
        await self.until(lambda: not self.sender.sending(), "the send to finish")
        await self.settle()
        self.assertEqual(len(self.peer.calls), 2)  # nothing left to send

    async def test_newer_replaces_older_while_in_flight(self):
        """Two updates with the same key while a transaction is in flight: only the
        newest is sent next; one with another key goes too."""
        await self.sender.send_pdus([pdu(1)], [DEST])
        await self.puts(1)
        for on in (True, False, True):
            self.sender.send_ephemeral_edu("m.typing", typing("@a:us.test", on), [DEST], key=("t", "a"), ttl_ms=20_000)
        self.sender.send_ephemeral_edu("m.typing", typing("@b:us.test", True), [DEST], key=("t", "b"), ttl_ms=20_000)
        self.peer.calls[0][3].callback({})
        await self.puts(2)
        sent = [(e["content"]["user_id"], e["content"]["typing"]) for e in self.peer.calls[1][2]["edus"]]
        self.assertEqual(sent, [("@a:us.test", True), ("@b:us.test", True)])
        self.peer.calls[1][3].callback({})

    async def test_stale_edus_are_dropped_after_an_outage(self):
        """The destination is down: queued PDUs wait for it, but a typing EDU whose time
        to live passed during the backoff is not sent when it comes back; a fresh one is."""
        await self.sender.send_pdus([pdu(1)], [DEST])
        self.sender.send_ephemeral_edu("m.typing", typing("@a:us.test", True), [DEST], key=("t", "a"), ttl_ms=1_000)
        await self.fail_next(1, FederationUnreachable("down"))
        self.assertEqual(len(self.peer.calls[0][2]["edus"]), 1)  # it was tried while fresh
        self.sender.send_ephemeral_edu("m.presence", {"push": []}, [DEST], key=("p", "a"), ttl_ms=60_000)
        self.clock.advance(2.5)
        await self.puts(2)
        body = self.peer.calls[1][2]
        self.assertEqual(body["pdus"], [pdu(1)])
        self.assertEqual([e["edu_type"] for e in body["edus"]], ["m.presence"])
        self.peer.calls[1][3].callback({})
