"""Command-line tools for operators (console scripts declared in setup.cfg)."""

from __future__ import annotations

import sys
from typing import Any, Awaitable, Callable, Optional, Sequence


def react_main(run: Callable[..., Awaitable[int]], argv: Optional[Sequence[str]], *extra: Any) -> None:
    """Run ``await run(reactor, arguments, *extra)`` under ``task.react`` and exit with
    the status it returns (the console scripts' shared ``main``)."""
    from twisted.internet import defer, task

    arguments = sys.argv[1:] if argv is None else list(argv)

    async def go(reactor: Any) -> None:
        status = await run(reactor, arguments, *extra)
        if status:
            raise SystemExit(status)

    task.react(lambda reactor: defer.ensureDeferred(go(reactor)))
