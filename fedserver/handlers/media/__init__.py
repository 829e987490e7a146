"""The content repository (client-server API "Content repository", server-server API "Content Repository").

- ``common``: media id and server name checks, content types, ``Content-Disposition``.
- ``files``: the media directory: content-addressed files, spool files placed atomically.
- ``upload``: ``POST /upload``, ``POST /create`` + ``PUT /upload``, quotas.
- ``download``: local media, remote media fetched over federation (multipart, with the
  legacy fallback) and cached, the legacy freeze, the purge of the remote cache.
- ``multipart``: ``multipart/mixed`` reading (incremental) and framing.
- ``thumbnails``: Pillow thumbnails, made on demand and cached.
- ``upkeep``: hourly: cached remote media past ``remote_media_lifetime`` purged, files
  no row refers to (left by failed writes) deleted.
- ``preview``: ``/preview_url`` (off unless the operator enables it): fetching with an IP
  blocklist and limits, Open Graph from HTML.
"""
