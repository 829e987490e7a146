"""Media upkeep, hourly and at start: cached remote media past ``remote_media_lifetime`` purged, orphan files reclaimed."""

# Orphans: a file reaches content/ inside the database transaction that records it
# (fedserver.handlers.media.files). If that transaction fails after the link (the disk
# full at commit, the database unavailable), the file stays with no row referring to it.
# Each run lists the files of content/ older than ORPHAN_MIN_AGE_S and deletes, in write
# transactions of ORPHAN_BATCH files, those that no row refers to (the check and the
# delete in one write transaction; the age keeps away from any transaction in progress
# on a database that allows several writers).

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import defer, threads
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from fedserver.background import log_background_failure
from fedserver.handlers.media.files import MediaFiles

log = Logger()

#: How often the upkeep runs (it also runs once at start).
UPKEEP_EVERY_S = 3600.0
#: Files younger than this are never taken for orphans.
ORPHAN_MIN_AGE_S = 3600.0
#: Files checked per write transaction.
ORPHAN_BATCH = 500


class MediaUpkeep:
    """The hourly media upkeep.

    :param store: ``media``.
    :param files: the :class:`MediaFiles`.
    :param reactor: ``seconds``, ``callLater`` and the thread pool (listing the directory).
    :param remote_media_lifetime: seconds a cached remote media is kept after its last
        access (``None``: no purge by age).
    """

    def __init__(self, store: Any, files: MediaFiles, reactor: Any, remote_media_lifetime: Optional[float]) -> None:
        self._store = store
        self._files = files
        self._reactor = reactor
        self._lifetime = remote_media_lifetime
        self._loop: Optional[LoopingCall] = None
        self._running: Optional[defer.Deferred] = None

    def start(self) -> None:
        """Run now, then every :data:`UPKEEP_EVERY_S`."""
        loop = self._loop = LoopingCall(self._tick)
        loop.clock = self._reactor
        loop.start(UPKEEP_EVERY_S, now=True)

    def stop(self) -> defer.Deferred:
        """No more runs; :returns: Deferred firing once a run under way is over."""
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        running = self._running
        return running if running is not None and not running.called else defer.succeed(None)

    def _tick(self) -> defer.Deferred:
        # A failed run never stops the loop (a storage fault quietly: the database logs it).
        d = self._running = defer.ensureDeferred(self.run())
        d.addErrback(log_background_failure, "Media upkeep failed", logger=log)
        return d

    async def run(self) -> dict[str, int]:
        """One run: the purge by age (if configured), then the orphans.

        :returns: ``{"purged": media removed, "purged_bytes": ..., "orphans": files deleted}``.
        """
        now = self._reactor.seconds()
        out = {"purged": 0, "purged_bytes": 0, "orphans": 0}
        if self._lifetime is not None:
            before = int((now - self._lifetime) * 1000)
            out["purged"], out["purged_bytes"] = await self._store.media.purge_remote(before, self._files.delete)
            if out["purged"]:
                log.info("Purged {n} cached remote media unused for {s:.0f} s ({b} bytes freed)",
                         n=out["purged"], s=self._lifetime, b=out["purged_bytes"])
        out["orphans"] = await self.reclaim_orphans(now - ORPHAN_MIN_AGE_S)
        return out

    async def reclaim_orphans(self, older_than: float) -> int:
        """Delete the files of ``content/`` modified before ``older_than`` (seconds) that
        no row refers to.

        :returns: how many were deleted.
        """
        hashes = await threads.deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), self._files.content_hashes, older_than
        )
        deleted = 0
        for i in range(0, len(hashes), ORPHAN_BATCH):
            deleted += await self._store.media.delete_unreferenced(hashes[i:i + ORPHAN_BATCH], self._files.delete)
        if deleted:
            log.info("Deleted {n} media files no row referred to (left by failed writes)", n=deleted)
        return deleted


__all__ = ["MediaUpkeep", "ORPHAN_MIN_AGE_S", "UPKEEP_EVERY_S"]
