"""A small policy server of our own for tests: twisted.web over TLS on loopback, with a
server signing key (its key document, its joins, its requests) and a separate ed25519
policy key for ``POST /_matrix/policy/v1/sign``."""

from __future__ import annotations

import json
import os
from typing import Any, Optional

from signedjson.key import generate_signing_key
from twisted.internet import endpoints
from twisted.internet.task import deferLater
from twisted.names.client import Resolver
from twisted.protocols.policies import WrappingFactory
from twisted.web import server

from fedserver.crypto import load_or_generate_tls, verify_key_base64
from fedserver.events.builder import build_from_template
from fedserver.events.hashing import compute_event_id
from fedserver.events.signing import sign_bytes, signed_bytes_for_event
from fedserver.federation.client import build_federation_client, fed_path
from fedserver.federation.keyring import check_signature, parse_key_document, signed_bytes
from fedserver.federation.xmatrix import XMatrixParseError, parse_xmatrix_header, request_json_for_verify
from fedserver.errors import MatrixError
from fedserver.http.federation.keys import ServerKeyDocument, ServerKeyResource
from fedserver.http.resource import JsonResource, build_tree, read_json_body
from fedserver.room_versions import SPEC_ROOM_VERSIONS, RoomVersion, RoomVersionRegistry

#: How the server answers ``/sign`` (``judge``: refuse events whose content mentions
#: "spam", sign the rest).
MODES = ("judge", "sign_all", "refuse_all", "empty", "bad_signature", "error", "rate_limited", "unrecognized")


class PolicyServer:
    """A policy server on ``127.0.0.1:<port>`` (its server name).

    It knows the rooms it protects (``protect(room_id, room_version)``, or by joining
    them with :meth:`join`); ``/sign`` for another room answers 404 ``M_NOT_FOUND``.  It
    checks the X-Matrix signature of each ``/sign`` request with the origin's key, fetched
    from the origin.  ``sign_requests`` records each request: ``{"origin", "verified",
    "event_id", "type", "content", "answer"}``.

    :param reactor: the reactor.
    :param directory: where its TLS files go.
    :param room_versions: extra versions it understands (besides the spec's).
    """

    def __init__(self, reactor: Any, directory: str, room_versions: tuple[RoomVersion, ...] = ()) -> None:
        self.reactor = reactor
        self.directory = directory
        self.server_key = generate_signing_key("ps1")
        self.policy_key = generate_signing_key("policy_server")
        self.registry = RoomVersionRegistry(room_versions)
        self.mode = "judge"
        self.rooms: dict[str, RoomVersion] = {}
        self.sign_requests: list[dict[str, Any]] = []
        self.transactions: list[dict[str, Any]] = []
        self._origin_keys: dict[str, dict[str, Any]] = {}
        self.port: Any = None
        self.server_name = ""
        self.client: Any = None

    @property
    def public_key(self) -> str:
        """The policy key, unpadded base64: what ``m.room.policy``'s ``public_keys.ed25519``
        must hold."""
        return verify_key_base64(self.policy_key)

    def policy_content(self) -> dict[str, Any]:
        """The ``m.room.policy`` content naming this server."""
        return {"via": self.server_name, "public_keys": {"ed25519": self.public_key}}

    async def start(self, port: int = 0) -> "PolicyServer":
        """Listen with TLS on 127.0.0.1 (a free port by default)."""
        os.makedirs(self.directory, exist_ok=True)
        cert = os.path.join(self.directory, "tls.crt")
        key = os.path.join(self.directory, "tls.key")
        load_or_generate_tls(cert, key, "127.0.0.1")
        endpoint = endpoints.serverFromString(
            self.reactor, f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        )
        site = server.Site(self._root())
        site.noisy = False
        # Wrapped to know its connections: peers keep theirs open, stop() closes them.
        self._connections = WrappingFactory(site)
        self.port = await endpoint.listen(self._connections)
        self.server_name = f"127.0.0.1:{self.port.getHost().port}"
        self.documents = ServerKeyDocument(self.server_name, self.server_key, self.reactor, 86_400_000)
        self.client = loopback_client(self.reactor, self.server_name, self.server_key)
        return self

    async def stop(self) -> None:
        """Stop listening (further requests are refused: "unreachable") and close the client."""
        if self.port is not None:
            port, self.port = self.port, None
            await port.stopListening()
            for protocol in list(self._connections.protocols):
                protocol.transport.abortConnection()
            while self._connections.protocols:
                await deferLater(self.reactor, 0.01, lambda: None)
        if self.client is not None:
            client, self.client = self.client, None
            await client.close()

    def _root(self) -> Any:
        keys = ServerKeyResource(_LazyDocument(self))
        policy = JsonResource()
        policy.add_route("POST", "/sign", self._sign)
        federation = JsonResource()
        federation.add_route("PUT", "/send/{txn_id}", self._send)
        return build_tree({
            "/_matrix/key/v2/server": keys,
            "/_matrix/policy/v1": policy,
            "/_matrix/federation/v1": federation,
        })

    def protect(self, room_id: str, room_version: RoomVersion) -> None:
        """Sign events of ``room_id`` (whose redaction rules follow ``room_version``)."""
        self.rooms[room_id] = room_version

    # -- joining a room -------------------------------------------------------------------

    async def join(self, resident: str, room_id: str, localpart: str = "policy") -> str:
        """Join ``room_id`` through ``resident`` as ``@localpart:<us>`` (make_join, then
        send_join v2), and protect it.

        :returns: the join event's id.
        """
        user_id = f"@{localpart}:{self.server_name}"
        ver = [v.identifier for v in SPEC_ROOM_VERSIONS] + [v for v in self.registry.identifiers() if v not in
                                                            {s.identifier for s in SPEC_ROOM_VERSIONS}]
        answer = await self.client.get_json(
            resident, fed_path("/_matrix/federation/v1/make_join/{}/{}", room_id, user_id), {"ver": ver}
        )
        rv = self.registry.get(answer["room_version"])
        now_ms = int(self.reactor.seconds() * 1000)
        event = build_from_template(answer["event"], rv, origin_server_ts=now_ms, server_name=self.server_name,
                                    signing_key=self.server_key)
        await self.client.put_json(
            resident, fed_path("/_matrix/federation/v2/send_join/{}/{}", room_id, event.event_id), event.pdu
        )
        self.protect(room_id, rv)
        return event.event_id

    # -- the endpoints ------------------------------------------------------------------

    async def _send(self, request: Any, txn_id: str) -> dict:
        self.transactions.append(read_json_body(request))
        return {"pdus": {}}

    async def _sign(self, request: Any) -> Any:
        pdu = read_json_body(request)
        origin, verified = await self._authenticate(request, pdu)
        record: dict[str, Any] = {"origin": origin, "verified": verified}
        self.sign_requests.append(record)
        if not isinstance(pdu, dict):
            raise MatrixError(400, "M_BAD_JSON", "The body is not a PDU")
        record.update(type=pdu.get("type"), content=pdu.get("content"))
        rv = self.rooms.get(self._room_id(pdu))
        if rv is None:
            record["answer"] = "not_found"
            raise MatrixError(404, "M_NOT_FOUND", "This room is not protected here")
        record["event_id"] = compute_event_id(pdu, rv)
        if not verified:
            record["answer"] = "unauthenticated"
            raise MatrixError(401, "M_UNAUTHORIZED", "Bad X-Matrix signature")
        mode = self.mode
        if mode == "judge":
            mode = "refuse_all" if "spam" in json.dumps(pdu.get("content"), ensure_ascii=False).lower() else "sign_all"
        record["answer"] = mode
        if mode == "error":
            raise MatrixError(500, "M_UNKNOWN", "Something broke")
        if mode == "rate_limited":
            raise MatrixError(429, "M_LIMIT_EXCEEDED", "Slow down")
        if mode == "unrecognized":
            raise MatrixError(404, "M_UNRECOGNIZED", "Unrecognized request")
        if mode == "refuse_all":
            raise MatrixError(400, "M_FORBIDDEN", "The message appears to contain possible spam")
        if mode == "empty":
            return {}
        key = self.policy_key if mode == "sign_all" else generate_signing_key("policy_server")
        signature = sign_bytes(signed_bytes_for_event(pdu, rv), key)
        return {self.server_name: {"ed25519:policy_server": signature}}

    def _room_id(self, pdu: dict) -> Any:
        """The PDU's room: its ``room_id``, or for a create event of a room version whose
        room id is its create event's id (v12), that."""
        if "room_id" in pdu or pdu.get("type") != "m.room.create":
            return pdu.get("room_id")
        for rv in set(self.rooms.values()):
            if rv.room_id_from_create_event:
                try:
                    room_id = "!" + compute_event_id(pdu, rv)[1:]
                except (ValueError, TypeError, KeyError):
                    continue
                if room_id in self.rooms:
                    return room_id
        return None

    async def _authenticate(self, request: Any, body: Any) -> tuple[Optional[str], bool]:
        """``(origin, whether the X-Matrix signature verifies with the origin's key)``."""
        header = request.getHeader(b"authorization")
        if header is None:
            return None, False
        try:
            auth = parse_xmatrix_header(header)
        except XMatrixParseError:
            return None, False
        if auth.destination not in (None, self.server_name):
            return auth.origin, False
        keys = self._origin_keys.get(auth.origin)
        if keys is None:
            try:
                doc = await self.client.get_json(auth.origin, "/_matrix/key/v2/server", sign=False)
                keys = self._origin_keys[auth.origin] = dict(parse_key_document(doc, auth.origin).verify_keys)
            except Exception:
                return auth.origin, False
        verify_key = keys.get(auth.key_id)
        if verify_key is None:
            return auth.origin, False
        obj = request_json_for_verify(request.method.decode("ascii"), request.uri.decode("ascii"), auth.origin,
                                      auth.destination, body, auth.key_id, auth.sig)
        return auth.origin, check_signature(signed_bytes(obj), verify_key, auth.sig)

    def requests_for(self, event_id: str) -> list[dict[str, Any]]:
        """The ``/sign`` requests made about ``event_id``."""
        return [r for r in self.sign_requests if r.get("event_id") == event_id]


class _LazyDocument:
    """The key document once the server name (known after listening) is."""

    def __init__(self, ps: PolicyServer) -> None:
        self._ps = ps

    def encoded(self) -> bytes:
        return self._ps.documents.encoded()


def loopback_client(reactor: Any, server_name: str, signing_key: Any, timeout: float = 20) -> Any:
    """A federation client for loopback peers named by IP literals: self-signed
    certificates accepted, private addresses allowed, no DNS (nothing to resolve)."""
    return build_federation_client(
        reactor, server_name, signing_key, verify_tls=False, allow_private_addresses=True, timeout=timeout,
        srv_resolver=Resolver(servers=[("127.0.0.1", 53)], reactor=reactor),
    )


async def start_policy_server(reactor: Any, directory: str, **kw: Any) -> PolicyServer:
    """A started :class:`PolicyServer`."""
    return await PolicyServer(reactor, directory, **kw).start()


__all__ = ["MODES", "PolicyServer", "loopback_client", "start_policy_server"]
