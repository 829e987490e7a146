"""Tests for server-side key backups (/room_keys/*) through the real resources."""

from __future__ import annotations

from tests.e2ee_support import E2eeTestCase, q

ALG = "m.megolm_backup.v1.curve25519-aes-sha2"
ROOM = "!room:elsewhere.test"


def session(fmi: int = 0, fc: int = 0, verified: bool = False, tag: str = "a") -> dict:
    return {"first_message_index": fmi, "forwarded_count": fc, "is_verified": verified,
            "session_data": {"ephemeral": tag, "ciphertext": tag, "mac": tag}}


class KeyBackupTests(E2eeTestCase):
    async def test_versions(self) -> None:
        """No backup: 404 M_NOT_FOUND. Creating one gives version "1", the current one;
        a second is "2"; auth_data can change, the algorithm cannot; deleting works
        twice; numbers are not reused."""
        _, token, _ = await self.login_user("alice")
        code, body = await self.call("GET", "/room_keys/version", token=token)
        self.assertEqual((code, body["errcode"]), (404, "M_NOT_FOUND"))
        code, body = await self.call("POST", "/room_keys/version", {"algorithm": ALG, "auth_data": {"public_key": "k1"}}, token=token)
        self.assertEqual((code, body), (200, {"version": "1"}))
        code, body = await self.call("GET", "/room_keys/version", token=token)
        self.assertEqual(body, {"algorithm": ALG, "auth_data": {"public_key": "k1"}, "count": 0, "etag": "0", "version": "1"})
        code, body = await self.call("POST", "/room_keys/version", {"algorithm": ALG, "auth_data": {"public_key": "k2"}}, token=token)
        self.assertEqual(body, {"version": "2"})
        code, body = await self.call("PUT", "/room_keys/version/2", {"algorithm": ALG, "auth_data": {"public_key": "k2b"}}, token=token)
        self.assertEqual((code, body), (200, {}))
        code, body = await self.call("PUT", "/room_keys/version/2", {"algorithm": "other", "auth_data": {}}, token=token)
        self.assertEqual((code, body["errcode"]), (400, "M_INVALID_PARAM"))
        code, body = await self.call("PUT", "/room_keys/version/2", {"algorithm": ALG, "auth_data": {}, "version": "1"}, token=token)
        self.assertEqual((code, body["errcode"]), (400, "M_INVALID_PARAM"))
        code, body = await self.call("GET", "/room_keys/version/1", token=token)
        self.assertEqual(body["auth_data"], {"public_key": "k1"})
        for _ in range(2):
            code, body = await self.call("DELETE", "/room_keys/version/2", token=token)
            self.assertEqual((code, body), (200, {}))
        code, body = await self.call("GET", "/room_keys/version", token=token)
        self.assertEqual(body["version"], "1")
        code, body = await self.call("DELETE", "/room_keys/version/99", token=token)
        self.assertEqual((code, body["errcode"]), (404, "M_NOT_FOUND"))
        code, body = await self.call("POST", "/room_keys/version", {"algorithm": ALG, "auth_data": {}}, token=token)
        self.assertEqual(body, {"version": "3"})
        code, body = await self.call("POST", "/room_keys/version", {"algorithm": "x", "auth_data": {}}, token=token)
        self.assertEqual((code, body["errcode"]), (400, "M_INVALID_PARAM"))

    async def test_keys_and_etags(self) -> None:
        """Keys go into the current version only (403 M_WRONG_ROOM_KEYS_VERSION with the
        current version otherwise); a worse key does not replace a better one; the etag
        moves when keys change and not otherwise; the three GET and DELETE forms work;
        another user sees none of it."""
        _, token, _ = await self.login_user("alice")
        _, other, _ = await self.login_user("bob")
        await self.call("POST", "/room_keys/version", {"algorithm": ALG, "auth_data": {}}, token=token)
        await self.call("POST", "/room_keys/version", {"algorithm": ALG, "auth_data": {}}, token=token)
        code, body = await self.call("PUT", "/room_keys/keys?version=1", {"rooms": {}}, token=token)
        self.assertEqual((code, body["errcode"], body["current_version"]), (403, "M_WRONG_ROOM_KEYS_VERSION", "2"))
        code, body = await self.call("PUT", "/room_keys/keys?version=2", {"rooms": {ROOM: {"sessions": {"s1": session(5), "s2": session()}}}}, token=token)
        self.assertEqual((code, body), (200, {"etag": "1", "count": 2}))
        # Worse (higher first_message_index, unverified): kept the old one; etag unchanged.
        code, body = await self.call("PUT", f"/room_keys/keys/{q(ROOM)}/s1?version=2", session(9, tag="worse"), token=token)
        self.assertEqual(body, {"etag": "1", "count": 2})
        # Verified beats unverified, whatever the index.
        code, body = await self.call("PUT", f"/room_keys/keys/{q(ROOM)}?version=2", {"sessions": {"s1": session(9, verified=True, tag="verified")}}, token=token)
        self.assertEqual(body, {"etag": "2", "count": 2})
        code, body = await self.call("GET", f"/room_keys/keys/{q(ROOM)}/s1?version=2", token=token)
        self.assertEqual(body["session_data"]["mac"], "verified")
        code, body = await self.call("GET", f"/room_keys/keys/{q(ROOM)}?version=2", token=token)
        self.assertEqual(sorted(body["sessions"]), ["s1", "s2"])
        code, body = await self.call("GET", "/room_keys/keys?version=2", token=token)
        self.assertEqual(list(body["rooms"]), [ROOM])
        code, body = await self.call("GET", f"/room_keys/keys/{q(ROOM)}/nope?version=2", token=token)
        self.assertEqual((code, body["errcode"]), (404, "M_NOT_FOUND"))
        code, body = await self.call("GET", "/room_keys/keys?version=9", token=token)
        self.assertEqual((code, body["errcode"]), (404, "M_NOT_FOUND"))
        code, body = await self.call("GET", "/room_keys/keys?version=2", token=other)
        self.assertEqual((code, body["errcode"]), (404, "M_NOT_FOUND"))
        code, body = await self.call("DELETE", f"/room_keys/keys/{q(ROOM)}/s2?version=2", token=token)
        self.assertEqual(body, {"etag": "3", "count": 1})
        code, body = await self.call("GET", "/room_keys/version/2", token=token)
        self.assertEqual((body["count"], body["etag"]), (1, "3"))
        code, body = await self.call("DELETE", "/room_keys/keys?version=2", token=token)
        self.assertEqual(body, {"etag": "4", "count": 0})

    async def test_malformed_keys_store_nothing(self) -> None:
        """Malformed key data gets 400 M_BAD_JSON and nothing of the request is stored."""
        _, token, _ = await self.login_user("alice")
        await self.call("POST", "/room_keys/version", {"algorithm": ALG, "auth_data": {}}, token=token)
        for bad in (
            {"rooms": {ROOM: {"sessions": {"s1": session(), "s2": {**session(), "is_verified": "yes"}}}}},
            {"rooms": {ROOM: {"sessions": {"s1": {**session(), "first_message_index": -1}}}}},
            {"rooms": {ROOM: {"sessions": {"s1": {**session(), "session_data": "x"}}}}},
            {"rooms": {ROOM: []}},
            {"rooms": []},
        ):
            code, body = await self.call("PUT", "/room_keys/keys?version=1", bad, token=token)
            self.assertEqual((code, body["errcode"]), (400, "M_BAD_JSON"), bad)
        code, body = await self.call("GET", "/room_keys/version", token=token)
        self.assertEqual(body["count"], 0)
        code, body = await self.call("PUT", "/room_keys/keys", {"rooms": {}}, token=token)
        self.assertEqual((code, body["errcode"]), (400, "M_MISSING_PARAM"))
