"""Other servers' signing keys: fetched directly or through notaries, verified, cached, used.

Spec: server-server API "Retrieving server keys" (publishing keys, querying keys through
another server), appendix "Signing JSON" / "Checking for a Signature", and the room v5+ key
validity rule (rooms/fragments/v5-signing-requirements.md).

The keyring knows no HTTP: fetchers get injected callables returning Deferreds.

Layers, in the order a lookup tries them: our own keys; a bounded in-memory cache; the
store; then each fetcher in turn (direct first, then notaries). Concurrent lookups for the
same server share one resolution; a key (or a whole server) that could not be obtained is
remembered for a short while so that a flood of events from a dead server costs one fetch.
"""

from __future__ import annotations

import os

import re
from collections import OrderedDict
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

from canonicaljson import encode_canonical_json as _canonical_encode
from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey
from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from fedserver.background import log_background_failure
from fedserver.events.canonical import MAX_SAFE_INTEGER, CanonicalJSONError
from fedserver.events.hashing import decode_unpadded_base64, unpadded_base64
from fedserver.federation.xmatrix import is_valid_server_name  # noqa: F401 - the strict grammar, re-exported (notary)
from fedserver.room_versions import RoomVersion

log = Logger()

#: The only signing algorithm the spec defines (appendix "Signing Details").
ED25519 = "ed25519"
_ED25519_PREFIX = ED25519 + ":"

#: Room v5+ rule: "Servers MUST use the lesser of valid_until_ts and 7 days into the future
#: when determining if a key is valid."
MAX_KEY_VALIDITY_MS = 7 * 24 * 3600 * 1000

#: Key id in a lookup meaning "any current verify key of that server" (used by the notary
#: when a query names no key ids).
ANY_KEY = ""

#: Bounds on what one key document may carry; beyond this it is rejected as hostile.
MAX_VERIFY_KEYS = 16
MAX_OLD_VERIFY_KEYS = 256

#: How many ed25519 signatures by one server on one object we look at.
MAX_SIGNATURES_PER_SERVER = 8

#: Key ids: the algorithm, a colon and a version of ``[a-zA-Z0-9_]`` (keys.yaml).
_KEY_ID_RE = re.compile(r"ed25519:[A-Za-z0-9_]{1,128}\Z")

def key_validity_minimum(origin_server_ts: int, room_version: RoomVersion) -> int:
    """The ``minimum_valid_until_ts`` to ask for when checking an event's signatures.

    Room v5+ (``enforce_key_validity``): the key must be valid at the event's
    ``origin_server_ts``; earlier versions ignore ``valid_until_ts`` (keys.yaml), so 0.
    """
    return origin_server_ts if room_version.enforce_key_validity else 0


class KeyVerificationError(Exception):
    """A signature could not be verified: no signature from the server, no usable key, or
    a bad signature.

    :ivar reason: human-readable explanation.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeyDocumentError(ValueError):
    """A key document (``/_matrix/key/v2/server`` response) failed validation."""


def signed_bytes(obj: Mapping[str, Any]) -> bytes:
    """The bytes a JSON signature covers: canonical JSON without ``signatures`` and
    ``unsigned`` (appendix "Signing Details").

    Not strict about floats and integers beyond 2**53: a signed request body may carry
    events of rooms v1-5, which do not enforce canonical JSON, and the signer encoded them
    as they are. (Event strictness is the event validator's job.)

    Uses canonicaljson's C-accelerated encoder directly: a federation request body can be
    megabytes, and its parser (:func:`fedserver.events.canonical.parse_json`) already
    bounded its depth.

    :raises CanonicalJSONError: if the object is not representable (NaN, infinities, lone
        surrogates, non-JSON types).
    """
    try:
        return _canonical_encode({k: v for k, v in obj.items() if k != "signatures" and k != "unsigned"})
    except (ValueError, TypeError, RecursionError) as e:
        raise CanonicalJSONError(f"not encodable as canonical JSON: {e}") from None


def sign_json_object(obj: dict[str, Any], server_name: str, key_id: str, signing_key: Any) -> dict[str, Any]:
    """Add ``server_name``'s signature under ``key_id`` to ``obj`` in place; return it.

    Existing signatures (ours or others') are kept.

    :param signing_key: a :class:`nacl.signing.SigningKey`.
    :raises CanonicalJSONError: if the object is not representable in canonical JSON.
    """
    sig = signing_key.sign(signed_bytes(obj)).signature
    sigs = obj.get("signatures")
    if type(sigs) is not dict:
        sigs = obj["signatures"] = {}
    mine = sigs.get(server_name)
    if type(mine) is not dict:
        mine = sigs[server_name] = {}
    mine[key_id] = unpadded_base64(sig)
    return obj


def decode_verify_key(key_b64: Any) -> VerifyKey:
    """Decode an unpadded-base64 ed25519 public key.

    :raises KeyDocumentError: if it is not 32 bytes of base64.
    """
    if type(key_b64) is not str or len(key_b64) > 64:
        raise KeyDocumentError("verify key must be a base64 string")
    try:
        return VerifyKey(decode_unpadded_base64(key_b64))
    except (ValueError, CryptoError, TypeError):
        raise KeyDocumentError("verify key is not a 32-byte base64 ed25519 key") from None


def check_signature(message: bytes, verify_key: VerifyKey, sig_b64: Any) -> bool:
    """Whether ``sig_b64`` is a valid ed25519 signature of ``message`` by ``verify_key``."""
    if type(sig_b64) is not str or len(sig_b64) > 128:
        return False
    try:
        verify_key.verify(message, decode_unpadded_base64(sig_b64))
    except (ValueError, CryptoError, TypeError):
        return False
    return True


class KeyRecord:
    """One verify key of a server and until when it may be used.

    :ivar verify_key: the :class:`nacl.signing.VerifyKey`.
    :ivar valid_until_ts: ms timestamp, already capped at fetch time + 7 days.
    :ivar expired_ts: for an old key, the ms timestamp it stopped being used; else ``None``.
    """

    __slots__ = ("verify_key", "valid_until_ts", "expired_ts")

    def __init__(self, verify_key: VerifyKey, valid_until_ts: int, expired_ts: int | None) -> None:
        self.verify_key = verify_key
        self.valid_until_ts = valid_until_ts
        self.expired_ts = expired_ts

    def usable_at(self, minimum_valid_until_ts: int) -> bool:
        """Whether the key may verify something that needs it valid at this time.

        A current key must have ``valid_until_ts >= minimum``; an old key is only usable
        for things older than its ``expired_ts`` (keys.yaml ``old_verify_keys``).
        """
        if self.expired_ts is not None:
            return minimum_valid_until_ts < self.expired_ts
        return self.valid_until_ts >= minimum_valid_until_ts

    def __repr__(self) -> str:
        return f"KeyRecord(valid_until_ts={self.valid_until_ts}, expired_ts={self.expired_ts})"


class KeyDocument:
    """A key document that passed :func:`parse_key_document` (self-signed, well-formed).

    :ivar server_name: whose keys these are.
    :ivar valid_until_ts: as published (not capped).
    :ivar verify_keys: ``{key_id: VerifyKey}`` of the current ed25519 keys.
    :ivar old_verify_keys: ``{key_id: (VerifyKey, expired_ts)}``.
    :ivar json_bytes: the document as canonical JSON, with only the origin's signatures
        (what a notary re-serves).
    """

    __slots__ = ("server_name", "valid_until_ts", "verify_keys", "old_verify_keys", "json_bytes", "raw")

    def __init__(
        self,
        server_name: str,
        valid_until_ts: int,
        verify_keys: dict[str, VerifyKey],
        old_verify_keys: dict[str, tuple[VerifyKey, int]],
        json_bytes: bytes,
        raw: dict[str, Any],
    ) -> None:
        self.server_name = server_name
        self.valid_until_ts = valid_until_ts
        self.verify_keys = verify_keys
        self.old_verify_keys = old_verify_keys
        self.json_bytes = json_bytes
        self.raw = raw

    def covers(self, key_id: str, minimum_valid_until_ts: int) -> bool:
        """Whether this document alone (uncapped) answers a need for ``key_id``
        (:data:`ANY_KEY` for any current key) valid at ``minimum_valid_until_ts``."""
        if key_id == ANY_KEY or key_id in self.verify_keys:
            return bool(self.verify_keys) and self.valid_until_ts >= minimum_valid_until_ts
        old = self.old_verify_keys.get(key_id)
        return old is not None and minimum_valid_until_ts < old[1]


def _timestamp(value: Any, what: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_SAFE_INTEGER:
        raise KeyDocumentError(f"{what} must be a non-negative integer")
    return value


def parse_key_document(doc: Any, server_name: str) -> KeyDocument:
    """Validate a ``/_matrix/key/v2/server`` response for ``server_name``.

    Checks (keys.yaml): an object whose ``server_name`` is the server asked about, with an
    integer ``valid_until_ts``, a non-empty ``verify_keys`` of ed25519 keys, well-formed
    ``old_verify_keys``, and a valid signature by EACH of its ed25519 ``verify_keys``
    ("the key response must be signed by the key(s) it claims"). Key ids with unknown
    algorithms or malformed versions are ignored (never stored, never used).

    :returns: the :class:`KeyDocument`.
    :raises KeyDocumentError: naming the first problem found.
    """
    if type(doc) is not dict:
        raise KeyDocumentError("key document is not a JSON object")
    if doc.get("server_name") != server_name:
        raise KeyDocumentError(f"key document is for {doc.get('server_name')!r:.80}, not {server_name!r}")
    valid_until_ts = _timestamp(doc.get("valid_until_ts"), "valid_until_ts")

    raw_verify = doc.get("verify_keys")
    if type(raw_verify) is not dict:
        raise KeyDocumentError("verify_keys must be an object")
    if len(raw_verify) > MAX_VERIFY_KEYS:
        raise KeyDocumentError("too many verify_keys")
    verify_keys: dict[str, VerifyKey] = {}
    for key_id, entry in raw_verify.items():
        if not _KEY_ID_RE.match(key_id):
            continue
        if type(entry) is not dict:
            raise KeyDocumentError(f"verify_keys.{key_id} must be an object")
        verify_keys[key_id] = decode_verify_key(entry.get("key"))
    if not verify_keys:
        raise KeyDocumentError("key document has no ed25519 verify_keys")

    raw_old = doc.get("old_verify_keys", {})
    if raw_old is None:
        raw_old = {}
    if type(raw_old) is not dict:
        raise KeyDocumentError("old_verify_keys must be an object")
    if len(raw_old) > MAX_OLD_VERIFY_KEYS:
        raise KeyDocumentError("too many old_verify_keys")
    old_verify_keys: dict[str, tuple[VerifyKey, int]] = {}
    for key_id, entry in raw_old.items():
        if not _KEY_ID_RE.match(key_id):
            continue
        if type(entry) is not dict:
            raise KeyDocumentError(f"old_verify_keys.{key_id} must be an object")
        expired_ts = _timestamp(entry.get("expired_ts"), f"old_verify_keys.{key_id}.expired_ts")
        old_verify_keys[key_id] = (decode_verify_key(entry.get("key")), expired_ts)

    signatures = doc.get("signatures")
    if type(signatures) is not dict or type(signatures.get(server_name)) is not dict:
        raise KeyDocumentError(f"key document is not signed by {server_name}")
    own_sigs = signatures[server_name]
    try:
        message = signed_bytes(doc)
        origin_only = dict(doc)
        origin_only["signatures"] = {server_name: own_sigs}
        origin_only.pop("unsigned", None)
        json_bytes = _canonical_encode(origin_only)
    except (CanonicalJSONError, ValueError, TypeError, RecursionError) as e:
        raise KeyDocumentError(f"key document is not canonical JSON: {e}") from None
    # "The key response must be signed by the key(s) it claims": every current key signs.
    for key_id, vk in verify_keys.items():
        if key_id not in own_sigs:
            raise KeyDocumentError(f"key document is not signed by its own key {key_id}")
        if not check_signature(message, vk, own_sigs[key_id]):
            raise KeyDocumentError(f"bad self-signature by {key_id}")
    return KeyDocument(server_name, valid_until_ts, verify_keys, old_verify_keys, json_bytes, origin_only)


#: ``{server_name: {key_id or ANY_KEY: minimum_valid_until_ts}}``
KeyNeeds = Mapping[str, Mapping[str, int]]


class KeyFetcher(Protocol):
    """Something that can obtain key documents for servers (directly or via a notary)."""

    def get_keys(self, needs: KeyNeeds) -> "defer.Deferred[list[KeyDocument]]":
        """Fetch key documents for the servers in ``needs``.

        :param needs: ``{server_name: {key_id: minimum_valid_until_ts}}``; :data:`ANY_KEY`
            as a key id means "whatever the server currently has".
        :returns: Deferred firing with the verified documents obtained (possibly none); it
            should not fail for an unreachable server, which is simply absent.
        """


GetJson = Callable[[str, str], "defer.Deferred[Any]"]
PostJson = Callable[[str, str, Any], "defer.Deferred[Any]"]


class DirectKeyFetcher:
    """Fetches ``GET /_matrix/key/v2/server`` from each server itself.

    :param get_json: ``get_json(server_name, path) -> Deferred[dict]`` (unsigned request).
    """

    PATH = "/_matrix/key/v2/server"

    def __init__(self, get_json: GetJson) -> None:
        self._get_json = get_json

    def get_keys(self, needs: KeyNeeds) -> "defer.Deferred[list[KeyDocument]]":
        """See :meth:`KeyFetcher.get_keys`; all servers are fetched concurrently."""
        ds = [self._fetch_one(server_name) for server_name in needs]
        d = defer.DeferredList(ds, consumeErrors=True)
        d.addCallback(lambda results: [doc for ok, doc in results if ok and doc is not None])
        return d

    def _fetch_one(self, server_name: str) -> "defer.Deferred[KeyDocument | None]":
        d = defer.maybeDeferred(self._get_json, server_name, self.PATH)
        d.addCallback(parse_key_document, server_name)

        def failed(f: Any) -> None:
            log.info("Could not fetch keys of {server}: {why}", server=server_name, why=f.getErrorMessage())
            return None

        d.addErrback(failed)
        return d


class NotaryKeyFetcher:
    """Asks trusted notaries (``POST /_matrix/key/v2/query``), in configured order, for keys
    the earlier ones did not provide.

    Every returned document must be self-signed by the origin AND carry a valid signature
    by one of the notary's configured keys (and no invalid one by a configured key).

    :param post_json: ``post_json(notary_server_name, path, body) -> Deferred[dict]``.
    :param notaries: ``[(notary_server_name, {key_id: verify_key_b64}), ...]``, the
        ``trusted_key_servers`` config.
    :raises ValueError: if a configured notary key is malformed or a notary has no keys.
    """

    PATH = "/_matrix/key/v2/query"

    #: How many documents of one response we look at.
    MAX_DOCUMENTS = 1000

    def __init__(self, post_json: PostJson, notaries: Sequence[tuple[str, Mapping[str, str]]]) -> None:
        self._post_json = post_json
        self._notaries: list[tuple[str, dict[str, VerifyKey]]] = []
        for name, keys in notaries:
            parsed = {}
            for key_id, key_b64 in keys.items():
                if not _KEY_ID_RE.match(key_id):
                    raise ValueError(f"trusted key server {name}: unsupported key id {key_id!r}")
                try:
                    parsed[key_id] = decode_verify_key(key_b64)
                except KeyDocumentError as e:
                    raise ValueError(f"trusted key server {name}: {e}") from None
            if not parsed:
                raise ValueError(f"trusted key server {name} has no verify keys configured")
            self._notaries.append((name, parsed))

    @defer.inlineCallbacks
    def get_keys(self, needs: KeyNeeds):  # type: ignore[no-untyped-def]
        """See :meth:`KeyFetcher.get_keys`. Setting ``minimum_valid_until_ts`` per key id
        prompts the notary to refresh (room v5 signing requirements)."""
        remaining = {s: dict(k) for s, k in needs.items()}
        found: list[KeyDocument] = []
        for notary, notary_keys in self._notaries:
            if not remaining:
                break
            body = {
                "server_keys": {
                    s: {k: {"minimum_valid_until_ts": m} for k, m in ks.items() if k != ANY_KEY}
                    for s, ks in remaining.items()
                }
            }
            try:
                response = yield defer.maybeDeferred(self._post_json, notary, self.PATH, body)
            except Exception as e:
                log.info("Notary {notary} did not answer a key query: {why}", notary=notary, why=str(e)[:200])
                continue
            docs = self._accept_response(notary, notary_keys, response, remaining)
            found.extend(docs)
            for s in list(remaining):
                mine = [d for d in docs if d.server_name == s]
                if mine and all(any(d.covers(k, m) for d in mine) for k, m in remaining[s].items()):
                    del remaining[s]
        return found

    def _accept_response(
        self, notary: str, notary_keys: dict[str, VerifyKey], response: Any, asked: Mapping[str, Any]
    ) -> list[KeyDocument]:
        if type(response) is not dict or type(response.get("server_keys")) is not list:
            log.info("Notary {notary} sent a malformed key query response", notary=notary)
            return []
        docs = []
        for item in response["server_keys"][: self.MAX_DOCUMENTS]:
            server_name = item.get("server_name") if type(item) is dict else None
            if type(server_name) is not str or server_name not in asked:
                continue
            try:
                doc = parse_key_document(item, server_name)
                self._check_notary_signature(notary, notary_keys, item)
            except KeyDocumentError as e:
                log.info(
                    "Rejected keys of {server} from notary {notary}: {why}", server=server_name, notary=notary, why=str(e)
                )
                continue
            docs.append(doc)
        return docs

    @staticmethod
    def _check_notary_signature(notary: str, notary_keys: dict[str, VerifyKey], item: dict[str, Any]) -> None:
        sigs = item["signatures"].get(notary)
        if type(sigs) is not dict:
            raise KeyDocumentError(f"not signed by notary {notary}")
        message = signed_bytes(item)
        good = False
        for key_id, vk in notary_keys.items():
            if key_id in sigs:
                if not check_signature(message, vk, sigs[key_id]):
                    raise KeyDocumentError(f"bad signature by notary {notary} key {key_id}")
                good = True
        if not good:
            raise KeyDocumentError(f"no signature by a configured key of notary {notary}")


class KeyStore(Protocol):
    """The part of the storage interface the keyring uses."""

    def store_server_keys(
        self,
        server_name: str,
        keys: list[tuple[str, str, int, int | None]],
        key_json: bytes | None,
        fetched_ts: int,
    ) -> "defer.Deferred[None]": ...

    def get_server_keys(self, server_name: str, key_ids: Iterable[str]) -> "defer.Deferred[dict[str, dict[str, Any]]]": ...

    def get_server_key_json(self, server_name: str) -> "defer.Deferred[list[bytes]]": ...


#: A batch verification request: (server_name, signed_bytes, {key_id: sig_b64},
#: minimum_valid_until_ts).
SignatureRequest = tuple[str, bytes, Mapping[str, Any], int]

_FOREVER = MAX_SAFE_INTEGER


class Keyring:
    """Finds, verifies and caches servers' verify keys and checks signatures with them.

    :param clock: an :class:`IReactorTime` (``seconds()`` is used).
    :param store: see :class:`KeyStore`.
    :param fetchers: tried in order for keys neither cached nor stored (direct first,
        then notaries).
    :param own_server_name: our server name; its keys are answered from ``own_keys``.
    :param own_keys: ``{key_id: VerifyKey}`` of our own current keys.
    :param cache_servers: how many servers' keys the in-memory cache holds (LRU).
    :param negative_cache_seconds: how long a key (or server) that could not be obtained is
        not asked for again.
    :param threadpool: a started :class:`twisted.python.threadpool.ThreadPool` on which
        large batches are verified in parallel (ed25519 verification releases the GIL, so a
        batch spread over the cores finishes that many times sooner); ``None`` verifies
        every batch on the reactor thread.
    :param parallel_threshold: the smallest batch worth spreading over threads.
    """

    def __init__(
        self,
        clock: IReactorTime,
        store: KeyStore,
        fetchers: Sequence[KeyFetcher],
        own_server_name: str,
        own_keys: Mapping[str, VerifyKey],
        *,
        cache_servers: int = 4096,
        negative_cache_seconds: float = 60.0,
        threadpool: Any = None,
        parallel_threshold: int = 128,
    ) -> None:
        self._clock = clock
        self._threadpool = threadpool
        self._parallel_threshold = parallel_threshold
        self._store = store
        self._fetchers = list(fetchers)
        self._own_server_name = own_server_name
        self._own_records = {k: KeyRecord(vk, _FOREVER, None) for k, vk in own_keys.items()}
        self._cache: OrderedDict[str, dict[str, KeyRecord]] = OrderedDict()
        self._cache_servers = cache_servers
        self._negative: dict[tuple[str, str | None], int] = {}
        self._negative_ms = int(negative_cache_seconds * 1000)
        self._max_negative = 100_000
        # server -> waiters for the resolution currently running for it
        self._inflight: dict[str, list[defer.Deferred[None]]] = {}

    # -- public API -------------------------------------------------------------------------

    def get_verify_keys(
        self, server_name: str, key_ids: Iterable[str], minimum_valid_until_ts: int
    ) -> "defer.Deferred[dict[str, VerifyKey]]":
        """Find ``server_name``'s keys ``key_ids`` usable at ``minimum_valid_until_ts``.

        :returns: Deferred firing with ``{key_id: VerifyKey}`` holding those of the
            requested keys that were found and are valid long enough (possibly empty).
            Never fails for an unreachable server.
        """
        key_ids = [k for k in key_ids if type(k) is str and k.startswith(_ED25519_PREFIX)]
        if server_name == self._own_server_name:
            return defer.succeed({k: self._own_records[k].verify_key for k in key_ids if k in self._own_records})
        d = self._lookup({server_name: dict.fromkeys(key_ids, minimum_valid_until_ts)})

        def pick(found: dict[str, dict[str, KeyRecord]]) -> dict[str, VerifyKey]:
            mine = found.get(server_name, {})
            return {
                k: mine[k].verify_key for k in key_ids if k in mine and mine[k].usable_at(minimum_valid_until_ts)
            }

        d.addCallback(pick)
        return d

    def refresh_keys(self, needs: KeyNeeds) -> "defer.Deferred[None]":
        """Make sure the cache and store hold keys satisfying ``needs`` if they can be
        obtained (fetching what is missing), as the notary does before answering.

        :param needs: ``{server_name: {key_id or ANY_KEY: minimum_valid_until_ts}}``.
        :returns: Deferred firing with ``None``; never fails for unreachable servers.
        """
        needs = {s: dict(k) for s, k in needs.items() if s != self._own_server_name}
        d = self._lookup(needs)
        d.addCallback(lambda _: None)
        return d

    def verify_json_for_server(
        self, server_name: str, json_obj: Any, minimum_valid_until_ts: int
    ) -> "defer.Deferred[None]":
        """Check that ``json_obj`` carries a valid signature by ``server_name``
        (appendix "Checking for a Signature").

        :returns: Deferred firing with ``None`` if it does.
        :raises KeyVerificationError: (through the Deferred) if it has no signature by that
            server, no usable key is known for its signatures, or a signature is bad.
        """
        if type(json_obj) is not dict:
            return defer.fail(KeyVerificationError("signed object is not a JSON object"))
        sigs = json_obj.get("signatures")
        sigs = sigs.get(server_name) if type(sigs) is dict else None
        if type(sigs) is not dict or not sigs:
            return defer.fail(KeyVerificationError(f"not signed by {server_name}"))
        try:
            message = signed_bytes(json_obj)
        except CanonicalJSONError as e:
            return defer.fail(KeyVerificationError(f"signed object is not canonical JSON: {e}"))
        d = self.verify_signatures([(server_name, message, sigs, minimum_valid_until_ts)])

        def check(results: list[bool | str]) -> None:
            if results[0] is not True:
                raise KeyVerificationError(results[0])  # type: ignore[arg-type]

        d.addCallback(check)
        return d

    def verify_signatures(self, requests: Iterable[SignatureRequest]) -> "defer.Deferred[list[bool | str]]":
        """Verify many signatures at once, as event ingest does for a whole transaction.

        Each request is ``(server_name, signed_bytes, signatures_by_that_server,
        minimum_valid_until_ts)``. All needed keys are looked up together (each server's
        keys at most once); the signatures are then checked synchronously. When every key
        is cached the returned Deferred has already fired.

        A request succeeds when at least one of its ed25519 signatures is by a key usable
        at its ``minimum_valid_until_ts`` and every such signature verifies. Signatures by
        keys we cannot find are skipped (appendix "Checking for a Signature" step 3, read
        leniently as Synapse does: another valid signature by a published key of the
        server proves the same thing).

        :returns: Deferred firing with one entry per request, in order: ``True``, or a
            string saying why it failed.
        """
        requests = list(requests)
        needs: dict[str, dict[str, int]] = {}
        own = self._own_server_name
        for server_name, _message, sigs, minimum in requests:
            if server_name == own or type(sigs) is not dict:
                continue
            per = needs.get(server_name)
            if per is None:
                per = needs[server_name] = {}
            for key_id in _candidate_key_ids(sigs):
                if per.get(key_id, -1) < minimum:
                    per[key_id] = minimum
        d = self._lookup(needs)
        d.addCallback(self._check_all, requests)
        return d

    def _check_all(self, found: dict[str, dict[str, KeyRecord]], requests: list) -> Any:
        """Check every request, spreading a large batch over the thread pool."""
        pool = self._threadpool
        if pool is None or len(requests) < self._parallel_threshold:
            return [self._check_one(found, *r) for r in requests]
        parts = max(2, min(8, (os.cpu_count() or 2)))
        size = -(-len(requests) // parts)
        chunks = [requests[i:i + size] for i in range(0, len(requests), size)]

        def check(chunk: list) -> list:
            return [self._check_one(found, *r) for r in chunk]

        d = defer.gatherResults(
            [threads.deferToThreadPool(self._clock, pool, check, c) for c in chunks], consumeErrors=True
        )
        d.addCallback(lambda results: [x for part in results for x in part])
        return d

    # -- checking ---------------------------------------------------------------------------

    def _check_one(
        self,
        found: dict[str, dict[str, KeyRecord]],
        server_name: str,
        message: bytes,
        sigs: Any,
        minimum: int,
    ) -> bool | str:
        if type(sigs) is not dict or not sigs:
            return f"not signed by {server_name}"
        keys = self._own_records if server_name == self._own_server_name else found.get(server_name, {})
        verified = False
        candidates = _candidate_key_ids(sigs)
        if not candidates:
            return f"no ed25519 signature by {server_name}"
        for key_id in candidates:
            rec = keys.get(key_id)
            if rec is None or not rec.usable_at(minimum):
                continue
            if not check_signature(message, rec.verify_key, sigs[key_id]):
                return f"bad signature by {server_name} key {key_id}"
            verified = True
        if not verified:
            return f"no key of {server_name} usable at {minimum} for {', '.join(candidates)}"
        return True

    # -- lookup -----------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def _from_cache(
        self, needs: KeyNeeds, found: dict[str, dict[str, KeyRecord]]
    ) -> dict[str, dict[str, int]]:
        """Copy cached records for ``needs`` into ``found``; return what is still missing."""
        missing: dict[str, dict[str, int]] = {}
        cache = self._cache
        for server_name, per in needs.items():
            cached = cache.get(server_name)
            if cached is not None:
                cache.move_to_end(server_name)
                mine = found.get(server_name)
                if mine is None:
                    mine = found[server_name] = {}
            for key_id, minimum in per.items():
                if key_id == ANY_KEY:
                    if cached is not None:
                        mine.update(cached)
                    ok = any(r.expired_ts is None and r.usable_at(minimum) for r in found.get(server_name, {}).values())
                else:
                    rec = cached.get(key_id) if cached is not None else None
                    if rec is not None:
                        mine[key_id] = rec
                    else:
                        rec = found.get(server_name, {}).get(key_id)
                    ok = rec is not None and rec.usable_at(minimum)
                if not ok:
                    missing.setdefault(server_name, {})[key_id] = minimum
        return missing

    def _lookup(self, needs: KeyNeeds) -> "defer.Deferred[dict[str, dict[str, KeyRecord]]]":
        found: dict[str, dict[str, KeyRecord]] = {}
        missing = self._from_cache(needs, found)
        if missing:
            # Keys we failed to obtain a moment ago are not looked for again (not even in
            # the store) until the negative cache entry lapses.
            missing = self._drop_negative(missing)
        if not missing:
            return defer.succeed(found)
        return self._resolve(missing, found)

    @defer.inlineCallbacks
    def _resolve(self, missing: dict[str, dict[str, int]], found: dict[str, dict[str, KeyRecord]]):  # type: ignore[no-untyped-def]
        # Coalesce: wait for resolutions already running for these servers, then take
        # what they put in the cache before doing any work of our own.
        while True:
            busy = [s for s in missing if s in self._inflight]
            if not busy:
                break
            waits = []
            for s in busy:
                w: defer.Deferred[None] = defer.Deferred()
                self._inflight[s].append(w)
                waits.append(w)
            yield defer.gatherResults(waits)
            missing = self._drop_negative(self._from_cache(missing, found))
            if not missing:
                return found
        claimed = list(missing)
        for s in claimed:
            self._inflight[s] = []
        try:
            yield self._load_from_store(missing, found)
            missing = self._still_missing(missing, found)
            obtained: set[str] = set()
            for fetcher in self._fetchers:
                if not missing:
                    break
                docs = yield self._run_fetcher(fetcher, missing)
                yield self._accept_documents(docs, missing, found, obtained)
                missing = self._still_missing(missing, found)
            if missing:
                self._remember_failures(missing, obtained)
        finally:
            waiters = [w for s in claimed for w in self._inflight.pop(s, ())]
            for w in waiters:
                w.callback(None)
        return found

    def _still_missing(self, needs: KeyNeeds, found: dict[str, dict[str, KeyRecord]]) -> dict[str, dict[str, int]]:
        missing: dict[str, dict[str, int]] = {}
        for server_name, per in needs.items():
            mine = found.get(server_name, {})
            for key_id, minimum in per.items():
                if key_id == ANY_KEY:
                    ok = any(r.expired_ts is None and r.usable_at(minimum) for r in mine.values())
                else:
                    rec = mine.get(key_id)
                    ok = rec is not None and rec.usable_at(minimum)
                if not ok:
                    missing.setdefault(server_name, {})[key_id] = minimum
        return missing

    def _drop_negative(self, missing: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        if not self._negative:
            return missing
        now = self._now_ms()
        neg = self._negative
        out: dict[str, dict[str, int]] = {}
        for server_name, per in missing.items():
            until = neg.get((server_name, None))
            if until is not None and until > now:
                continue
            keep = {}
            for k, m in per.items():
                until = neg.get((server_name, k))
                if until is None or until <= now:
                    keep[k] = m
            if keep:
                out[server_name] = keep
        return out

    def _remember_failures(self, missing: dict[str, dict[str, int]], obtained: set[str]) -> None:
        neg = self._negative
        until = self._now_ms() + self._negative_ms
        for server_name, per in missing.items():
            if server_name not in obtained:
                # Nothing at all came back for this server: back off from it entirely.
                neg.pop((server_name, None), None)
                neg[(server_name, None)] = until
            for key_id in per:
                neg.pop((server_name, key_id), None)
                neg[(server_name, key_id)] = until
        if len(neg) > self._max_negative:
            now = self._now_ms()
            for k in [k for k, t in neg.items() if t <= now]:
                del neg[k]
            while len(neg) > self._max_negative:
                del neg[next(iter(neg))]

    def _load_from_store(
        self, missing: dict[str, dict[str, int]], found: dict[str, dict[str, KeyRecord]]
    ) -> "defer.Deferred[None]":
        ds = []
        for server_name, per in missing.items():
            key_ids = [k for k in per if k != ANY_KEY]
            if not key_ids:
                continue
            d = defer.maybeDeferred(self._store.get_server_keys, server_name, key_ids)
            d.addCallback(self._records_from_store, server_name, found)
            d.addErrback(log_background_failure, "Could not read stored keys of {server}", logger=log, server=server_name)
            ds.append(d)
        d = defer.DeferredList(ds, consumeErrors=True)
        d.addCallback(lambda _: None)
        return d

    def _records_from_store(
        self, rows: Mapping[str, Mapping[str, Any]], server_name: str, found: dict[str, dict[str, KeyRecord]]
    ) -> None:
        recs = {}
        for key_id, row in (rows or {}).items():
            try:
                vk = decode_verify_key(row["verify_key"])
                valid = int(row["valid_until_ts"])
                expired = row.get("expired_ts")
                recs[key_id] = KeyRecord(vk, valid, None if expired is None else int(expired))
            except (KeyDocumentError, KeyError, TypeError, ValueError):
                log.warn("Ignoring a malformed stored key {key_id} of {server}", key_id=key_id, server=server_name)
        if recs:
            self._cache_put(server_name, recs)
            found.setdefault(server_name, {}).update(recs)

    def _run_fetcher(self, fetcher: KeyFetcher, missing: dict[str, dict[str, int]]) -> "defer.Deferred[list[KeyDocument]]":
        d = defer.maybeDeferred(fetcher.get_keys, missing)

        def failed(f: Any) -> list[KeyDocument]:
            log.failure("Key fetcher {fetcher} failed", f, fetcher=type(fetcher).__name__)
            return []

        d.addErrback(failed)
        return d

    def _accept_documents(
        self,
        docs: Iterable[KeyDocument],
        asked: Mapping[str, Any],
        found: dict[str, dict[str, KeyRecord]],
        obtained: set[str],
    ) -> "defer.Deferred[None]":
        fetched_ts = self._now_ms()
        # Room v5+: "the lesser of valid_until_ts and 7 days into the future".
        cap = fetched_ts + MAX_KEY_VALIDITY_MS
        writes = []
        # Oldest first, so the newest document's word on a key id wins.
        for doc in sorted((d for d in docs if d.server_name in asked), key=lambda d: d.valid_until_ts):
            server_name = doc.server_name
            obtained.add(server_name)
            recs: dict[str, KeyRecord] = {}
            for key_id, (vk, expired_ts) in doc.old_verify_keys.items():
                recs[key_id] = KeyRecord(vk, expired_ts, expired_ts)
            valid = min(doc.valid_until_ts, cap)
            for key_id, vk in doc.verify_keys.items():
                recs[key_id] = KeyRecord(vk, valid, None)
            self._cache_put(server_name, recs)
            found.setdefault(server_name, {}).update(recs)
            rows = [(k, unpadded_base64(r.verify_key.encode()), r.valid_until_ts, r.expired_ts) for k, r in recs.items()]
            d = defer.maybeDeferred(self._store.store_server_keys, server_name, rows, doc.json_bytes, fetched_ts)
            d.addErrback(log_background_failure, "Could not store keys of {server}", logger=log, server=server_name)
            writes.append(d)
        d = defer.DeferredList(writes, consumeErrors=True)
        d.addCallback(lambda _: None)
        return d

    def _cache_put(self, server_name: str, recs: Mapping[str, KeyRecord]) -> None:
        cache = self._cache
        cached = cache.get(server_name)
        if cached is None:
            cache[server_name] = dict(recs)
            if len(cache) > self._cache_servers:
                cache.popitem(last=False)
        else:
            cached.update(recs)
            cache.move_to_end(server_name)


def _candidate_key_ids(sigs: Mapping[str, Any]) -> list[str]:
    """The ed25519 key ids of one server's signatures we consider (appendix "Checking for a
    Signature" step 2: key ids with algorithms we do not understand are removed)."""
    out = []
    for key_id in sigs:
        if type(key_id) is str and key_id.startswith(_ED25519_PREFIX):
            out.append(key_id)
            if len(out) >= MAX_SIGNATURES_PER_SERVER:
                break
    return out
