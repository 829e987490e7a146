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
        data, a streamed member given twice."""
        for bad in (b"[1]", b'"x"', b'{"state": {}}', b'{"state": [1,]}', b'{"a": 1,}', b'{"a" 1}',
                    b'{"state": [1] "b": 2}', b'{"a": NaN}', b'{"a": Infinity}', b"\xff\xfe", b'{"a": 1',
                    b'{"state": [1, 2', b'{"a": 1} x', b'{"state": [], "state": []}', b'{"a": 1e999}'):
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
