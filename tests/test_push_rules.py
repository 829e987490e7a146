"""Pure push rule logic (fedserver.push): glob matching, default rules, client edits, evaluation."""

from __future__ import annotations

import re

from twisted.trial import unittest

from fedserver.push.evaluator import (
    MAX_TYPES_REMEMBERED, CompiledRuleset, PushContext, evaluate, evaluate_compiled, is_highlight,
)
from fedserver.push.evaluator import is_notify, lookup, split_path, tweaks
from fedserver.push.glob import glob_matches, glob_matches_words
from fedserver.push.rules import (
    RuleError,
    UserRules,
    build_ruleset,
    copy_room_rules,
    default_rules,
    default_rules_single_out,
    delete_rule,
    find_rule,
    put_rule,
    set_rule_attribute,
)

ALICE = "@alice:example.org"
ROOM = "!room:example.org"


def message(body: str, sender: str = "@bob:example.org", **content) -> dict:
    return {"type": "m.room.message", "sender": sender, "room_id": ROOM, "content": {"msgtype": "m.text", "body": body, **content}}


def _ref(pattern: str, text: str, words: bool) -> bool:
    """A backtracking reference (fine on short strings) to check the linear matcher against."""
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    if words:
        return re.search(r"(?:^|(?<=[^A-Za-z0-9_]))" + body + r"(?=$|[^A-Za-z0-9_])", text, re.I | re.S) is not None
    return re.match("^" + body + "$", text, re.I | re.S) is not None


class GlobTests(unittest.TestCase):
    def test_spec_examples(self):
        """The spec's examples: 'lunc?*' matches 'Lunch plans' and 'LUNCH', not ' lunch'
        or 'lunc'; in content.body 'ex*ple' matches 'An example event.', 'exple' and
        'An exciting triple-whammy'."""
        self.assertTrue(glob_matches("lunc?*", "Lunch plans"))
        self.assertTrue(glob_matches("lunc?*", "LUNCH"))
        self.assertFalse(glob_matches("lunc?*", " lunch"))
        self.assertFalse(glob_matches("lunc?*", "lunc"))
        for body in ("An example event.", "exple", "An exciting triple-whammy"):
            self.assertTrue(glob_matches_words("ex*ple", body), body)
        self.assertFalse(glob_matches_words("ex*ple", "examples"))
        self.assertFalse(glob_matches_words("alice", "malice"))
        self.assertTrue(glob_matches_words("alice", "hi alice!"))

    def test_agrees_with_a_reference_matcher(self):
        """On every short pattern of '*', '?', letters and '-' and many texts, both forms
        answer exactly what a backtracking regular expression answers."""
        import itertools

        alphabet = "a*?-"
        texts = ["".join(p) for n in range(5) for p in itertools.product("aB -", repeat=n)]
        for n in range(5):
            for pat in itertools.product(alphabet, repeat=n):
                pattern = "".join(pat)
                for text in texts:
                    self.assertEqual(glob_matches(pattern, text), _ref(pattern, text, False), (pattern, text))
                    self.assertEqual(glob_matches_words(pattern, text), _ref(pattern, text, True), (pattern, text))

    def test_pathological_pattern_is_linear(self):
        """HOSTILE row 37: '*a*a*a...*b' against 200,000 'a's (catastrophic for a
        backtracking regex) costs one forward scan per segment of the pattern: the
        matcher asks for each segment's next occurrence once, never retrying earlier
        placements."""
        import fedserver.push.glob as glob_module

        calls = []

        class Counting:
            def __init__(self, pattern):
                self.pattern = pattern

            def search(self, *args):
                calls.append("search")
                return self.pattern.search(*args)

            def match(self, *args):
                calls.append("match")
                return self.pattern.match(*args)

        real = glob_module.compile_glob

        def counting_compile(pattern):
            g = real(pattern)
            return glob_module.Glob(tuple((Counting(p), n) for p, n in g.segments), g.leading_star, g.trailing_star)

        self.patch(glob_module, "compile_glob", counting_compile)
        text = "a" * 200_000
        for pattern in ("*a" * 60 + "*b", "a*" * 60 + "b"):
            for fn in (glob_matches, glob_matches_words):
                calls.clear()
                self.assertFalse(fn(pattern, text))
                self.assertLessEqual(len(calls), 62, (fn.__name__, pattern))


class RulesetTests(unittest.TestCase):
    def test_defaults_in_the_order_clients_expect(self):
        """The server-default override and underride rules, in the order matrix-js-sdk
        checks (it warns about each missing or misplaced one), with the user's id and
        localpart filled in."""
        rules = build_ruleset(ALICE, UserRules())
        self.assertEqual(
            [r["rule_id"] for r in rules["override"]],
            [".m.rule.master", ".m.rule.suppress_notices", ".m.rule.invite_for_me", ".m.rule.member_event",
             ".m.rule.is_user_mention", ".m.rule.contains_display_name", ".m.rule.is_room_mention",
             ".m.rule.roomnotif", ".m.rule.tombstone", ".m.rule.reaction", ".m.rule.room.server_acl",
             ".org.matrix.msc3786.rule.room.server_acl", ".m.rule.suppress_edits"],
        )
        self.assertEqual(
            [r["rule_id"] for r in rules["underride"]],
            [".m.rule.call", ".org.matrix.msc3914.rule.room.call", ".m.rule.encrypted_room_one_to_one",
             ".m.rule.room_one_to_one", ".m.rule.message", ".m.rule.encrypted"],
        )
        self.assertEqual(rules["content"][0]["pattern"], "alice")
        invite = find_rule(rules, "override", ".m.rule.invite_for_me")
        self.assertIn({"kind": "event_match", "key": "state_key", "pattern": ALICE}, invite["conditions"])
        self.assertTrue(all(r["default"] for k in rules for r in rules[k]))
        self.assertFalse(find_rule(rules, "override", ".m.rule.master")["enabled"])

    def test_own_rules_placement(self):
        """A new rule goes first among the user's rules of its kind, after the master
        rule and before the server defaults; before/after place it next to another own
        rule (before wins when both are given); a replaced rule keeps its place."""
        ur = UserRules()
        ur = put_rule(ur, ALICE, "override", "one", {"actions": ["notify"], "conditions": []})
        ur = put_rule(ur, ALICE, "override", "two", {"actions": []})
        ur = put_rule(ur, ALICE, "override", "three", {"actions": []}, after="one")
        ur = put_rule(ur, ALICE, "override", "zero", {"actions": []}, before="two", after="three")
        ur = put_rule(ur, ALICE, "override", "one", {"actions": ["dont_notify"]})
        ids = [r["rule_id"] for r in build_ruleset(ALICE, ur)["override"]]
        self.assertEqual(ids[:6], [".m.rule.master", "zero", "two", "one", "three", ".m.rule.suppress_notices"])
        one = find_rule(build_ruleset(ALICE, ur), "override", "one")
        self.assertEqual((one["actions"], one["default"], one["enabled"]), ([], False, True))

    def test_room_rules_copied_for_a_replacement_room(self):
        """After a room upgrade, the user's room rule and override/underride rules matching
        exactly the old room are copied for the new room, each just before its original;
        other rules, and rules the new room already has, are left alone; nothing to copy
        gives None."""
        old, new = "!old:example.org", "!new:example.org"
        ur = UserRules()
        ur = put_rule(ur, ALICE, "room", old, {"actions": ["notify"]})
        ur = put_rule(ur, ALICE, "room", "!other:example.org", {"actions": []})
        ur = put_rule(ur, ALICE, "override", f"mute {old}", {"actions": [], "conditions": [
            {"kind": "event_match", "key": "room_id", "pattern": old},
            {"kind": "event_match", "key": "type", "pattern": "m.room.message"}]})
        ur = put_rule(ur, ALICE, "override", "cake", {"actions": ["notify"], "conditions": [
            {"kind": "event_match", "key": "content.body", "pattern": "cake"}]})
        ur = put_rule(ur, ALICE, "underride", f"{old} wildcard", {"actions": [], "conditions": [
            {"kind": "event_match", "key": "room_id", "pattern": old + "*"}]})
        copied = copy_room_rules(ur, old, new)
        self.assertIsNotNone(copied)
        self.assertEqual([r["rule_id"] for r in copied.own["room"]], ["!other:example.org", new, old])
        self.assertEqual(find_rule(build_ruleset(ALICE, copied), "room", new)["actions"], ["notify"])
        override_ids = [r["rule_id"] for r in copied.own["override"]]
        self.assertEqual(override_ids, ["cake", f"mute {new}", f"mute {old}"])
        mute = find_rule(build_ruleset(ALICE, copied), "override", f"mute {new}")
        self.assertEqual(mute["conditions"][0]["pattern"], new)
        self.assertEqual(mute["conditions"][1]["pattern"], "m.room.message")
        self.assertEqual([r["rule_id"] for r in copied.own["underride"]], [f"{old} wildcard"])  # not an exact match
        self.assertEqual(find_rule(build_ruleset(ALICE, ur), "override", f"mute {old}")["conditions"][0]["pattern"], old)
        self.assertIsNone(copy_room_rules(copied, old, new))  # already there: nothing more
        self.assertIsNone(copy_room_rules(UserRules(), old, new))

    def test_bad_requests(self):
        """Reserved ids, slashes, unknown kinds and actions, missing actions or pattern,
        malformed conditions, and anchors that do not exist are refused, each with its
        status and errcode; the user's rules are unchanged."""
        ur = put_rule(UserRules(), ALICE, "override", "keep", {"actions": []})
        cases = [
            (("override", ".mine", {"actions": []}), {}, (400, "M_INVALID_PARAM")),
            (("override", "a/b", {"actions": []}), {}, (400, "M_INVALID_PARAM")),
            (("bogus", "x", {"actions": []}), {}, (400, "M_INVALID_PARAM")),
            (("override", "x", {}), {}, (400, "M_MISSING_PARAM")),
            (("override", "x", {"actions": ["explode"]}), {}, (400, "M_INVALID_PARAM")),
            (("content", "x", {"actions": []}), {}, (400, "M_MISSING_PARAM")),
            (("room", "notaroom", {"actions": []}), {}, (400, "M_INVALID_PARAM")),
            (("override", "x", {"actions": [], "conditions": [{"kind": "room_member_count", "is": "lots"}]}), {}, (400, "M_INVALID_PARAM")),
            (("override", "x", {"actions": [], "conditions": [{"kind": "event_property_is", "key": "a", "value": [1]}]}), {}, (400, "M_INVALID_PARAM")),
            (("override", "x", {"actions": []}), {"before": "nope"}, (400, "M_UNKNOWN")),
            (("override", "x", {"actions": []}), {"after": ".m.rule.master"}, (400, "M_UNKNOWN")),
        ]
        for args, kw, expected in cases:
            with self.assertRaises(RuleError) as cm:
                put_rule(ur, ALICE, *args, **kw)
            self.assertEqual((cm.exception.status, cm.exception.errcode), expected, args)
        self.assertEqual([r["rule_id"] for r in ur.own["override"]], ["keep"])

    def test_delete_and_attributes(self):
        """Own rules can be deleted (404 when unknown, 400 for a server default);
        enabled and actions can be set on own and on default rules (404 when unknown)."""
        ur = put_rule(UserRules(), ALICE, "sender", "@spam:example.org", {"actions": []})
        with self.assertRaises(RuleError) as cm:
            delete_rule(ur, "sender", "@other:example.org")
        self.assertEqual(cm.exception.status, 404)
        with self.assertRaises(RuleError) as cm:
            delete_rule(ur, "override", ".m.rule.master")
        self.assertEqual(cm.exception.status, 400)
        ur2 = set_rule_attribute(ur, ALICE, "override", ".m.rule.master", "enabled", True)
        ur2 = set_rule_attribute(ur2, ALICE, "underride", ".m.rule.message", "actions", ["notify", {"set_tweak": "sound", "value": "x"}])
        ur2 = set_rule_attribute(ur2, ALICE, "sender", "@spam:example.org", "enabled", False)
        rules = build_ruleset(ALICE, ur2)
        self.assertTrue(find_rule(rules, "override", ".m.rule.master")["enabled"])
        self.assertEqual(find_rule(rules, "underride", ".m.rule.message")["actions"][1]["value"], "x")
        self.assertFalse(find_rule(rules, "sender", "@spam:example.org")["enabled"])
        with self.assertRaises(RuleError) as cm:
            set_rule_attribute(ur, ALICE, "override", ".m.rule.nonsense", "enabled", True)
        self.assertEqual(cm.exception.status, 404)
        with self.assertRaises(RuleError):
            set_rule_attribute(ur, ALICE, "override", ".m.rule.master", "enabled", "yes")
        self.assertEqual(delete_rule(ur, "sender", "@spam:example.org").count(), 0)
        # Stored and loaded back, the edits survive.
        self.assertEqual(build_ruleset(ALICE, UserRules.from_json(ur2.to_json())), rules)


class EvaluationTests(unittest.TestCase):
    def setUp(self):
        self.rules = build_ruleset(ALICE, UserRules())
        self.ctx = PushContext(ALICE, display_name="Alice Liddell", member_count=5, sender_level=0)

    def actions(self, event, ctx=None, rules=None):
        got = evaluate(rules or self.rules, event, ctx or self.ctx)
        # Every verdict here is also the compiled ruleset's.
        self.assertEqual(evaluate_compiled(CompiledRuleset(rules or self.rules), event, ctx or self.ctx), got)
        return got

    def test_compiled_ruleset_agrees(self):
        """A CompiledRuleset gives the same actions as evaluate for every event, context
        and ruleset tried: server defaults, a type condition with wildcards, one that
        differs only in case (type patterns match case-insensitively, "M.ROOM.MESSAGE" and
        a Kelvin sign too), rules disabled and enabled, events of any type (a missing or
        non-string type included); its memory of event types stays bounded."""
        def rule(conds, rule_id="r", kind="override", enabled=None, base=None):
            ur = put_rule(base or UserRules(), ALICE, kind, rule_id, {"actions": ["notify", {"set_tweak": "x"}], "conditions": conds})
            if enabled is not None:
                ur = set_rule_attribute(ur, ALICE, kind, rule_id, "enabled", enabled)
            return ur
        rulesets = [
            UserRules(),
            rule([{"kind": "event_match", "key": "type", "pattern": "m.room.*"}]),
            rule([{"kind": "event_match", "key": "type", "pattern": "M.ROOM.MESSAGE"}], kind="underride"),
            rule([{"kind": "event_match", "key": "type", "pattern": "o?g.\u212a"},
                  {"kind": "event_match", "key": "content.body", "pattern": "*"}]),
            rule([{"kind": "event_match", "key": "type", "pattern": "m.room.message"}], enabled=False),
            rule([{"kind": "event_match", "key": "type", "pattern": "m.reaction"}, {"kind": "mystery"}]),
            set_rule_attribute(UserRules(), ALICE, "override", ".m.rule.master", "enabled", True),
            set_rule_attribute(UserRules(), ALICE, "override", ".m.rule.reaction", "enabled", False),
            set_rule_attribute(UserRules(), ALICE, "underride", ".m.rule.message", "enabled", False),
            put_rule(UserRules(), ALICE, "content", "cake", {"pattern": "cake", "actions": ["notify"]}),
        ]
        events = [
            message("hello"), message("hi Alice"), message("cake", msgtype="m.notice"),
            message("alice @room", **{"m.mentions": {}}), message("Alice Liddell @room"),
            message("x", **{"m.mentions": {"user_ids": [ALICE], "room": True}}),
            message("* fixed", **{"m.relates_to": {"rel_type": "m.replace", "event_id": "$x"}}),
            {"type": "M.Room.Message", "sender": "@bob:x", "content": {"body": "x"}},
            {"type": "org.k", "sender": "@bob:x", "content": {"body": "k"}},
            {"type": "m.reaction", "sender": "@bob:x", "content": {}},
            {"type": "m.room.member", "state_key": ALICE, "sender": "@bob:x", "content": {"membership": "invite"}},
            {"type": "m.room.encrypted", "sender": "@bob:x", "content": {}},
            {"type": "m.room.tombstone", "state_key": "", "sender": "@bob:x", "content": {}},
            {"type": "m.call.invite", "sender": "@bob:x", "content": {"call_id": "c"}},
            {"sender": "@bob:x", "content": {"body": "no type"}},
            {"type": 3, "sender": "@bob:x", "content": {"body": "number"}},
        ]
        contexts = [self.ctx, PushContext(ALICE, member_count=2), PushContext(ALICE, sender_level=100)]
        matched = set()
        for ur in rulesets:
            ruleset = build_ruleset(ALICE, ur)
            compiled = CompiledRuleset(ruleset)
            for event in events:
                for ctx in contexts:
                    want = evaluate(ruleset, event, ctx)
                    self.assertEqual(evaluate_compiled(compiled, event, ctx), want, (ur, event, ctx))
                    if want and {"set_tweak": "x"} in want:
                        matched.add(event.get("type"))
        # the user rules above did match (case-insensitively, Kelvin sign included)
        self.assertTrue({"m.room.message", "M.Room.Message", "org.k"} <= matched, matched)
        compiled = CompiledRuleset(self.rules)
        for i in range(MAX_TYPES_REMEMBERED * 2):
            compiled.candidates(f"t{i}")
        self.assertLessEqual(len(compiled._by_type), MAX_TYPES_REMEMBERED)
        # disabled and ruled-out rules are left out
        ids = [c[1]["rule_id"] for c in compiled.candidates("m.room.message")]
        self.assertNotIn(".m.rule.master", ids)
        self.assertNotIn(".m.rule.member_event", ids)
        self.assertIn(".m.rule.message", ids)

    def test_default_rules_decide(self):
        """A message notifies without highlight; a notice and a reaction do not notify; a
        message in a two-member room also plays a sound; the user's own events never
        notify; an invite for the user notifies."""
        self.assertTrue(is_notify(self.actions(message("hello"))))
        self.assertFalse(is_highlight(self.actions(message("hello"))))
        self.assertFalse(is_notify(self.actions(message("hi", msgtype="m.notice"))))
        self.assertFalse(is_notify(self.actions({"type": "m.reaction", "sender": "@bob:x", "content": {}})))
        dm = self.actions(message("hello"), PushContext(ALICE, member_count=2))
        self.assertEqual(tweaks(dm), {"sound": "default"})
        self.assertIsNone(self.actions(message("hello", sender=ALICE)))
        invite = {"type": "m.room.member", "state_key": ALICE, "sender": "@bob:x", "content": {"membership": "invite"}}
        self.assertTrue(is_notify(self.actions(invite)))
        other_member = {"type": "m.room.member", "state_key": "@carol:x", "sender": "@bob:x", "content": {"membership": "join"}}
        self.assertFalse(is_notify(self.actions(other_member)))

    def test_mentions(self):
        """m.mentions.user_ids with the user highlights; @room highlights only when the
        sender's power reaches notifications.room; without m.mentions the legacy rules
        match the display name and the localpart at word boundaries, with m.mentions
        they do not."""
        mentioned = message("hey", **{"m.mentions": {"user_ids": [ALICE]}})
        self.assertTrue(is_highlight(self.actions(mentioned)))
        room = message("all", **{"m.mentions": {"room": True}})
        self.assertFalse(is_highlight(self.actions(room)))
        mod = PushContext(ALICE, sender_level=50, notification_levels={"room": 50})
        self.assertTrue(is_highlight(self.actions(room, mod)))
        self.assertTrue(is_highlight(self.actions(message("@room lunch"), mod)))
        self.assertTrue(is_highlight(self.actions(message("ask alice Liddell?"))))
        self.assertTrue(is_highlight(self.actions(message("ALICE: hi"))))
        self.assertFalse(is_highlight(self.actions(message("malice"))))
        self.assertFalse(is_highlight(self.actions(message("alice", **{"m.mentions": {}}))))

    def test_condition_kinds(self):
        """event_property_is does not cast types; event_property_contains needs an array;
        event_match needs a string (even for '*'); escaped dots in keys address
        properties with dots; unknown condition kinds never match."""
        ev = {"type": "x.t", "sender": "@bob:x", "content": {"m.federate": True, "n": 1, "list": ["a", 1], "s": "1"}}

        def rule(*conds):
            ur = put_rule(UserRules(), ALICE, "override", "r", {"actions": ["notify"], "conditions": list(conds)})
            return build_ruleset(ALICE, ur)

        self.assertTrue(is_notify(self.actions(ev, rules=rule({"kind": "event_property_is", "key": "content.m\\.federate", "value": True}))))
        self.assertFalse(is_notify(self.actions(ev, rules=rule({"kind": "event_property_is", "key": "content.n", "value": True}))))
        self.assertFalse(is_notify(self.actions(ev, rules=rule({"kind": "event_property_is", "key": "content.s", "value": 1}))))
        self.assertTrue(is_notify(self.actions(ev, rules=rule({"kind": "event_property_contains", "key": "content.list", "value": 1}))))
        self.assertFalse(is_notify(self.actions(ev, rules=rule({"kind": "event_property_contains", "key": "content.s", "value": "1"}))))
        self.assertFalse(is_notify(self.actions(ev, rules=rule({"kind": "event_match", "key": "content.n", "pattern": "*"}))))
        self.assertTrue(is_notify(self.actions(ev, rules=rule({"kind": "event_match", "key": "type", "pattern": "X.?"}))))
        self.assertFalse(is_notify(self.actions(ev, rules=rule({"kind": "mystery"}))))
        self.assertTrue(is_notify(self.actions(ev, rules=rule({"kind": "room_member_count", "is": ">=5"}))))
        self.assertFalse(is_notify(self.actions(ev, rules=rule({"kind": "room_member_count", "is": "<5"}))))
        self.assertEqual(split_path("content.m\\.relates_to.a\\\\b\\x"), ["content", "m.relates_to", "a\\b\\x"])
        self.assertEqual(lookup({"a": {"b.c": 3}}, "a.b\\.c"), 3)

    def test_single_out_shares_the_verdict(self):
        """For an event without a body, the server-default rules decide the same for every
        user that default_rules_single_out does not name (the invitee, the mentioned, the
        sender are named), whatever their name or display name; events with a body name
        everyone (None)."""
        users = [f"@u{i}:example.org" for i in range(4)] + [ALICE, "@bob:x", "@carol:x", "@dave:other.org"]
        names = [None, "Alice Liddell", "carol", "u1", "@room"]
        events = [
            {"type": "m.room.member", "state_key": "@carol:x", "sender": "@bob:x", "content": {"membership": "join"}},
            {"type": "m.room.member", "state_key": ALICE, "sender": "@bob:x", "content": {"membership": "invite"}},
            {"type": "m.room.encrypted", "sender": "@bob:x", "content": {"algorithm": "m.megolm.v1.aes-sha2"}},
            {"type": "m.room.encrypted", "sender": "@bob:x",
             "content": {"algorithm": "x", "m.mentions": {"user_ids": [ALICE, 3], "room": True}}},
            {"type": "m.reaction", "sender": "@bob:x", "content": {}},
            {"type": "m.room.tombstone", "state_key": "", "sender": "@bob:x", "content": {"replacement_room": "!r:x"}},
            {"type": "m.room.server_acl", "state_key": "", "sender": "@bob:x", "content": {}},
            {"type": "m.call.invite", "sender": "@bob:x", "content": {"call_id": "c"}},
            {"type": "org.example", "sender": "@bob:x", "content": "not an object"},
        ]
        for event in events:
            named = default_rules_single_out(event)
            self.assertIsNotNone(named, event)
            self.assertIn(event["sender"], named)
            for count in (2, 5):
                for level in (0, 100):
                    verdicts = set()
                    for user in users:
                        if user in named:
                            continue
                        for name in names:
                            ctx = PushContext(user, display_name=name, member_count=count, sender_level=level,
                                              notification_levels={"room": 50})
                            got = evaluate(build_ruleset(user, UserRules()), event, ctx)
                            verdicts.add(repr(got))
                    self.assertEqual(len(verdicts), 1, (event, count, level, verdicts))
        invite = events[1]
        self.assertIn(ALICE, default_rules_single_out(invite))
        self.assertTrue(is_notify(evaluate(build_ruleset(ALICE, UserRules()), invite, self.ctx)))
        self.assertEqual(default_rules_single_out(events[3]), frozenset({"@bob:x", ALICE}))
        self.assertIsNone(default_rules_single_out(message("hello")))
        self.assertIsNone(default_rules_single_out({"type": "x", "sender": "@bob:x", "content": {"body": 3}}))

    def test_user_rules_come_first(self):
        """A user's room rule silencing a room beats the default message rule; the master
        rule, once enabled, silences everything; a disabled rule is skipped."""
        ur = put_rule(UserRules(), ALICE, "room", ROOM, {"actions": []})
        self.assertFalse(is_notify(self.actions(message("hi"), rules=build_ruleset(ALICE, ur))))
        off = set_rule_attribute(ur, ALICE, "room", ROOM, "enabled", False)
        self.assertTrue(is_notify(self.actions(message("hi"), rules=build_ruleset(ALICE, off))))
        master = set_rule_attribute(UserRules(), ALICE, "override", ".m.rule.master", "enabled", True)
        self.assertEqual(self.actions(message("hey", **{"m.mentions": {"user_ids": [ALICE]}}), rules=build_ruleset(ALICE, master)), [])
        content = put_rule(UserRules(), ALICE, "content", "cake", {"pattern": "cake*lie", "actions": ["notify", {"set_tweak": "highlight", "value": False}]})
        acts = self.actions(message("the cake is a lie"), rules=build_ruleset(ALICE, content))
        self.assertTrue(is_notify(acts))
        self.assertFalse(is_highlight(acts))
