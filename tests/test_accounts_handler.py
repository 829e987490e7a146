"""Unit tests for fedserver.handlers.client.accounts: password hashing, identifiers, tokens and UIA sessions."""

from __future__ import annotations

import hashlib

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from fedserver.handlers.client.accounts import (
    InteractiveAuth,
    InteractiveAuthRequired,
    PasswordHasher,
    hash_token,
    is_valid_localpart,
    new_access_token,
    new_device_id,
    split_user_id,
)
from fedserver.errors import MatrixError, forbidden


class PasswordHasherTests(unittest.TestCase):
    """scrypt hashes: format, salt, verification, malformed input."""

    def test_default_parameters(self):
        """The default is scrypt N=2**14, r=8, p=1, 16-byte salt, 32-byte key, and verifies."""
        hasher = PasswordHasher()
        stored = hasher.hash_sync("pässword")
        self.assertRegex(stored, r"^\$scrypt\$ln=14,r=8,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$")
        self.assertTrue(hasher.verify_sync("pässword", stored))
        self.assertFalse(hasher.verify_sync("password", stored))

    def test_salted(self):
        """The same password hashes differently each time."""
        hasher = PasswordHasher(log_n=4)
        self.assertNotEqual(hasher.hash_sync("x"), hasher.hash_sync("x"))

    def test_old_parameters_still_verify(self):
        """A hash made with other parameters verifies with a hasher configured differently."""
        old = PasswordHasher(log_n=4, r=2).hash_sync("pw")
        self.assertTrue(PasswordHasher(log_n=5).verify_sync("pw", old))

    def test_malformed_hashes_never_match(self):
        """None, garbage, wrong scheme, absurd parameters or bad base64 never verify."""
        hasher = PasswordHasher(log_n=4)
        good = hasher.hash_sync("pw")
        for bad in (None, "", "pw", "$bcrypt$x$y$z", good.replace("ln=4", "ln=40"), good[:-3] + "!!!", good.replace("p=1", "p=x")):
            self.assertFalse(hasher.verify_sync("pw", bad), bad)

    def test_bad_parameters_refused(self):
        """Out-of-range KDF parameters are refused at construction."""
        self.assertRaises(ValueError, PasswordHasher, log_n=0)
        self.assertRaises(ValueError, PasswordHasher, r=100)

    async def test_runs_in_thread_pool(self):
        """With a reactor, hash and verify run in its thread pool and fire Deferreds."""
        hasher = PasswordHasher(reactor, log_n=4)
        d = hasher.hash("pw")
        self.assertIsInstance(d, defer.Deferred)
        stored = await d
        self.assertTrue(await hasher.verify("pw", stored))
        self.assertFalse(await hasher.verify("nope", stored))
        self.assertFalse(await hasher.verify("pw", None))


class IdentifierTests(unittest.SynchronousTestCase):
    """Localparts, user ids, tokens, device ids."""

    def test_localparts(self):
        """Appendix "User Identifiers": only a-z 0-9 . _ = - / + for new users."""
        for ok in ("a", "alice", "a.b_c=d-e/f+g", "123"):
            self.assertTrue(is_valid_localpart(ok), ok)
        for bad in ("", "A", "a b", "a:b", "é", "a@b", None, 5):
            self.assertFalse(is_valid_localpart(bad), bad)

    def test_split_user_id(self):
        """Well-formed ids split; historical localparts are accepted; over 255 bytes or
        malformed ids (the server name too) give None."""
        self.assertEqual(split_user_id("@a:b.example:8448"), ("a", "b.example:8448"))
        self.assertEqual(split_user_id("@Old!Style:b"), ("Old!Style", "b"))
        for bad in ("a:b", "@a", "@:b", "@a:", "@a b:c", "@a:b c", "@a:b\x00", "@a:b\ud800", "@a:[::1", "@" + "a" * 250 + ":b.example", 5):
            self.assertIsNone(split_user_id(bad), bad)

    def test_tokens(self):
        """Tokens are random and long; stored as hex SHA-256; device ids are 10 letters."""
        t1, t2 = new_access_token(), new_access_token()
        self.assertNotEqual(t1, t2)
        self.assertGreaterEqual(len(t1), 40)
        self.assertEqual(hash_token(t1), hashlib.sha256(t1.encode()).hexdigest())
        self.assertRegex(new_device_id(), r"^[A-Z]{10}$")


class InteractiveAuthTests(unittest.TestCase):
    """UIA sessions: challenges, stages, expiry, bounds."""

    def setUp(self):
        self.clock = Clock()
        self.uia = InteractiveAuth(self.clock, ttl=60, max_sessions=3)
        self.flows = [["a", "b"], ["c"]]

    async def challenge(self, auth, verify=lambda stage, auth: None, user_id=None):
        with self.assertRaises(InteractiveAuthRequired) as cm:
            await self.uia.check(auth, self.flows, verify, user_id=user_id)
        return cm.exception.body

    async def test_multi_stage(self):
        """No auth: flows and a session; completing a, then b, finishes the flow; the
        session is then gone."""
        body = await self.challenge(None)
        self.assertEqual(body["flows"], [{"stages": ["a", "b"]}, {"stages": ["c"]}])
        sid = body["session"]
        body = await self.challenge({"type": "a", "session": sid})
        self.assertEqual((body["session"], body["completed"]), (sid, ["a"]))
        await self.uia.check({"type": "b", "session": sid}, self.flows, lambda s, a: None)
        body = await self.challenge({"type": "c", "session": sid})
        self.assertEqual(body["errcode"], "M_UNKNOWN")

    async def test_failed_stage(self):
        """A stage whose check raises gives 401 with that errcode; a 429 passes through."""
        body = await self.challenge({"type": "c"}, verify=lambda s, a: (_ for _ in ()).throw(forbidden("no")))
        self.assertEqual(body["errcode"], "M_FORBIDDEN")

        def limited(stage, auth):
            raise MatrixError(429, "M_LIMIT_EXCEEDED", "slow down")

        with self.assertRaises(MatrixError):
            await self.uia.check({"type": "c"}, self.flows, limited)

    async def test_expiry_and_user_binding(self):
        """A session expires after its ttl, and cannot be used for another user."""
        sid = (await self.challenge(None, user_id="@a:x"))["session"]
        body = await self.challenge({"type": "c", "session": sid}, user_id="@b:x")
        self.assertNotEqual(body["session"], sid)
        sid = (await self.challenge(None))["session"]
        self.clock.advance(61)
        body = await self.challenge({"type": "c", "session": sid})
        self.assertEqual(body["errcode"], "M_UNKNOWN")

    async def test_bounded(self):
        """At most max_sessions sessions are kept."""
        for _ in range(10):
            await self.challenge(None)
        self.assertLessEqual(len(self.uia._sessions), 3)

    async def test_bad_auth(self):
        """auth that is not an object is 400 M_BAD_JSON."""
        with self.assertRaises(MatrixError) as cm:
            await self.uia.check("x", self.flows, lambda s, a: None)
        self.assertEqual(cm.exception.errcode, "M_BAD_JSON")
