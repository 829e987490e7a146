"""Helpers for tests, ours and plugin authors': whole servers started in-process on loopback."""

from __future__ import annotations

import os
import socket
from typing import Any

from fedserver.config import Config, config_from_dict


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_config(directory: str, port: int | None = None, **extra: Any) -> Config:
    """The configuration of a test server in ``directory`` (created if missing), named
    ``127.0.0.1:<port>`` and federating over TLS on that port with other loopback servers
    (self-signed certificates accepted, private addresses allowed).

    :param extra: any option to change, as in the YAML file.
    """
    os.makedirs(directory, exist_ok=True)
    port = port or free_port()
    raw = {
        "server_name": f"127.0.0.1:{port}",
        "database_path": os.path.join(directory, "fedserver.db"),
        "signing_key_path": os.path.join(directory, "signing.key"),
        "tls_certificate_path": os.path.join(directory, "tls.crt"),
        "tls_private_key_path": os.path.join(directory, "tls.key"),
        "federation_listen": f"127.0.0.1:{port}",
        "client_listen": "127.0.0.1:0",
        "federation_verify_certificates": False,
        "federation_allow_private_addresses": True,
        "federation_client_timeout": 20,
    }
    raw.update(extra)
    return config_from_dict(raw)


async def start_server(test: Any, config: Config, reactor: Any = None):
    """Start a :class:`fedserver.service.FedserverService` for a trial ``test`` (stopped at
    its cleanup) and wait until it serves.

    :returns: the running service.
    """
    from fedserver.service import FedserverService

    if reactor is None:
        from twisted.internet import reactor
    svc = FedserverService(config, reactor)
    svc.privilegedStartService()
    svc.startService()
    test.addCleanup(lambda: svc.stopService() if svc.running else None)
    await svc.when_ready()
    return svc
