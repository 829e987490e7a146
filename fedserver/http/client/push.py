"""Client endpoints for push rules, pushers and notifications, and their wiring."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from fedserver.errors import bad_json, missing_param, not_found
from fedserver.handlers.push.notifications import NotificationsHandler
from fedserver.handlers.push.pushers import PostJson, PushersHandler
from fedserver.handlers.push.rules import PushRulesHandler
from fedserver.http.client.ephemeral import json_body
from fedserver.http.resource import query_int, query_string

#: Where the global ruleset lives (the only scope the spec defines).
SCOPE = "global"


@dataclass
class PushServices:
    """The handlers of the push area (see :func:`build_push_services`)."""

    rules: PushRulesHandler
    notifications: NotificationsHandler
    pushers: PushersHandler


def build_push_services(
    *,
    store: Any,
    server_name: str,
    clock: Any,
    notifier: Any,
    source: Any,
    post_json: Optional[PostJson] = None,
    allow_http_gateways: bool = False,
) -> PushServices:
    """Build the push rules, notifications and pushers handlers; notifications are handed
    to the pushers for delivery.

    :param source: the rooms' ``ClientEventSource`` (events in ``GET /notifications``).
    :param post_json: sends a request to a push gateway (``None``: no delivery).
    """
    rules = PushRulesHandler(store, notifier)
    notifications = NotificationsHandler(store, server_name, clock, notifier, rules, source)
    pushers = PushersHandler(store, clock, post_json, allow_http=allow_http_gateways)
    notifications.on_notify.append(pushers.on_notify_many)
    return PushServices(rules, notifications, pushers)


def _check_scope(scope: str) -> None:
    if scope != SCOPE:
        raise not_found("Unknown push rule scope")


def register_push_routes(client_api: Any, services: PushServices) -> None:
    """Add ``/pushrules``, ``/pushers``, ``/pushers/set`` and ``/notifications`` (each also
    under ``/r0/``)."""
    rules, notifications, pushers = services.rules, services.notifications, services.pushers
    authed = client_api.add_authed_route

    async def all_rules(request, requester):
        return {SCOPE: await rules.get_ruleset(requester.user_id)}

    async def scope_rules(request, requester, scope):
        _check_scope(scope)
        return await rules.get_ruleset(requester.user_id)

    async def get_rule(request, requester, scope, kind, rule_id):
        _check_scope(scope)
        return await rules.get_rule(requester.user_id, kind, rule_id)

    async def put_rule(request, requester, scope, kind, rule_id):
        _check_scope(scope)
        body = json_body(request)
        await rules.put_rule(
            requester.user_id, kind, rule_id, body,
            before=query_string(request, "before", None), after=query_string(request, "after", None),
        )
        return {}

    async def delete_rule(request, requester, scope, kind, rule_id):
        _check_scope(scope)
        await rules.delete_rule(requester.user_id, kind, rule_id)
        return {}

    def attribute(attr):
        async def get(request, requester, scope, kind, rule_id):
            _check_scope(scope)
            rule = await rules.get_rule(requester.user_id, kind, rule_id)
            return {attr: rule[attr]}

        async def put(request, requester, scope, kind, rule_id):
            _check_scope(scope)
            body = json_body(request)
            if attr not in body:
                raise missing_param(attr)
            await rules.set_attribute(requester.user_id, kind, rule_id, attr, body[attr])
            return {}

        return get, put

    authed("GET", "/v3/pushrules", all_rules)
    authed("GET", "/v3/pushrules/{scope}", scope_rules)
    authed("GET", "/v3/pushrules/{scope}/{kind}/{rule_id}", get_rule)
    authed("PUT", "/v3/pushrules/{scope}/{kind}/{rule_id}", put_rule)
    authed("DELETE", "/v3/pushrules/{scope}/{kind}/{rule_id}", delete_rule)
    for attr in ("enabled", "actions"):
        get, put = attribute(attr)
        authed("GET", f"/v3/pushrules/{{scope}}/{{kind}}/{{rule_id}}/{attr}", get)
        authed("PUT", f"/v3/pushrules/{{scope}}/{{kind}}/{{rule_id}}/{attr}", put)

    async def get_pushers(request, requester):
        return await pushers.get_pushers(requester)

    async def set_pusher(request, requester):
        await pushers.set_pusher(requester, json_body(request))
        return {}

    async def get_notifications(request, requester):
        only = query_string(request, "only", None)
        if only is not None and len(only) > 100:
            raise bad_json("only is too long")
        return await notifications.get_notifications(
            requester,
            from_token=query_string(request, "from", None),
            limit=query_int(request, "limit", None, minimum=1, maximum=1000),
            only=only,
        )

    authed("GET", "/v3/pushers", get_pushers)
    authed("POST", "/v3/pushers/set", set_pusher)
    authed("GET", "/v3/notifications", get_notifications)


__all__ = ["PushServices", "SCOPE", "build_push_services", "register_push_routes"]
