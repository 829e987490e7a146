"""``/.well-known/matrix/server`` and ``/.well-known/matrix/client`` (spec "Server Discovery")."""

# Server-Server "Resolving server names" step 3: ``GET https://<hostname>/.well-known/matrix/server``
# answers ``{"m.server": "<delegated server name>[:<port>]"}``. Client-Server "Well-known
# URIs": ``GET https://<hostname>/.well-known/matrix/client`` answers
# ``{"m.homeserver": {"base_url": ...}}``; servers "SHOULD offer CORS headers" on it (the
# client listener adds them). Both are served from the resource built here when the
# operator turns ``serve_well_known`` on: mount it at ``/.well-known/matrix`` on the
# listener the host's port 443 reaches (usually through a reverse proxy).

from __future__ import annotations

from typing import Any, Optional

from fedserver.config import split_server_name
from fedserver.http.resource import JsonResource

#: Where the resource is mounted.
WELL_KNOWN_PATH = "/.well-known/matrix"


def well_known_documents(server_name: str, *, server: Optional[str], public_baseurl: Optional[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two documents: ``m.server`` is ``server`` (default: the server name's host on
    port 443, where a reverse proxy terminating TLS usually listens), ``base_url`` is
    ``public_baseurl`` (default: ``https://`` and the server name's host).

    :returns: ``(server document, client document)``.
    """
    host, _ = split_server_name(server_name)
    shown_host = f"[{host}]" if ":" in host else host
    delegated = server if server else f"{shown_host}:443"
    base_url = (public_baseurl if public_baseurl else f"https://{shown_host}").rstrip("/")
    return {"m.server": delegated}, {"m.homeserver": {"base_url": base_url}}


def build_well_known_resource(server_name: str, *, server: Optional[str] = None, public_baseurl: Optional[str] = None) -> JsonResource:
    """The resource answering ``GET /server`` and ``GET /client`` below :data:`WELL_KNOWN_PATH`."""
    server_doc, client_doc = well_known_documents(server_name, server=server, public_baseurl=public_baseurl)
    resource = JsonResource()
    resource.add_route("GET", "/server", lambda request: server_doc)
    resource.add_route("GET", "/client", lambda request: client_doc)
    return resource


__all__ = ["WELL_KNOWN_PATH", "build_well_known_resource", "well_known_documents"]
