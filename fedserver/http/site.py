"""The URL trees of the federation and client listeners: which resource answers under which path."""

from __future__ import annotations

from typing import Mapping

from twisted.web import resource
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from fedserver.errors import MatrixError, M_UNKNOWN
from fedserver.http.federation.keys import SERVER_KEY_PATH
from fedserver.http.resource import PathNode, build_tree, encode_json

FEDERATION_V1_PATH = "/_matrix/federation/v1"
FEDERATION_V2_PATH = "/_matrix/federation/v2"
KEY_QUERY_PATH = "/_matrix/key/v2/query"
CLIENT_PATH = "/_matrix/client"


def _mounts(base: dict[str, IResource | None], extra: Mapping[str, IResource] | None) -> dict[str, IResource]:
    mounts = {path: res for path, res in base.items() if res is not None}
    for path, res in (extra or {}).items():
        if path in mounts:
            raise ValueError(f"{path} is mounted twice")
        mounts[path] = res
    return mounts


def build_federation_root(
    *,
    server_keys: IResource,
    key_query: IResource | None = None,
    federation_v1: IResource | None = None,
    federation_v2: IResource | None = None,
    extra: Mapping[str, IResource] | None = None,
) -> PathNode:
    """Build the federation listener's tree; everything else answers 404 ``M_UNRECOGNIZED``.

    :param server_keys: ``GET /_matrix/key/v2/server`` (:class:`fedserver.http.federation.keys.ServerKeyResource`).
    :param key_query: the notary, mounted at ``/_matrix/key/v2/query``.
    :param federation_v1: the resource for everything under ``/_matrix/federation/v1``.
    :param federation_v2: the resource for everything under ``/_matrix/federation/v2``.
    :param extra: more ``{absolute path: resource}`` mounts.
    :raises ValueError: for overlapping mounts.
    """
    return build_tree(
        _mounts(
            {
                SERVER_KEY_PATH: server_keys,
                KEY_QUERY_PATH: key_query,
                FEDERATION_V1_PATH: federation_v1,
                FEDERATION_V2_PATH: federation_v2,
            },
            extra,
        )
    )


def build_client_root(
    *, client: IResource | None = None, extra: Mapping[str, IResource] | None = None
) -> PathNode:
    """Build the client listener's tree; everything else answers 404 ``M_UNRECOGNIZED``.

    :param client: the resource for everything under ``/_matrix/client``.
    :param extra: more ``{absolute path: resource}`` mounts (e.g. ``/_synapse/admin``).
    :raises ValueError: for overlapping mounts.
    """
    return build_tree(_mounts({CLIENT_PATH: client}, extra))


class StartingResource(resource.Resource):
    """Stands in for a listener's tree until the server is ready: 503 ``M_UNKNOWN``.

    Listeners bind at startup (so a busy port fails the start loudly) while the database
    is still opening; requests in that window are told to retry.
    """

    isLeaf = True

    def render(self, request: IRequest) -> bytes:
        err = MatrixError(503, M_UNKNOWN, "Server is starting; retry shortly")
        request.setResponseCode(err.code)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Retry-After", b"1")
        return encode_json(err.to_json())
