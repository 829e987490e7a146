"""GET /_matrix/key/v2/server: our signed server key document (server-server API "Publishing Keys")."""

from __future__ import annotations

import copy
from typing import Any, Iterable

from signedjson.sign import sign_json
from signedjson.types import SigningKey
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from fedserver.config import OldVerifyKey
from fedserver.crypto import key_id, verify_key_base64
from fedserver.http.resource import JsonResource, encode_json

#: Where :class:`ServerKeyResource` is mounted.
SERVER_KEY_PATH = "/_matrix/key/v2/server"

#: Never serve a cached document for longer than this (seconds), whatever the validity.
MAX_CACHE_SECONDS = 3600.0


class ServerKeyDocument:
    """Builds, signs and caches our server key document.

    The spec (keys_server.yaml) asks originating servers not to return responses expiring in
    less than an hour and notaries to cache for half the lifetime; we re-sign once half the
    validity (at most an hour) has passed, so a served document always has at least half of
    ``validity_ms`` left.

    :param server_name: our server name.
    :param signing_key: our current ed25519 signing key.
    :param clock: provides ``seconds()``.
    :param validity_ms: how far in the future ``valid_until_ts`` lies when signing.
    :param old_verify_keys: keys we used to sign with, published with their ``expired_ts``.
    """

    def __init__(
        self,
        server_name: str,
        signing_key: SigningKey,
        clock: IReactorTime,
        validity_ms: int,
        old_verify_keys: Iterable[OldVerifyKey] = (),
    ) -> None:
        self.server_name = server_name
        self.signing_key = signing_key
        self.key_id = key_id(signing_key)
        self._clock = clock
        self._validity_ms = validity_ms
        self._old = {k.key_id: {"key": k.key, "expired_ts": k.expired_ts} for k in old_verify_keys if k.key_id != self.key_id}
        self._refresh_after_s = min(validity_ms / 2000.0, MAX_CACHE_SECONDS)
        self._cached: bytes | None = None
        self._cached_doc: dict[str, Any] = {}
        self._cached_at = 0.0

    def build(self) -> dict[str, Any]:
        """:returns: a freshly signed key document (a dict)."""
        now_ms = int(self._clock.seconds() * 1000)
        doc = {
            "server_name": self.server_name,
            "verify_keys": {self.key_id: {"key": verify_key_base64(self.signing_key)}},
            "old_verify_keys": self._old,
            "valid_until_ts": now_ms + self._validity_ms,
        }
        return sign_json(doc, self.server_name, self.signing_key)

    def encoded(self) -> bytes:
        """:returns: the signed document as canonical JSON, re-signed when the cache is stale."""
        now = self._clock.seconds()
        if self._cached is None or not (self._cached_at <= now < self._cached_at + self._refresh_after_s):
            self._cached_doc = self.build()
            self._cached = encode_json(self._cached_doc)
            self._cached_at = now
        return self._cached

    def current(self) -> dict[str, Any]:
        """:returns: a copy of the document :meth:`encoded` serves (e.g. for the notary's
            ``own_key_document``); callers may add signatures to it."""
        self.encoded()
        return copy.deepcopy(self._cached_doc)


class ServerKeyResource(JsonResource):
    """Serves :class:`ServerKeyDocument` at its mount point (``/_matrix/key/v2/server``).

    The deprecated ``/_matrix/key/v2/server/{keyId}`` form answers the same document.
    """

    def __init__(self, document: ServerKeyDocument) -> None:
        super().__init__()
        self.document = document
        self.add_route("GET", "", self._get)
        self.add_route("GET", "/{key_id}", self._get)

    def _get(self, request: IRequest, key_id: str | None = None) -> bytes:
        return self.document.encoded()
