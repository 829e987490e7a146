"""Tests for fedserver.federation.json_stream: incremental parsing of large JSON objects."""

from __future__ import annotations

import json
import random

from twisted.trial.unittest import SynchronousTestCase

from fedserver.federation.json_stream import StreamedJSONError, StreamedObjectParser


def _parse(data: bytes, keys=("state", "auth_chain"), piece: int | None = None, batch_size: int = 3, seed: int = 0):
    rng = random.Random(seed)
    parser = StreamedObjectParser(keys, batch_size=batch_size)
    batches = []
    i = 0
    while i < len(data):
        n = piece or rng.randint(1, 40)
        batches.extend(parser.feed(data[i:i + n]))
        i += n
    last, top = parser.close()
    batches.extend(last)
    return batches, top


class StreamedObjectParserTests(SynchronousTestCase):
    def test_items_come_out_in_batches_whatever_the_pieces(self):
        """Items of the streamed arrays come out in document order, in batches of the
        given size, however the bytes are cut (one byte at a time included); the other
        members are returned whole, streamed ones as None."""
        doc = {
            "auth_chain": [{"a": i} for i in range(4)],
            "event": {"type": "m.room.member", "content": {"s": "é\u2603 \"]},[{"}},
            "members_omitted": True,
            "state": [{"n": i, "f": 1.5, "l": [1, {"x": None}]} for i in range(7)],
            "servers_in_room": ["a.test", "b.test"],
            "count": 12,
        }
        for indent in (None, 2):
            data = json.dumps(doc, ensure_ascii=False, indent=indent).encode()
            for seed, piece in ((0, None), (1, None), (2, 1)):
                batches, top = _parse(data, piece=piece, seed=seed)
                self.assertEqual([len(items) for _, items in batches], [3, 1, 3, 3, 1])
                self.assertEqual([i for k, items in batches if k == "state" for i in items], doc["state"])
                self.assertEqual([i for k, items in batches if k == "auth_chain" for i in items], doc["auth_chain"])
                self.assertEqual(top, {**doc, "state": None, "auth_chain": None})

    def test_empty_object_and_arrays(self):
        """``{}`` and empty streamed arrays parse to nothing streamed."""
        self.assertEqual(_parse(b"{}"), ([], {}))
        self.assertEqual(_parse(b'{"state": [ ], "x": []}'), ([], {"state": None, "x": []}))

    def test_malformed_documents_are_refused(self):
        """Anything but one JSON object with arrays where streamed arrays belong is
        refused with StreamedJSONError: not an object, a streamed member that is not an
        array, trailing commas, missing separators, NaN, bad UTF-8, truncation, trailing
        data, a streamed member given twice, an integer too long to convert (refused by
        parse_json too)."""
        for bad in (b"[1]", b'"x"', b'{"state": {}}', b'{"state": [1,]}', b'{"a": 1,}', b'{"a" 1}',
                    b'{"state": [1] "b": 2}', b'{"a": NaN}', b'{"a": Infinity}', b"\xff\xfe", b'{"a": 1',
                    b'{"state": [1, 2', b'{"a": 1} x', b'{"state": [], "state": []}', b'{"a": 1e999}',
                    b'{"state": [' + b"1" * 5000 + b']}', b'{"a": -' + b"9" * 5000 + b'}'):
            with self.assertRaises(StreamedJSONError, msg=repr(bad)):
                _parse(bad, piece=3)

    def test_a_value_that_never_completes_is_refused(self):
        """An item growing past the pending limit is refused while streaming, not held."""
        from fedserver.federation import json_stream

        self.patch(json_stream, "MAX_PENDING_VALUE", 1000)
        parser = StreamedObjectParser(["state"])
        parser.feed(b'{"state": [{"x": "')
        with self.assertRaises(StreamedJSONError):
            for _ in range(10):
                parser.feed(b"a" * 200)

    def test_strict_json_rules_of_parse_json(self):
        """The rules of ``fedserver.events.canonical.parse_json`` hold in a streamed
        document too, wherever the bytes are cut: duplicate keys (at the top level, in a
        member's value, in a streamed item) and lone surrogates (escaped, in values or
        keys) are refused; escaped surrogate pairs are one character and accepted."""
        bad_docs = (
            b'{"a": 1, "a": 2}',
            b'{"event": {"x": 1, "x": 1}}',
            b'{"state": [{"type": "m", "type": "n"}]}',
            b'{"state": [{"c": {"k": [{"d": 1, "d": 2}]}}]}',
            b'{"a": "\\ud800"}',
            b'{"state": [{"body": "x\\udc00y"}]}',
            b'{"state": [{"\\ud83d": 1}]}',
            b'{"\\udfff": 1}',
        )
        for bad in bad_docs:
            for piece in (1, 3, None):
                with self.assertRaises(StreamedJSONError, msg=(bad, piece)):
                    _parse(bad, piece=piece)
        batches, top = _parse(b'{"state": [{"s": "\\ud83d\\ude00"}], "e": "\\ud83d\\ude00"}', piece=2)
        self.assertEqual(batches, [("state", [{"s": "\U0001F600"}])])
        self.assertEqual(top, {"state": None, "e": "\U0001F600"})

    def test_nesting_limit_counts_from_the_root(self):
        """The nesting limit of parse_json (MAX_DEPTH levels, the root object being one)
        applies to the whole document: a streamed item sits two levels down, another
        member's value one level down."""
        from fedserver.events.canonical import MAX_DEPTH, parse_json

        def nested(levels: int) -> bytes:
            return b"[" * levels + b"]" * levels

        ok_item = b'{"state": [' + nested(MAX_DEPTH - 2) + b"]}"
        too_deep_item = b'{"state": [' + nested(MAX_DEPTH - 1) + b"]}"
        ok_member = b'{"x": ' + nested(MAX_DEPTH - 1) + b"}"
        too_deep_member = b'{"x": ' + nested(MAX_DEPTH) + b"}"
        for doc in (ok_item, ok_member):
            parse_json(doc)  # the whole-document parser agrees
            _parse(doc, piece=7)
        for doc in (too_deep_item, too_deep_member):
            with self.assertRaises(ValueError):
                parse_json(doc)
            with self.assertRaises(StreamedJSONError):
                _parse(doc, piece=7)
