"""The notary key endpoints: ``POST /_matrix/key/v2/query`` and ``GET /_matrix/key/v2/query/{serverName}``.

Spec: server-server API "Querying Keys Through Another Server" (keys_query.yaml). We answer
with the key documents we hold for each server, refreshed from the origin through the
keyring when missing or not valid until ``minimum_valid_until_ts``, each also signed by us.
Servers we cannot reach and hold nothing for are simply absent from ``server_keys``.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from fedserver.events.canonical import MAX_SAFE_INTEGER, CanonicalJSONError, parse_json
from fedserver.events.hashing import unpadded_base64
from fedserver.federation.keyring import (
    ANY_KEY,
    Keyring,
    KeyStore,
    is_valid_server_name,
    sign_json_object,
)
from fedserver.errors import bad_json, invalid_param
from fedserver.http.resource import JsonResource, query_int, read_json_object
from fedserver.storage.interface import StorageUnavailableError

log = Logger()

#: Mount point of :class:`NotaryResource`.
NOTARY_PREFIX = "/_matrix/key/v2/query"

#: Most servers one query may ask about.
MAX_QUERY_SERVERS = 100
#: Most key ids one query may name per server.
MAX_KEY_IDS_PER_SERVER = 32
#: Most key documents returned per server (newest ``valid_until_ts`` first).
MAX_DOCUMENTS_PER_SERVER = 10
#: Longest key id we look at.
MAX_KEY_ID_LENGTH = 255

#: How long the fallback own-key document (see :class:`NotaryService`) claims validity.
DEFAULT_OWN_KEY_VALIDITY_MS = 24 * 3600 * 1000

#: ``{server_name: {key_id: minimum_valid_until_ts or None}}``; an empty inner dict means
#: "all keys".
Criteria = dict[str, dict[str, "int | None"]]


class NotaryService:
    """Answers notary key queries (no HTTP here beyond raising :class:`MatrixError`).

    :param clock: an :class:`IReactorTime`; "now" is the default ``minimum_valid_until_ts``.
    :param keyring: used to refresh keys that are missing or not valid long enough.
    :param store: where the keyring keeps the raw key documents
        (``get_server_key_json``).
    :param own_server_name: our server name.
    :param signing_key: our :class:`nacl.signing.SigningKey` carrying ``alg`` and
        ``version`` (as :mod:`signedjson.key` builds them); it signs every document we
        return.
    :param own_key_document: returns our own current key document (as served on
        ``/_matrix/key/v2/server``, already signed by us), or ``None``. Without it a minimal
        document of ``signing_key`` alone is built, valid for 24 hours.
    """

    def __init__(
        self,
        clock: IReactorTime,
        keyring: Keyring,
        store: KeyStore,
        own_server_name: str,
        signing_key: Any,
        own_key_document: Callable[[], "dict[str, Any] | None"] | None = None,
    ) -> None:
        self._clock = clock
        self._keyring = keyring
        self._store = store
        self._own_server_name = own_server_name
        self._signing_key = signing_key
        self._key_id = f"{signing_key.alg}:{signing_key.version}"
        self._own_key_document = own_key_document or self._default_own_key_document

    # -- entry points -------------------------------------------------------------------------

    def query(self, body: Any) -> "defer.Deferred[dict[str, Any]]":
        """``POST /_matrix/key/v2/query``.

        :param body: the parsed request body.
        :returns: Deferred firing with ``{"server_keys": [document, ...]}``.
        :raises MatrixError: (through the Deferred) 400 ``M_BAD_JSON`` if the body is not of
            the spec's shape or asks for too much.
        """
        try:
            criteria = parse_query_body(body)
        except Exception as e:
            return defer.fail(e)
        return defer.ensureDeferred(self._answer(criteria))

    def query_one(
        self, server_name: str, key_id: str | None = None, minimum_valid_until_ts: int | None = None
    ) -> "defer.Deferred[dict[str, Any]]":
        """``GET /_matrix/key/v2/query/{serverName}``.

        :param key_id: a single key id to make sure of, or ``None`` for all keys.
        :param minimum_valid_until_ts: ms timestamp; defaults to now.
        :returns: Deferred firing with ``{"server_keys": [document, ...]}``.
        :raises MatrixError: (through the Deferred) 400 ``M_INVALID_PARAM`` for an invalid
            server name or timestamp.
        """
        if not is_valid_server_name(server_name):
            return defer.fail(invalid_param("serverName", "Invalid server name"))
        if minimum_valid_until_ts is not None and (
            type(minimum_valid_until_ts) is not int or not 0 <= minimum_valid_until_ts <= MAX_SAFE_INTEGER
        ):
            return defer.fail(invalid_param("minimum_valid_until_ts"))
        criteria: Criteria = {server_name: {} if key_id is None else {key_id: minimum_valid_until_ts}}
        return defer.ensureDeferred(self._answer(criteria, minimum_valid_until_ts))

    # -- answering ----------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    async def _answer(self, criteria: Criteria, default_minimum: int | None = None) -> dict[str, Any]:
        now = self._now_ms()
        if default_minimum is None:
            default_minimum = now  # keys_query.yaml: "If not supplied, the current time ... is used."
        needs: dict[str, dict[str, int]] = {}
        for server_name, per in criteria.items():
            if server_name == self._own_server_name:
                continue
            wanted = {k: (default_minimum if m is None else m) for k, m in per.items() if k.startswith("ed25519:")}
            needs[server_name] = wanted or {ANY_KEY: default_minimum}
        if needs:
            await self._keyring.refresh_keys(needs)

        reads = [self._documents_for(server_name) for server_name in criteria]
        results = await defer.DeferredList(reads, consumeErrors=True)
        server_keys: list[dict[str, Any]] = []
        for (ok, docs), server_name in zip(results, criteria):
            if ok:
                server_keys.extend(docs)
            elif docs.check(StorageUnavailableError):
                # Not "no keys": the database could not say (503, already logged).
                docs.raiseException()
            else:
                log.failure("Could not read stored keys of {server}", docs, server=server_name)
        return {"server_keys": server_keys}

    def _documents_for(self, server_name: str) -> "defer.Deferred[list[dict[str, Any]]]":
        if server_name == self._own_server_name:
            doc = self._own_key_document()
            return defer.succeed([doc] if doc is not None else [])
        d = defer.maybeDeferred(self._store.get_server_key_json, server_name)
        d.addCallback(self._sign_documents, server_name)
        return d

    def _sign_documents(self, blobs: list[bytes], server_name: str) -> list[dict[str, Any]]:
        docs = []
        seen = set()
        for blob in blobs or ():
            if blob in seen:
                continue
            seen.add(blob)
            try:
                doc = parse_json(blob)
            except CanonicalJSONError:
                log.warn("Ignoring a stored key document of {server} that is not JSON", server=server_name)
                continue
            if type(doc) is not dict or doc.get("server_name") != server_name:
                continue
            valid = doc.get("valid_until_ts")
            docs.append((valid if type(valid) is int else 0, doc))
        docs.sort(key=lambda vd: vd[0], reverse=True)
        out = []
        for _valid, doc in docs[:MAX_DOCUMENTS_PER_SERVER]:
            # keys_query.yaml: "The receiving (notary) server must sign the keys returned".
            try:
                out.append(sign_json_object(doc, self._own_server_name, self._key_id, self._signing_key))
            except CanonicalJSONError:
                log.warn("Ignoring a stored key document of {server} that cannot be signed", server=server_name)
        return out

    def _default_own_key_document(self) -> dict[str, Any]:
        doc = {
            "server_name": self._own_server_name,
            "valid_until_ts": self._now_ms() + DEFAULT_OWN_KEY_VALIDITY_MS,
            "verify_keys": {self._key_id: {"key": unpadded_base64(self._signing_key.verify_key.encode())}},
            "old_verify_keys": {},
        }
        return sign_json_object(doc, self._own_server_name, self._key_id, self._signing_key)


def parse_query_body(body: Any) -> Criteria:
    """Validate a ``POST /_matrix/key/v2/query`` body (keys_query.yaml).

    :returns: ``{server_name: {key_id: minimum_valid_until_ts or None}}``.
    :raises MatrixError: 400 ``M_BAD_JSON`` naming what is wrong.
    """
    if type(body) is not dict:
        raise bad_json("Request body must be a JSON object")
    server_keys = body.get("server_keys")
    if type(server_keys) is not dict:
        raise bad_json("server_keys must be an object")
    if len(server_keys) > MAX_QUERY_SERVERS:
        raise bad_json(f"server_keys may name at most {MAX_QUERY_SERVERS} servers")
    criteria: Criteria = {}
    for server_name, per in server_keys.items():
        if not is_valid_server_name(server_name):
            raise bad_json(f"Invalid server name in server_keys: {server_name[:100]!r}")
        if type(per) is not dict:
            raise bad_json(f"server_keys.{server_name} must be an object")
        if len(per) > MAX_KEY_IDS_PER_SERVER:
            raise bad_json(f"server_keys.{server_name} may name at most {MAX_KEY_IDS_PER_SERVER} key ids")
        wanted: dict[str, int | None] = {}
        for key_id, query_criteria in per.items():
            if not key_id or len(key_id) > MAX_KEY_ID_LENGTH:
                raise bad_json(f"Invalid key id for {server_name}")
            if type(query_criteria) is not dict:
                raise bad_json(f"server_keys.{server_name}.{key_id[:100]} must be an object")
            minimum = query_criteria.get("minimum_valid_until_ts")
            if minimum is not None and (type(minimum) is not int or not 0 <= minimum <= MAX_SAFE_INTEGER):
                raise bad_json("minimum_valid_until_ts must be a non-negative integer")
            wanted[key_id] = minimum
        criteria[server_name] = wanted
    return criteria


class NotaryResource(JsonResource):
    """The notary endpoints; mount at :data:`NOTARY_PREFIX` (``/_matrix/key/v2/query``).

    These endpoints are unauthenticated (spec: key queries carry no X-Matrix header).

    :param service: the :class:`NotaryService` answering.
    """

    def __init__(self, service: NotaryService) -> None:
        super().__init__()
        self._service = service
        self.add_route("POST", "", self._on_post)
        self.add_route("GET", "/{server_name}", self._on_get)

    def _on_post(self, request: IRequest) -> "defer.Deferred[dict[str, Any]]":
        return self._service.query(read_json_object(request))

    def _on_get(self, request: IRequest, server_name: str) -> "defer.Deferred[dict[str, Any]]":
        minimum = query_int(request, "minimum_valid_until_ts", None, minimum=0, maximum=MAX_SAFE_INTEGER)
        return self._service.query_one(server_name, None, minimum)


__all__ = [
    "MAX_QUERY_SERVERS",
    "NOTARY_PREFIX",
    "NotaryResource",
    "NotaryService",
    "parse_query_body",
]
