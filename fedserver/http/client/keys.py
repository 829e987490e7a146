"""The encryption key endpoints of the Client-Server API (/keys/*), and the wiring of the end-to-end encryption handlers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from twisted.web.iweb import IRequest

from fedserver.errors import too_large
from fedserver.handlers.e2ee.cross_signing import CrossSigningHandler
from fedserver.handlers.e2ee.device_lists import DeviceListChanges, RemoteDeviceLists
from fedserver.handlers.e2ee.devices import DEVICE_LIST_UPDATE, SIGNING_KEY_UPDATE, LocalDeviceLists
from fedserver.handlers.e2ee.e2e_keys import E2eKeysHandler
from fedserver.handlers.e2ee.key_backup import KeyBackupHandler
from fedserver.handlers.e2ee.to_device import DIRECT_TO_DEVICE, ToDeviceHandler
from fedserver.http.resource import query_string, read_json_object

#: Largest body of the key endpoints (a /keys/upload of 1,000 signed keys is ~300 KiB).
MAX_KEYS_BODY = 2 * 1024 * 1024


def json_body(request: IRequest, limit: int = MAX_KEYS_BODY) -> dict[str, Any]:
    """The JSON object body, refused beyond ``limit`` bytes.

    :raises MatrixError: 413 ``M_TOO_LARGE``; 400 ``M_NOT_JSON`` / ``M_BAD_JSON``.
    """
    content = request.content
    if content is not None:
        content.seek(0, 2)
        if content.tell() > limit:
            raise too_large(f"Body larger than {limit} bytes")
    return read_json_object(request)


@dataclass
class E2eeServices:
    """The end-to-end encryption handlers, built once per server (see
    :func:`build_e2ee_services`)."""

    local_lists: LocalDeviceLists
    remote_lists: RemoteDeviceLists
    changes: DeviceListChanges
    keys: E2eKeysHandler
    cross_signing: CrossSigningHandler
    to_device: ToDeviceHandler
    key_backup: KeyBackupHandler

    def sync_sections(self) -> list[Any]:
        """The ``/sync`` sections: to-device messages with key counts (``d``), device
        lists (``l``)."""
        return [self.to_device, self.changes]

    def edu_handlers(self) -> dict[str, Callable[[str, dict[str, Any]], Any]]:
        """The EDU types handled, for ``TransactionHandler.register_edu_handler``."""
        return {
            DEVICE_LIST_UPDATE: self.remote_lists.on_device_list_update,
            SIGNING_KEY_UPDATE: self.remote_lists.on_signing_key_update,
            DIRECT_TO_DEVICE: self.to_device.on_edu,
        }


def build_e2ee_services(
    *,
    store: Any,
    server_name: str,
    federation_client: Any,
    accounts: Any,
    call_from_thread: Callable[..., Any],
    notify_users: Callable[[Iterable[str]], None],
    wake_destinations: Callable[[Iterable[str]], None],
    max_pending_to_device: Optional[int] = None,
) -> E2eeServices:
    """Build the handlers and hook device deletion and renaming
    (``store.accounts.device_change_hooks``).

    :param accounts: the :class:`~fedserver.handlers.client.accounts.AccountHandler`
        (password UIA for replacing cross-signing keys).
    :param call_from_thread: ``reactor.callFromThread`` (after-commit work).
    :param notify_users: wakes our users' /sync long-polls.
    :param wake_destinations: ``FederationSender.wake``.
    """
    local = LocalDeviceLists(
        store, server_name, call_from_thread=call_from_thread, notify_users=notify_users,
        wake_destinations=wake_destinations,
    )
    remote = RemoteDeviceLists(store, server_name, federation_client, call_from_thread=call_from_thread, notify_users=notify_users)
    keys = E2eKeysHandler(store, local, remote, federation_client)
    extra = {} if max_pending_to_device is None else {"max_pending": max_pending_to_device}
    to_device = ToDeviceHandler(
        store, server_name, call_from_thread=call_from_thread, notify_users=notify_users,
        wake_destinations=wake_destinations, **extra,
    )
    store.accounts.device_change_hooks.append(local.on_devices_changed_txn)
    return E2eeServices(
        local_lists=local,
        remote_lists=remote,
        changes=DeviceListChanges(store),
        keys=keys,
        cross_signing=CrossSigningHandler(store, local, keys, accounts),
        to_device=to_device,
        key_backup=KeyBackupHandler(store),
    )


def register_key_routes(client_api: Any, services: E2eeServices) -> None:
    """Add ``/keys/*`` to a :class:`~fedserver.http.client.api.ClientAPI` (each also
    under ``/r0/``)."""
    authed = client_api.add_authed_route
    keys, cross = services.keys, services.cross_signing

    async def upload(request, requester):
        return await keys.upload(requester, json_body(request))

    async def query(request, requester):
        return await keys.query(requester, json_body(request))

    async def claim(request, requester):
        return await keys.claim(requester, json_body(request))

    async def changes(request, requester):
        return await services.changes.keys_changes(
            requester.user_id, query_string(request, "from"), query_string(request, "to")
        )

    async def device_signing_upload(request, requester):
        await cross.upload_signing_keys(requester, json_body(request))
        return {}

    async def signatures_upload(request, requester):
        return await cross.upload_signatures(requester, json_body(request))

    authed("POST", "/v3/keys/upload", upload)
    authed("POST", "/v3/keys/query", query)
    authed("POST", "/v3/keys/claim", claim)
    authed("GET", "/v3/keys/changes", changes)
    authed("POST", "/v3/keys/device_signing/upload", device_signing_upload)
    authed("POST", "/v3/keys/signatures/upload", signatures_upload)


__all__ = ["E2eeServices", "MAX_KEYS_BODY", "build_e2ee_services", "json_body", "register_key_routes"]
