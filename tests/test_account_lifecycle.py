"""Account deactivation, password changes and what hangs on a device (pushers), through the
client API of whole fedservers started in-process (two federating over loopback TLS where
another server's room matters), and matrix-nio for what another user sees."""

from __future__ import annotations

from typing import Any

from tests.test_client_api_nio import run_asyncio_in_thread
from tests.test_daily_use import Client, DailyUseTestCase, q

PUSHER = {"kind": "http", "app_id": "org.example.app", "app_display_name": "App", "device_display_name": "Phone",
          "lang": "en", "data": {"url": "https://push.example.org/_matrix/push/v1/notify"}}


class LifecycleCase(DailyUseTestCase):
    async def login(self, a: Client, localpart: str, device_id: str) -> str:
        answer = await a.ok("POST", "/login", {"type": "m.login.password", "password": "pw-" + localpart,
                                               "identifier": {"type": "m.id.user", "user": localpart},
                                               "device_id": device_id})
        return answer["access_token"]

    async def pushkeys(self, a: Client, token: str) -> list[str]:
        return sorted(p["pushkey"] for p in (await a.ok("GET", "/pushers", token=token))["pushers"])

    def password_auth(self, session: str, user_id: str, password: str) -> dict:
        return {"type": "m.login.password", "session": session, "password": password,
                "identifier": {"type": "m.id.user", "user": user_id}}


class PusherLifecycleTests(LifecycleCase):
    async def test_pushers_go_with_their_device(self):
        """A pusher set from a device is deleted when that device logs out, or is deleted
        with DELETE /devices (after UIA); pushers of the user's other devices stay."""
        a = await self.server()
        alice, t1 = await a.register("alice")
        t2 = await self.login(a, "alice", "PHONE")
        t3 = await self.login(a, "alice", "TABLET")
        await a.ok("POST", "/pushers/set", {**PUSHER, "pushkey": "from-register"}, t1)
        await a.ok("POST", "/pushers/set", {**PUSHER, "pushkey": "from-phone"}, t2)
        await a.ok("POST", "/pushers/set", {**PUSHER, "pushkey": "from-tablet"}, t3)
        self.assertEqual(await self.pushkeys(a, t1), ["from-phone", "from-register", "from-tablet"])
        await a.ok("POST", "/logout", {}, t2)
        self.assertEqual(await self.pushkeys(a, t1), ["from-register", "from-tablet"])
        code, challenge = await a.call("DELETE", "/devices/TABLET", {}, t1)
        self.assertEqual(code, 401, challenge)
        await a.ok("DELETE", "/devices/TABLET",
                   {"auth": self.password_auth(challenge["session"], alice, "pw-alice")}, t1)
        self.assertEqual(await self.pushkeys(a, t1), ["from-register"])

    async def test_password_change_logs_out_other_devices_and_their_pushers(self):
        """POST /account/password asks for the current password (UIA); by default every
        other device is logged out and its pushers go, the requesting token keeps working
        with its pusher; with logout_devices false the other devices stay. The new
        password logs in, the old one no longer does."""
        a = await self.server()
        alice, t1 = await a.register("alice")
        t2 = await self.login(a, "alice", "PHONE")
        await a.ok("POST", "/pushers/set", {**PUSHER, "pushkey": "mine"}, t1)
        await a.ok("POST", "/pushers/set", {**PUSHER, "pushkey": "phone"}, t2)
        code, challenge = await a.call("POST", "/account/password", {"new_password": "second"}, t1)
        self.assertEqual(code, 401)
        self.assertEqual(challenge["flows"], [{"stages": ["m.login.password"]}])
        wrong = await a.call("POST", "/account/password", {
            "new_password": "second", "auth": self.password_auth(challenge["session"], alice, "nope")}, t1)
        self.assertEqual((wrong[0], wrong[1].get("errcode")), (401, "M_FORBIDDEN"))
        await a.ok("POST", "/account/password", {
            "new_password": "second", "auth": self.password_auth(wrong[1]["session"], alice, "pw-alice")}, t1)
        self.assertError(await a.call("GET", "/account/whoami", token=t2), 401, "M_UNKNOWN_TOKEN")
        self.assertEqual((await a.ok("GET", "/account/whoami", token=t1))["user_id"], alice)
        self.assertEqual(await self.pushkeys(a, t1), ["mine"])
        old = await a.call("POST", "/login", {"type": "m.login.password", "password": "pw-alice",
                                              "identifier": {"type": "m.id.user", "user": "alice"}})
        self.assertEqual((old[0], old[1]["errcode"]), (403, "M_FORBIDDEN"))
        t3 = (await a.ok("POST", "/login", {"type": "m.login.password", "password": "second",
                                            "identifier": {"type": "m.id.user", "user": "alice"}}))["access_token"]
        await a.ok("POST", "/pushers/set", {**PUSHER, "pushkey": "new-device"}, t3)
        code, challenge = await a.call("POST", "/account/password", {"new_password": "third", "logout_devices": False}, t1)
        await a.ok("POST", "/account/password", {
            "new_password": "third", "logout_devices": False,
            "auth": self.password_auth(challenge["session"], alice, "second")}, t1)
        self.assertEqual((await a.ok("GET", "/account/whoami", token=t3))["user_id"], alice)
        self.assertEqual(await self.pushkeys(a, t1), ["mine", "new-device"])


class DeactivationTests(LifecycleCase):
    async def test_deactivate_account(self):
        """POST /account/deactivate: 401 with the password flow until the password is
        given (a wrong one is refused, erase must be a boolean); then 200
        {"id_server_unbind_result": "success"}, and: every token of the user is refused,
        logging in answers 403 M_USER_DEACTIVATED, the user has left their rooms and
        rejected their invite (Bob sees the leaves), their devices (and so their devices'
        keys), pushers, profile and user directory entry are gone; with erase their
        account data too; nothing is left pending."""
        a = await self.server()
        alice, t1 = await a.register("alice", "Alice Liddell")
        t2 = await self.login(a, "alice", "PHONE")
        bob, bt = await a.register("bob")
        r1 = (await a.ok("POST", "/createRoom", {"preset": "public_chat", "name": "one"}, bt))["room_id"]
        r2 = (await a.ok("POST", "/createRoom", {"preset": "public_chat", "name": "two"}, t1))["room_id"]
        await a.ok("POST", f"/rooms/{q(r1)}/join", {}, t1)
        await a.ok("POST", f"/rooms/{q(r2)}/join", {}, bt)
        invited = (await a.ok("POST", "/createRoom", {"invite": [alice]}, bt))["room_id"]
        await a.ok("POST", "/pushers/set", {**PUSHER, "pushkey": "k"}, t2)
        await a.ok("PUT", f"/user/{q(alice)}/account_data/org.example.secret", {"x": 1}, t1)
        await a.svc.user_directory.flush()
        found = await a.ok("POST", "/user_directory/search", {"search_term": "liddell"}, bt)
        self.assertEqual([r["user_id"] for r in found["results"]], [alice])

        code, challenge = await a.call("POST", "/account/deactivate", {}, t1)
        self.assertEqual(code, 401, challenge)
        self.assertEqual(challenge["flows"], [{"stages": ["m.login.password"]}])
        self.assertError(await a.call("POST", "/account/deactivate", {"erase": "yes"}, t1), 400, "M_BAD_JSON")
        wrong = await a.call("POST", "/account/deactivate", {
            "auth": self.password_auth(challenge["session"], alice, "wrong")}, t1)
        self.assertEqual((wrong[0], wrong[1].get("errcode")), (401, "M_FORBIDDEN"))
        self.assertEqual((await a.ok("GET", "/account/whoami", token=t1))["user_id"], alice)
        done = await a.ok("POST", "/account/deactivate", {
            "erase": True, "auth": self.password_auth(wrong[1]["session"], alice, "pw-alice")}, t1)
        self.assertEqual(done, {"id_server_unbind_result": "success"})

        for token in (t1, t2):
            self.assertError(await a.call("GET", "/account/whoami", token=token), 401, "M_UNKNOWN_TOKEN")
        login = await a.call("POST", "/login", {"type": "m.login.password", "password": "pw-alice",
                                                "identifier": {"type": "m.id.user", "user": "alice"}})
        self.assertEqual(login[0], 403, login)
        for room in (r1, r2, invited):
            member = await a.ok("GET", f"/rooms/{q(room)}/state/m.room.member/{q(alice)}", token=bt)
            self.assertEqual(member["membership"], "leave", room)
        store = a.svc.store
        self.assertEqual(await store.push.get_pushers([alice]), [])
        self.assertEqual(await store.accounts.get_devices(alice), [])
        self.assertIsNone(await store.accounts.get_account_data(alice, None, "org.example.secret"))
        profile = await store.accounts.get_profile(alice)
        self.assertFalse(profile and (profile.get("displayname") or profile.get("avatar_url")), profile)
        await a.svc.user_directory.flush()
        found = await a.ok("POST", "/user_directory/search", {"search_term": "alice"}, bt)
        self.assertEqual(found["results"], [])
        self.assertEqual(await store.deactivation.get_pending(), [])
        # Deactivating again (e.g. the admin API after the user) is harmless.
        self.assertEqual(await a.svc.deactivation.deactivate(alice), 0)

    async def test_deactivated_user_leaves_a_room_on_another_server(self):
        """Alice on server A is in a room of server B and holds an invite to another room
        of B; after she deactivates, B's room shows her leave and her invite is rejected
        there, and Bob's matrix-nio client no longer lists her among the room's users."""
        a, b = await self.server(), await self.server()
        alice, at = await a.register("alice")
        bob, bt = await b.register("bob")
        room = (await b.ok("POST", "/createRoom", {"preset": "public_chat", "room_alias_name": "far"}, bt))["room_id"]
        await a.ok("POST", f"/join/{q('#far:' + b.name)}", {}, at)
        other = (await b.ok("POST", "/createRoom", {"invite": [alice]}, bt))["room_id"]

        async def alice_invited():
            return other in (await a.sync(at))["rooms"]["invite"]

        await self.until(alice_invited, "the invite to reach server A")
        code, challenge = await a.call("POST", "/account/deactivate", {}, at)
        await a.ok("POST", "/account/deactivate", {"auth": self.password_auth(challenge["session"], alice, "pw-alice")}, at)

        async def membership(r):
            code, body = await b.call("GET", f"/rooms/{q(r)}/state/m.room.member/{q(alice)}", token=bt)
            return body.get("membership") if code == 200 else None

        async def left_both():
            return await membership(room) == "leave" and await membership(other) == "leave"

        await self.until(left_both, "B to see Alice leave and reject")

        async def scenario() -> Any:
            import nio

            client = nio.AsyncClient(b.base, bob)
            try:
                login = await client.login("pw-bob")
                assert isinstance(login, nio.LoginResponse), login
                synced = await client.sync(full_state=True)
                assert isinstance(synced, nio.SyncResponse), synced
                return sorted(client.rooms[room].users)
            finally:
                await client.close()

        self.assertEqual(await run_asyncio_in_thread(scenario, timeout=60), [bob])

    async def test_deactivation_resumes_after_a_stop(self):
        """A user whose account was shut but who had not left their rooms when the server
        stopped (the deactivation transaction committed, the leaving did not happen) leaves
        them when deactivation resumes at the next start."""
        a = await self.server()
        alice, at = await a.register("alice")
        bob, bt = await a.register("bob")
        room = (await a.ok("POST", "/createRoom", {"preset": "public_chat"}, bt))["room_id"]
        await a.ok("POST", f"/rooms/{q(room)}/join", {}, at)
        # As if the server had stopped right after the commit.
        await a.svc.store.deactivation.deactivate_user(alice)
        self.assertEqual(await a.svc.store.deactivation.get_pending(), [alice])
        member = await a.ok("GET", f"/rooms/{q(room)}/state/m.room.member/{q(alice)}", token=bt)
        self.assertEqual(member["membership"], "join")
        self.assertEqual(await a.svc.deactivation.resume(), 1)
        member = await a.ok("GET", f"/rooms/{q(room)}/state/m.room.member/{q(alice)}", token=bt)
        self.assertEqual(member["membership"], "leave")
        self.assertEqual(await a.svc.store.deactivation.get_pending(), [])
