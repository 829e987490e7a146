"""Tests for fedserver.federation.acl: the m.room.server_acl rules and reading rooms' ACLs."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from fedserver.federation.acl import ServerAcls, glob_matches, server_acl_allows, strip_port
from fedserver.errors import MatrixError
from fedserver.room_versions import V10
from fedserver.storage import PersistEntry
from tests.test_federation_support import StoreTestCase
from tests.test_storage_support import make_event


class GlobTests(SynchronousTestCase):
    """Appendix glob-style matching: ``*`` any run, ``?`` one character, case-insensitive."""

    def test_wildcards(self):
        """``*`` matches zero or more characters and ``?`` exactly one; the rest is literal
        (regex metacharacters included) and the whole name must match."""
        self.assertTrue(glob_matches("*", ""))
        self.assertTrue(glob_matches("*.evil.com", "a.b.evil.com"))
        self.assertFalse(glob_matches("*.evil.com", "evil.com"))
        self.assertTrue(glob_matches("evil?.com", "evil1.com"))
        self.assertFalse(glob_matches("evil?.com", "evil.com"))
        self.assertFalse(glob_matches("evil?.com", "evil12.com"))
        self.assertFalse(glob_matches("evil.com", "evilxcom"))
        self.assertFalse(glob_matches("evil.com", "evil.com.au"))
        self.assertTrue(glob_matches("[a-z]+", "[a-z]+"))
        self.assertFalse(glob_matches("[a-z]+", "abc"))

    def test_case_insensitive(self):
        """Server names compare without regard to letter case."""
        self.assertTrue(glob_matches("EVIL.com", "evil.COM"))

    def test_hostile_globs(self):
        """Non-string globs match nothing; many stars neither blow up nor backtrack for
        long; oversized globs match nothing."""
        self.assertFalse(glob_matches(5, "a"))
        self.assertFalse(glob_matches(None, "a"))
        self.assertFalse(glob_matches("*" * 50 + "b", "a" * 5000))
        self.assertFalse(glob_matches("a" * 2000, "a" * 2000))
        # Would backtrack exponentially as a regex; here it is a plain answer.
        self.assertFalse(glob_matches("*a*a*a*a*a*b", "a" * 255))
        self.assertTrue(glob_matches("*a*a*a*a*a*b", "a" * 254 + "b"))

    def test_agrees_with_a_reference_matcher(self):
        """On random globs and names over a small alphabet the matcher agrees with a
        regex built from the same rules."""
        import random
        import re

        rng = random.Random(7)
        for _ in range(3000):
            glob = "".join(rng.choice("ab*?.") for _ in range(rng.randint(0, 7)))
            text = "".join(rng.choice("abAB.") for _ in range(rng.randint(0, 8)))
            pattern = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob)
            expected = re.fullmatch(pattern, text, re.IGNORECASE | re.DOTALL) is not None
            self.assertEqual(glob_matches(glob, text), expected, (glob, text))

    def test_strip_port(self):
        """Ports are ignored; IPv6 literals keep their brackets."""
        self.assertEqual(strip_port("evil.com:8448"), "evil.com")
        self.assertEqual(strip_port("[::1]:8448"), "[::1]")
        self.assertEqual(strip_port("1.2.3.4"), "1.2.3.4")


class ServerAclAllowsTests(SynchronousTestCase):
    """The five ordered rules of the m.room.server_acl schema."""

    def test_no_acl_allows(self):
        """Rule 1: no ACL event in the room state allows everyone."""
        self.assertTrue(server_acl_allows(None, "anyone.example"))

    def test_ip_literals(self):
        """Rule 2: IP literals are denied only when allow_ip_literals is false (it defaults
        to true when missing or not a boolean), ports ignored."""
        for name in ("1.2.3.4", "1.2.3.4:8448", "[::1]", "[2001:db8::1]:8448"):
            self.assertFalse(server_acl_allows({"allow": ["*"], "allow_ip_literals": False}, name), name)
            self.assertTrue(server_acl_allows({"allow": ["*"]}, name), name)
            self.assertTrue(server_acl_allows({"allow": ["*"], "allow_ip_literals": "no"}, name), name)
        self.assertTrue(server_acl_allows({"allow": ["*"], "allow_ip_literals": False}, "ok.example"))

    def test_deny_before_allow(self):
        """Rule 3 before 4: a server matching both lists is denied; ports and case do not
        matter."""
        acl = {"allow": ["*"], "deny": ["evil.com", "*.evil.com"]}
        for name in ("evil.com", "EVIL.com:8448", "a.evil.com", "a.Evil.com:1"):
            self.assertFalse(server_acl_allows(acl, name), name)
        self.assertTrue(server_acl_allows(acl, "good.com"))
        self.assertTrue(server_acl_allows(acl, "notevil.com"))

    def test_allow_list_and_default_deny(self):
        """Rules 4 and 5: only allowed servers pass; a missing or malformed allow list
        denies everyone; non-string entries are skipped."""
        self.assertTrue(server_acl_allows({"allow": ["good.com"]}, "good.com:8448"))
        self.assertFalse(server_acl_allows({"allow": ["good.com"]}, "other.com"))
        self.assertFalse(server_acl_allows({}, "good.com"))
        self.assertFalse(server_acl_allows({"allow": "*"}, "good.com"))
        self.assertFalse(server_acl_allows({"allow": [5, None]}, "good.com"))
        self.assertTrue(server_acl_allows({"allow": [5, "*"], "deny": [None]}, "good.com"))
        self.assertFalse(server_acl_allows("junk", "good.com"))  # type: ignore[arg-type]


class ServerAclsStoreTests(StoreTestCase):
    """ServerAcls reads the room's current m.room.server_acl from a real SQLite store."""

    async def _room_with_acl(self, store, content):
        room_id = "!acl:a.example"
        await store.store_room(room_id, V10)
        acl = make_event(V10, room_id, "m.room.server_acl", content=content, state_key="")
        await store.persist_events(
            [PersistEntry(event=acl, state_before={}, update_current_state={("m.room.server_acl", ""): acl.event_id})]
        )
        return room_id

    async def test_reads_current_acl(self):
        """A denied server is refused with 403 M_FORBIDDEN by check(); an allowed one
        passes; a room without an ACL (or unknown) allows everyone."""
        store = await self.open_store()
        room_id = await self._room_with_acl(store, {"allow": ["*"], "deny": ["*.evil.example"]})
        acls = ServerAcls(store)
        self.assertTrue(await acls.is_allowed("good.example", room_id))
        self.assertFalse(await acls.is_allowed("x.evil.example:8448", room_id))
        await acls.check("good.example", room_id)
        try:
            await acls.check("x.evil.example", room_id)
        except MatrixError as e:
            self.assertEqual((e.code, e.errcode), (403, "M_FORBIDDEN"))
        else:
            self.fail("a denied server passed check()")
        self.assertTrue(await acls.is_allowed("x.evil.example", "!unknown:a.example"))
        self.assertEqual(
            await acls.denied_rooms("x.evil.example", [room_id, "!unknown:a.example"]), {room_id}
        )
