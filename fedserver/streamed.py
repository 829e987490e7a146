"""A JSON object answered piece by piece: a neutral type handlers return and the HTTP layer writes.

A handler whose answer holds a very large array (the state and auth chain of a
``send_join`` into a room of 100,000 members, tens of megabytes) returns a
:class:`StreamedJSON` instead of a dict: its small members are known at once, each large
array is produced chunk by chunk (read from storage, turned into PDUs, encoded and
written), so the first bytes leave at once, the receiver works on them while the rest is
read, and neither side holds the whole answer in memory.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Callable, Mapping

#: Produces an array's items, a list at a time.
Chunks = Callable[[], AsyncIterator[list[Any]]]


class StreamedJSON:
    """A JSON object: ``members`` as they are, plus arrays produced by ``arrays``.

    :param members: the members known at once.
    :param arrays: ``{name: chunks}``: calling ``chunks()`` gives an async iterator of lists,
        whose concatenation is the array. Each is called once.

    The HTTP layer writes members in sorted order (as canonical JSON orders them). An
    error raised by a chunk producer before anything is written becomes the request's
    error answer; after the status has gone out it can only cut the connection, which the
    receiver sees as a truncated body (and tries elsewhere).
    """

    __slots__ = ("members", "arrays")

    def __init__(self, members: Mapping[str, Any], arrays: Mapping[str, Chunks]) -> None:
        overlap = set(members) & set(arrays)
        if overlap:
            raise ValueError(f"members given twice: {sorted(overlap)}")
        self.members = dict(members)
        self.arrays = dict(arrays)

    async def collect(self) -> dict[str, Any]:
        """The whole object, every array read (for callers that need a dict, e.g. the v1
        ``send_join`` answer, or tests)."""
        out = dict(self.members)
        for name, chunks in self.arrays.items():
            items: list[Any] = []
            async for chunk in chunks():
                items.extend(chunk)
            out[name] = items
        return out
