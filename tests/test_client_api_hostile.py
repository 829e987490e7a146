"""Hostile client input to the account endpoints: lone surrogates, NUL, huge and odd values never answer 500."""

from __future__ import annotations

import json

from fedserver.handlers.client.accounts import registration_mac
from tests.test_client_api_support import SECRET, ClientApiTestCase, q

C = "/_matrix/client/v3"
SURROGATE = "\ud800"


def raw(body: dict) -> bytes:
    """JSON with lone surrogates written as escapes (what a hostile client can send)."""
    return json.dumps(body).encode()


class HostileInputTests(ClientApiTestCase):
    """Every answer is a Matrix error with a 4xx status (or a success), never a 500."""

    def assertClientError(self, result, allowed=(400, 401, 403, 404, 405, 413)):
        code, body = result
        self.assertIn(code, allowed, body)
        self.assertIsInstance(body.get("errcode"), str, body)
        return body

    async def test_lone_surrogates(self):
        """Lone surrogates in usernames, passwords, device fields, display names, account
        data, filters and the admin API are refused with 4xx (400 M_NOT_JSON: the parser refuses them)."""
        self.limiter.rules = {}
        reg = await self.register("victim", "pw")
        tok, uid = reg["access_token"], q(reg["user_id"])
        s = SURROGATE
        cases = [
            ("POST", f"{C}/register", {"username": "a" + s, "password": "p", "auth": {"type": "m.login.dummy"}}, None),
            ("POST", f"{C}/register", {"username": "surr", "password": "p", "initial_device_display_name": s, "auth": {"type": "m.login.dummy"}}, None),
            ("POST", f"{C}/register", {"username": "surr2", "password": "p", "device_id": s, "auth": {"type": "m.login.dummy"}}, None),
            ("POST", f"{C}/login", {"type": "m.login.password", "user": "victim" + s, "password": "pw"}, None),
            ("POST", f"{C}/login", {"type": "m.login.password", "user": "victim", "password": "pw", "device_id": s}, None),
            ("PUT", f"{C}/profile/{uid}/displayname", {"displayname": s}, tok),
            ("PUT", f"{C}/profile/{uid}/avatar_url", {"avatar_url": "mxc://a/" + s}, tok),
            ("PUT", f"{C}/user/{uid}/account_data/t", {"k": s}, tok),
            ("PUT", f"{C}/user/{uid}/account_data/t", {s: 1}, tok),
            ("POST", f"{C}/user/{uid}/filter", {"room": {"rooms": [s]}}, tok),
            ("PUT", f"{C}/devices/{reg['device_id']}", {"display_name": s}, tok),
        ]
        for method, path, body, token in cases:
            self.assertClientError(await self.call(method, path, raw=raw(body), token=token))
        self.assertIsNone(await self.store.accounts.get_user("@surr:test.example"))
        # Even where it would be harmless (a password is only hashed), a lone surrogate is
        # not valid JSON text for us: 400 M_NOT_JSON, nothing created.
        code, body = await self.call("POST", f"{C}/register", raw=raw({"username": "surrpw", "password": "p" + s, "auth": {"type": "m.login.dummy"}}))
        self.assertEqual((code, body["errcode"]), (400, "M_NOT_JSON"))
        self.assertIsNone(await self.store.accounts.get_user("@surrpw:test.example"))
        code, body = await self.call("POST", f"{C}/login", raw=raw({"type": "m.login.password", "user": "victim", "password": "pw" + s}))
        self.assertEqual((code, body["errcode"]), (400, "M_NOT_JSON"))
        # The admin API.
        code, body = await self.call("GET", "/_synapse/admin/v1/register")
        nonce = body["nonce"]
        admin = {"nonce": nonce, "username": "adm", "password": "p" + s, "displayname": s, "admin": False,
                 "mac": registration_mac(SECRET, nonce, "adm", "p" + s, False)}
        self.assertClientError(await self.call("POST", "/_synapse/admin/v1/register", raw=raw(admin)))

    async def test_odd_paths_and_tokens(self):
        """Invalid UTF-8 in path segments, NUL and SQL-ish ids, odd tokens: 4xx."""
        reg = await self.register("paths", "pw")
        tok = reg["access_token"]
        self.assertClientError(await self.call("GET", f"{C}/profile/%FF%FE"))
        self.assertClientError(await self.call("GET", f"{C}/profile/{q('@x%00:test.example')}"))
        self.assertClientError(await self.call("GET", f"{C}/profile/{q(chr(0) + '@x:test.example')}"))
        self.assertClientError(await self.call("GET", f"{C}/user/{q(reg['user_id'])}/rooms/{q('!x' + chr(0))}/account_data/t", token=tok))
        self.assertClientError(await self.call("GET", f"{C}/user/{q(reg['user_id'])}/filter/1%27%20OR%201=1", token=tok))
        self.assertClientError(await self.call("GET", f"{C}/account/whoami", token="x" * 5000))
        self.assertClientError(await self.call("GET", f"{C}/account/whoami?access_token=%FF"))
        self.assertClientError(await self.call("GET", f"{C}/account/whoami", headers={"Authorization": ["Bearer \u00e9"]}))
        self.assertClientError(await self.call("GET", f"{C}/account/whoami", headers={"Authorization": ["Bearer"]}))

    async def test_odd_json(self):
        """Deep nesting, NaN, huge numbers and wrong types in login/register bodies: 4xx."""
        self.limiter.rules = {}
        deep = b"[" * 10000 + b"]" * 10000
        for body in (deep, b'{"type": NaN}', b'{"type": 1e400}', b"null", b'"str"'):
            self.assertClientError(await self.call("POST", f"{C}/login", raw=body))
            self.assertClientError(await self.call("POST", f"{C}/register", raw=body))
        for body in ({"type": ["m.login.password"]}, {"type": "m.login.password", "identifier": "x"},
                     {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": ["x"]}, "password": "p"},
                     {"type": "m.login.password", "user": "x", "password": {"p": 1}},
                     {"type": "m.login.password", "user": "x", "password": "p", "device_id": ""}):
            self.assertClientError(await self.call("POST", f"{C}/login", body))
