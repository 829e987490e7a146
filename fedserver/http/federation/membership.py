"""The membership handshake endpoints (make_/send_ join, leave, knock; invite) as routes."""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest

from fedserver.handlers.federation.history import is_valid_id
from fedserver.handlers.federation.handshakes import HandshakeHandler
from fedserver.errors import bad_json, invalid_param
from fedserver.http.resource import query_string, query_strings, read_json_body


def _room_id(value: str) -> str:
    if not is_valid_id(value, "!"):
        raise invalid_param("roomId", "Invalid room id")
    return value


def _event_id(value: str) -> str:
    if not is_valid_id(value, "$"):
        raise invalid_param("eventId", "Invalid event id")
    return value


def _user_id(value: str) -> str:
    if not is_valid_id(value, "@"):
        raise invalid_param("userId", "Invalid user id")
    return value


class _Routes:
    """Thin adapters: validate path parameters, call the :class:`HandshakeHandler`, and
    shape v1 answers (``[200, body]``). The make_/send_ handlers check the room's server
    ACL themselves, once they know the origin may see the room (a private room must look
    non-existent, whatever its ACL); invites are checked here."""

    def __init__(self, resource: Any, handler: HandshakeHandler) -> None:
        self._resource = resource
        self._handler = handler

    def make(self, membership: str, versions: bool):
        async def run(request: IRequest, origin: str, room_id: str, user_id: str) -> Any:
            room_id, user_id = _room_id(room_id), _user_id(user_id)
            ver = query_strings(request, "ver") if versions else None
            return await self._handler.make_membership(origin, room_id, user_id, membership, ver)

        return run

    def send(self, membership: str, v1: bool):
        async def run(request: IRequest, origin: str, room_id: str, event_id: str) -> Any:
            room_id, event_id = _room_id(room_id), _event_id(event_id)
            omit_members = False
            if not v1 and membership == "join":
                # send_join v2 ``omit_members`` (Matrix 1.6, MSC3706): "true" or "false";
                # anything else is 400 M_INVALID_PARAM.
                value = query_string(request, "omit_members", "false")
                if value not in ("true", "false"):
                    raise invalid_param("omit_members", "omit_members must be true or false")
                omit_members = value == "true"
            pdu = read_json_body(request)
            body = await self._handler.send_membership(
                origin, room_id, event_id, pdu, membership, omit_members=omit_members
            )
            if v1 and membership != "knock":
                if membership == "join":
                    # v1 answers [200, {...}]: the whole object, not streamed.
                    body = await body.collect()
                    body = {k: body[k] for k in ("auth_chain", "state", "event", "origin") if k in body}
                return [200, body]
            return body

        return run

    def invite(self, v1: bool):
        async def run(request: IRequest, origin: str, room_id: str, event_id: str) -> Any:
            room_id, event_id = _room_id(room_id), _event_id(event_id)
            await self._resource.check_acl(origin, room_id)
            body = read_json_body(request)
            if v1:
                # v1 sends the bare event; only rooms v1-2 could be sent that way.
                if not isinstance(body, dict):
                    raise bad_json("The body must be an event")
                unsigned = body.get("unsigned") if isinstance(body.get("unsigned"), dict) else {}
                answer = await self._handler.on_invite(
                    origin, room_id, event_id, body, "1", unsigned.get("invite_room_state")
                )
                return [200, answer]
            if not isinstance(body, dict):
                raise bad_json("The body must be an object")
            return await self._handler.on_invite(
                origin, room_id, event_id, body.get("event"), body.get("room_version"), body.get("invite_room_state")
            )

        return run


def register_membership_routes(v1_resource: Any, v2_resource: Any, handler: HandshakeHandler) -> None:
    """Add the handshake endpoints to the ``/_matrix/federation/v1`` and ``/v2`` resources
    (each a :class:`fedserver.http.federation.transport.FederationResource`).

    :raises ValueError: if a route is already registered.
    """
    r1, r2 = _Routes(v1_resource, handler), _Routes(v2_resource, handler)
    auth1, add1 = v1_resource.authenticated, v1_resource.add_route
    auth2, add2 = v2_resource.authenticated, v2_resource.add_route
    add1("GET", "/make_join/{room_id}/{user_id}", auth1(r1.make("join", versions=True)))
    add1("GET", "/make_leave/{room_id}/{user_id}", auth1(r1.make("leave", versions=False)))
    add1("GET", "/make_knock/{room_id}/{user_id}", auth1(r1.make("knock", versions=True)))
    add1("PUT", "/send_join/{room_id}/{event_id}", auth1(r1.send("join", v1=True)))
    add1("PUT", "/send_leave/{room_id}/{event_id}", auth1(r1.send("leave", v1=True)))
    add1("PUT", "/send_knock/{room_id}/{event_id}", auth1(r1.send("knock", v1=True)))
    add1("PUT", "/invite/{room_id}/{event_id}", auth1(r1.invite(v1=True)))
    add2("PUT", "/send_join/{room_id}/{event_id}", auth2(r2.send("join", v1=False)))
    add2("PUT", "/send_leave/{room_id}/{event_id}", auth2(r2.send("leave", v1=False)))
    add2("PUT", "/invite/{room_id}/{event_id}", auth2(r2.invite(v1=False)))


__all__ = ["register_membership_routes"]
