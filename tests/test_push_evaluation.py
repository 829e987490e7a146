"""Push rules evaluated for every local member of a room (fedserver.handlers.push.notifications):
rulesets and ignored lists read for all members at once, one verdict shared by the members
whose server-default rules cannot tell them apart; what each user is notified of, through a
whole in-process fedserver's client API."""

from __future__ import annotations

from typing import Any

from tests.test_daily_use import DailyUseTestCase, q


class ManyMembersTests(DailyUseTestCase):
    async def _notified(self, a: Any, token: str) -> dict[str, bool]:
        """``{event_id: highlight}`` of the user's notifications, once evaluations are stored."""
        await a.svc.push.notifications.flush()
        notes = await a.ok("GET", "/notifications", token=token)
        return {n["event"]["event_id"]: any(t == {"set_tweak": "highlight"} or t == {"set_tweak": "highlight", "value": True}
                                            for t in n["actions"]) for n in notes["notifications"]}

    async def test_custom_rules_ignores_mentions_and_rule_changes(self):
        """Erin joins a room of Alice, Bob, Carol and Dave: only Bob, whose own rule notifies
        on member events, is notified. Erin's encrypted event (no body) notifies Alice, Bob
        and Dave but not Carol, who ignores Erin, nor Erin herself. With Dave in its
        m.mentions only Dave is highlighted. Once Dave adds a rule silencing encrypted
        events, the next one does not notify him (what was known of his rules is dropped),
        and still notifies Alice."""
        a = await self.server()
        alice, at = await a.register("alice", "Alice")
        bob, bt = await a.register("bob")
        carol, ct = await a.register("carol")
        dave, dt = await a.register("dave", "Dave")
        erin, et = await a.register("erin")
        await a.ok("PUT", "/pushrules/global/override/members", {
            "conditions": [{"kind": "event_match", "key": "type", "pattern": "m.room.member"}], "actions": ["notify"],
        }, bt)
        await a.ok("PUT", f"/user/{q(carol)}/account_data/m.ignored_user_list", {"ignored_users": {erin: {}}}, ct)
        room = (await a.ok("POST", "/createRoom", {"preset": "public_chat"}, at))["room_id"]
        for token in (bt, ct, dt):
            await a.ok("POST", f"/rooms/{q(room)}/join", {}, token)
        await a.svc.push.notifications.flush()
        before = {u: set(await self._notified(a, t)) for u, t in ((alice, at), (bob, bt), (carol, ct), (dave, dt))}

        join = (await a.ok("POST", f"/rooms/{q(room)}/join", {}, et))["room_id"]
        self.assertEqual(join, room)
        state = await a.ok("GET", f"/rooms/{q(room)}/state/m.room.member/{q(erin)}", token=at)
        self.assertEqual(state["membership"], "join")
        new = {u: set(await self._notified(a, t)) - before[u] for u, t in ((alice, at), (bob, bt), (carol, ct), (dave, dt))}
        self.assertEqual(len(new[bob]), 1, new)
        self.assertEqual(new[alice] | new[carol] | new[dave], set(), new)

        async def encrypted(txn: str, **extra: Any) -> str:
            content = {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "opaque", "session_id": "s",
                       "device_id": "D", "sender_key": "k", **extra}
            return (await a.ok("PUT", f"/rooms/{q(room)}/send/m.room.encrypted/{txn}", content, et))["event_id"]

        e1 = await encrypted("e1")
        e2 = await encrypted("e2", **{"m.mentions": {"user_ids": [dave]}})
        got = {u: await self._notified(a, t) for u, t in ((alice, at), (bob, bt), (carol, ct), (dave, dt), (erin, et))}
        for user in (alice, bob, dave):
            self.assertIn(e1, got[user], user)
            self.assertFalse(got[user][e1], user)
            self.assertIn(e2, got[user], user)
        self.assertTrue(got[dave][e2])
        self.assertFalse(got[alice][e2])
        self.assertFalse(got[bob][e2])
        self.assertNotIn(e1, got[carol])
        self.assertNotIn(e2, got[carol])
        self.assertEqual(got[erin], {})

        await a.ok("PUT", "/pushrules/global/override/quiet", {
            "conditions": [{"kind": "event_match", "key": "type", "pattern": "m.room.encrypted"}], "actions": [],
        }, dt)
        e3 = await encrypted("e3")
        self.assertNotIn(e3, await self._notified(a, dt))
        self.assertIn(e3, await self._notified(a, at))


class PresenceIntroductionTests(DailyUseTestCase):
    async def _introduced(self, few_online: int) -> None:
        from fedserver.handlers.ephemeral import presence

        self.patch(presence, "FEW_ONLINE", few_online)
        a = await self.server()
        alice, at = await a.register("alice", "Alice")
        carol, ct = await a.register("carol")
        room = (await a.ok("POST", "/createRoom", {"preset": "public_chat"}, at))["room_id"]
        await a.ok("POST", f"/rooms/{q(room)}/join", {}, ct)
        await a.ok("POST", f"/rooms/{q(room)}/leave", {}, ct)
        await a.ok("PUT", f"/presence/{q(alice)}/status", {"presence": "online", "status_msg": "here"}, at)
        await a.ok("PUT", f"/presence/{q(carol)}/status", {"presence": "online", "status_msg": "elsewhere"}, ct)
        handler = a.svc.ephemeral.presence
        await handler.flush()
        sent: list[tuple[str, dict, list]] = []
        self.patch(handler, "_send", lambda edu_type, content, hosts, **kw: sent.append((edu_type, content, hosts)))
        # What a join of a user of another server into the room sets off (on_persisted).
        await handler._introduce(room, "other.example")
        self.assertEqual([(t, [e["user_id"] for e in c["push"]], h) for t, c, h in sent],
                         [("m.presence", [alice], ["other.example"])])
        self.assertEqual(sent[0][1]["push"][0]["status_msg"], "here")

    async def test_few_online_read_one_by_one(self):
        """A server whose user joins a room of ours is told the presence of our online
        users joined to it (Alice), not of those who left it (Carol), when few
        of our users are online (their memberships read one by one)."""
        await self._introduced(20)

    async def test_many_online_read_from_member_list(self):
        """The same when more of our users are online than that bound (the room's member
        list read)."""
        await self._introduced(0)


class JoinedMembersOfServerTests(DailyUseTestCase):
    async def test_count_and_members_of_one_server(self):
        """get_joined_members_of_server gives the room's joined count and the joined members
        whose id ends with ``:server`` with their member event ids: a member who left is
        neither counted nor listed; another server name, a pattern's wildcards, or a name
        one character longer or shorter list nobody (the suffix is compared exactly)."""
        a = await self.server()
        alice, at = await a.register("alice")
        bob, bt = await a.register("bob")
        carol, ct = await a.register("carol")
        room = (await a.ok("POST", "/createRoom", {"preset": "public_chat"}, at))["room_id"]
        await a.ok("POST", f"/rooms/{q(room)}/join", {}, bt)
        await a.ok("POST", f"/rooms/{q(room)}/join", {}, ct)
        await a.ok("POST", f"/rooms/{q(room)}/leave", {}, ct)
        push = a.svc.store.push
        count, members = await push.get_joined_members_of_server(room, a.name)
        self.assertEqual(count, 2)
        member_ids = {}
        for user in (alice, bob):
            state = await a.ok("GET", f"/rooms/{q(room)}/state/m.room.member/{q(user)}", token=at)
            self.assertEqual(state["membership"], "join")
        for user, event_id in members:
            member_ids[user] = event_id
        self.assertEqual(set(member_ids), {alice, bob})
        events = await a.svc.store.get_events(list(member_ids.values()))
        self.assertEqual({e.state_key for e in events.values()}, {alice, bob})
        self.assertEqual({e.content["membership"] for e in events.values()}, {"join"})
        self.assertEqual(await push.get_joined_members_of_server(room, "other.example"), (2, []))
        self.assertEqual(await push.get_joined_members_of_server(room, "%"), (2, []))
        self.assertEqual(await push.get_joined_members_of_server(room, "_" * len(a.name)), (2, []))
        self.assertEqual(await push.get_joined_members_of_server(room, "x" + a.name), (2, []))
        self.assertEqual(await push.get_joined_members_of_server(room, a.name[1:]), (2, []))
        self.assertEqual(await push.get_joined_members_of_server("!unknown:" + a.name, a.name), (0, []))
