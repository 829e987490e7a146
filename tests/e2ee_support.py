"""Shared helpers for the encryption tests: real signed device keys, one-time keys and
cross-signing keys made with signedjson, as a client makes them."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from signedjson.key import generate_signing_key
from signedjson.sign import sign_json


def b64(data: bytes) -> str:
    """Unpadded standard base64."""
    return base64.b64encode(data).decode("ascii").rstrip("=")


def curve_key() -> str:
    """A random 32-byte key in unpadded base64 (stands for a curve25519 public key)."""
    return b64(os.urandom(32))


@dataclass
class Device:
    """A device with its ed25519 signing key, as a client holds it."""

    user_id: str
    device_id: str
    key: Any = None
    counter: int = 0

    def __post_init__(self) -> None:
        if self.key is None:
            self.key = generate_signing_key(self.device_id)

    @property
    def ed25519(self) -> str:
        return b64(self.key.verify_key.encode())

    def device_keys(self, **extra: Any) -> dict[str, Any]:
        """The ``device_keys`` object of ``/keys/upload``, signed by the device."""
        obj = {
            "user_id": self.user_id,
            "device_id": self.device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {f"ed25519:{self.device_id}": self.ed25519, f"curve25519:{self.device_id}": curve_key()},
            **extra,
        }
        return sign_json(obj, self.user_id, self.key)

    def one_time_keys(self, n: int, *, fallback: bool = False) -> dict[str, Any]:
        """``n`` signed_curve25519 keys signed by the device."""
        out = {}
        for _ in range(n):
            self.counter += 1
            obj: dict[str, Any] = {"key": curve_key()}
            if fallback:
                obj["fallback"] = True
            out[f"signed_curve25519:AAAA{self.counter:04d}"] = sign_json(obj, self.user_id, self.key)
        return out


@dataclass
class CrossSigning:
    """A user's three cross-signing keys (private parts), as a client holds them."""

    user_id: str
    keys: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for usage in ("master", "self_signing", "user_signing"):
            key = generate_signing_key("x")
            key.version = b64(key.verify_key.encode())
            self.keys[usage] = key

    def public(self, usage: str) -> str:
        return self.keys[usage].version

    def key_json(self, usage: str, *, signed_by: Optional[str] = "master") -> dict[str, Any]:
        """The public ``CrossSigningKey`` object; non-master keys signed by ``signed_by``."""
        pub = self.public(usage)
        obj = {"user_id": self.user_id, "usage": [usage], "keys": {f"ed25519:{pub}": pub}}
        if usage != "master" and signed_by is not None:
            obj = sign_json(obj, self.user_id, self.keys[signed_by])
        return obj

    def upload_body(self, **extra: Any) -> dict[str, Any]:
        return {
            "master_key": self.key_json("master"),
            "self_signing_key": self.key_json("self_signing"),
            "user_signing_key": self.key_json("user_signing"),
            **extra,
        }

    def sign(self, obj: dict[str, Any], usage: str, as_user: Optional[str] = None) -> dict[str, Any]:
        """``obj`` with a signature by the ``usage`` key added."""
        stripped = {k: v for k, v in obj.items() if k != "unsigned"}
        return sign_json(stripped, as_user or self.user_id, self.keys[usage])


# -- a client listener with the encryption endpoints ---------------------------------------

import json as _json  # noqa: E402

from twisted.internet import defer, reactor  # noqa: E402

from fedserver.http.client.keys import build_e2ee_services, register_key_routes  # noqa: E402
from fedserver.http.client.room_keys import register_room_keys_routes  # noqa: E402
from fedserver.http.client.to_device import register_to_device_routes  # noqa: E402
from tests.test_client_rooms import ClientRoomsTestCase, SERVER, q  # noqa: E402

REMOTE = "far.test"


class FakeFederationClient:
    """Answers federation requests from ``self.answers[(method, destination, path)]``
    (a value, an exception to raise, or a callable of the body); records every request."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str, str], Any] = {}
        self.requests: list[tuple[str, str, str, Any]] = []

    def _answer(self, method: str, destination: str, path: str, body: Any) -> defer.Deferred:
        self.requests.append((method, destination, path, body))
        answer = self.answers.get((method, destination, path))
        if answer is None:
            from fedserver.federation.client import HttpResponseError

            return defer.fail(HttpResponseError(404, "M_UNRECOGNIZED", "no answer", b""))
        if isinstance(answer, Exception):
            return defer.fail(answer)
        if callable(answer):
            return defer.maybeDeferred(answer, body)
        return defer.succeed(_json.loads(_json.dumps(answer)))

    def get_json(self, destination: str, path: str, args: Any = None, **kw: Any) -> defer.Deferred:
        return self._answer("GET", destination, path, None)

    def post_json(self, destination: str, path: str, body: Any, args: Any = None, **kw: Any) -> defer.Deferred:
        return self._answer("POST", destination, path, body)


class E2eeTestCase(ClientRoomsTestCase):
    """The client listener with the room and encryption endpoints, the device-list and
    to-device sections in /sync, a fake federation client, and the real outbound queue
    (``outbound(server)`` reads what was queued)."""

    max_pending_to_device: Optional[int] = None

    async def _set_up(self) -> None:
        await super()._set_up()
        self.federation = FakeFederationClient()
        self.woken: list[list[str]] = []
        self.e2ee = build_e2ee_services(
            store=self.store, server_name=SERVER, federation_client=self.federation,
            accounts=self.api.accounts, call_from_thread=reactor.callFromThread,
            notify_users=lambda users: self.services.notifier.notify(users=users),
            wake_destinations=lambda dests: self.woken.append(sorted(dests)),
            max_pending_to_device=self.max_pending_to_device,
        )
        for section in self.e2ee.sync_sections():
            self.services.sync.register_section(section)
        register_key_routes(self.api, self.e2ee)
        register_to_device_routes(self.api, self.e2ee.to_device)
        register_room_keys_routes(self.api, self.e2ee.key_backup)
        self.pipeline = self.services.events.pipeline

    async def login_user(self, localpart: str) -> tuple[str, str, str]:
        """Register ``localpart``; returns ``(user_id, access token, device id)``."""
        code, body = await self.call(
            "POST", "/register", {"username": localpart, "password": "pw-" + localpart, "auth": {"type": "m.login.dummy"}}
        )
        self.assertEqual(code, 200, body)
        return body["user_id"], body["access_token"], body["device_id"]

    async def login_again(self, localpart: str) -> tuple[str, str]:
        """A second device of an existing user; returns ``(token, device id)``."""
        code, body = await self.call("POST", "/login", {
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": localpart}, "password": "pw-" + localpart,
        })
        self.assertEqual(code, 200, body)
        return body["access_token"], body["device_id"]

    async def upload_device(self, user_id: str, token: str, device_id: str, otks: int = 0, fallback: bool = False) -> Device:
        """Upload signed device keys (and one-time / fallback keys) for a device."""
        dev = Device(user_id, device_id)
        body: dict[str, Any] = {"device_keys": dev.device_keys()}
        if otks:
            body["one_time_keys"] = dev.one_time_keys(otks)
        if fallback:
            body["fallback_keys"] = dev.one_time_keys(1, fallback=True)
        code, resp = await self.call("POST", "/keys/upload", body, token=token)
        self.assertEqual(code, 200, resp)
        return dev

    async def outbound(self, server: str) -> list[dict[str, Any]]:
        """The EDUs queued for ``server`` (in order)."""
        batch = await self.store.get_outbound_batch(server, 50, 1000)
        return [_json.loads(item) for _, kind, item in batch if kind == "edu"]

    async def remote_join(self, room_id: str, user_id: str) -> None:
        """A user of another server joins one of our (public) rooms (signatures are not
        the point here: the event goes straight into the pipeline)."""
        rv = await self.store.get_room_version(room_id)
        event, outcome = await self.services.events.creator.send(
            room_id, rv, type="m.room.member", sender=user_id, state_key=user_id, content={"membership": "join"}
        )
        self.assertTrue(outcome.accepted, outcome)

    async def remote_leave(self, room_id: str, user_id: str) -> None:
        rv = await self.store.get_room_version(room_id)
        event, outcome = await self.services.events.creator.send(
            room_id, rv, type="m.room.member", sender=user_id, state_key=user_id, content={"membership": "leave"}
        )
        self.assertTrue(outcome.accepted, outcome)

    async def public_room(self, token: str) -> str:
        code, body = await self.call("POST", "/createRoom", {"preset": "public_chat"}, token=token)
        self.assertEqual(code, 200, body)
        return body["room_id"]

    async def sync(self, token: str, since: Optional[str] = None, **params: Any) -> dict[str, Any]:
        path = "/sync"
        args = dict(params)
        if since is not None:
            args["since"] = since
        if args:
            path += "?" + "&".join(f"{k}={q(str(v))}" for k, v in args.items())
        code, body = await self.call("GET", path, token=token)
        self.assertEqual(code, 200, body)
        return body
