"""fedserver-admin: manage users, rooms and destinations of a running server through its admin API."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Optional, Sequence, TextIO

from fedserver.events.canonical import parse_json
from fedserver.scripts.refusals import EXIT_OK, EXIT_USAGE, _Parser

PROG = "fedserver-admin"
#: Exit status when the server answered with an error (the error is printed).
EXIT_REFUSED = 1
#: How long ``rooms purge`` waits for the purge to finish.
PURGE_WAIT_S = 600

DESCRIPTION = """\
Manage a running fedserver through its admin API (/_synapse/admin on the client listener).
Every command needs the access token of a server admin: --token, or the environment
variable FEDSERVER_ADMIN_TOKEN. Get one with 'fedserver-admin login USER' (the user must be
an admin: 'fedserver-register --admin' makes one). The server's address is --url, or
FEDSERVER_ADMIN_URL, or the client_listen of --config, or http://127.0.0.1:8008.

The server must be running: deactivating a user or deleting a room sends events to the
rooms' other servers, which only the running server can do.
"""

EPILOG = """\
exit status: 0 on success, 1 if the server refused (its Matrix error is printed),
2 for usage errors or when the server cannot be reached.
"""


class CliFailure(Exception):
    """One line for stderr, and the exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def q(value: str) -> str:
    """A path segment (ids percent-encoded, ``/`` included)."""
    return urllib.parse.quote(value, safe="")


def base_url_from_config(path: Optional[str]) -> Optional[str]:
    """``http://HOST:PORT`` of the client listener of the configuration file ``path``
    (0.0.0.0 and :: become loopback); ``None`` for an endpoint description we cannot read."""
    from fedserver.config import ConfigError, is_endpoint_description, load_config
    from fedserver.config import _parse_host_port  # noqa: PLC2701 - the same parser the server uses

    try:
        listen = load_config(path).client_listen
    except ConfigError as e:
        raise CliFailure(str(e), EXIT_USAGE) from None
    if is_endpoint_description(listen):
        parts = listen.split(":")
        if parts[0] != "tcp" or len(parts) < 2 or not parts[1].isdigit():
            return None
        port, host = int(parts[1]), "127.0.0.1"
        for p in parts[2:]:
            if p.startswith("interface="):
                host = p.split("=", 1)[1] or host
    else:
        h, port = _parse_host_port(listen)
        host = h or "127.0.0.1"
    if host in ("0.0.0.0", "::", "*"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


class AdminClient:
    """Blocking JSON calls to the admin API.

    :param base_url: ``http://host:port`` of the client listener.
    :param token: an admin's access token (``None`` for ``login``).
    """

    def __init__(self, base_url: str, token: Optional[str], timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None, params: Optional[dict[str, Any]] = None) -> Any:
        """:returns: the decoded JSON answer.
        :raises CliFailure: the server's Matrix error (status 1), or no answer (2)."""
        url = self.base_url + path
        if params:
            clean = {k: ("true" if v is True else "false" if v is False else v) for k, v in params.items() if v is not None}
            if clean:
                url += "?" + urllib.parse.urlencode(clean)
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                return parse_json(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            try:
                err = parse_json(e.read())
            except ValueError:
                err = {}
            if not isinstance(err, dict):
                err = {}
            raise CliFailure(f"{e.code} {err.get('errcode', '?')}: {err.get('error', e.reason)}", EXIT_REFUSED) from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise CliFailure(f"cannot reach the server at {self.base_url}: {reason}", EXIT_USAGE) from None


# -- output -------------------------------------------------------------------------------------


def table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Rows as an aligned text table with the given ``(key, heading)`` columns."""
    if not rows:
        return "(none)"

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "yes" if v else "no"
        return str(v).replace("\n", " ")

    grid = [[h for _, h in columns]] + [[cell(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in grid) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in grid)


def _user_id(value: str, server_name: Optional[str]) -> str:
    if value.startswith("@") or server_name is None:
        return value
    return f"@{value}:{server_name}"


# -- the command line ---------------------------------------------------------------------------


def build_parser(stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr) -> argparse.ArgumentParser:
    """The command line of ``fedserver-admin``."""
    class Parser(_Parser):
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, stdout=stdout, stderr=stderr, **kw)

    p = Parser(prog=PROG, description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", metavar="FILE", help="server configuration (client_listen gives the address)")
    p.add_argument("--url", help="the client listener, e.g. http://127.0.0.1:8008")
    p.add_argument("--token", help="an admin's access token (default: $FEDSERVER_ADMIN_TOKEN)")
    p.add_argument("--json", action="store_true", help="print the server's JSON answers")
    top = p.add_subparsers(dest="area", metavar="COMMAND", parser_class=Parser)
    top.required = True

    login = top.add_parser("login", help="log an admin in and print an access token")
    login.add_argument("user", help="localpart or user id")
    login.add_argument("--password-file", help="read the password from this file ('-': standard input)")

    users = top.add_parser("users", help="list, show, create, deactivate users; reset passwords").add_subparsers(
        dest="action", metavar="ACTION")
    users.required = True
    ul = users.add_parser("list", help="local users")
    ul.add_argument("--name", help="only ids or display names containing this")
    ul.add_argument("--deactivated", action="store_true", help="include deactivated users")
    ul.add_argument("--admins", action="store_true", help="only admins")
    ul.add_argument("--limit", type=int, default=100)
    ul.add_argument("--from", dest="offset", type=int, default=0)
    for name, text in (("show", "one user"), ("devices", "a user's devices"), ("rooms", "rooms a user is in")):
        users.add_parser(name, help=text).add_argument("user")
    uc = users.add_parser("create", help="create a user (or change an existing one)")
    uc.add_argument("user")
    uc.add_argument("--password-file", help="read the password from this file ('-': standard input); default: ask")
    uc.add_argument("--no-password", action="store_true", help="no password (the user cannot log in)")
    uc.add_argument("--admin", action="store_true")
    uc.add_argument("--displayname")
    ud = users.add_parser("deactivate", help="deactivate: logs out, leaves rooms, cannot log in again")
    ud.add_argument("user")
    ud.add_argument("--erase", action="store_true", help="also erase the profile and account data")
    ur = users.add_parser("reset-password", help="set a new password (logs every device out)")
    ur.add_argument("user")
    ur.add_argument("--password-file", help="read the password from this file ('-': standard input); default: ask")
    ur.add_argument("--keep-devices", action="store_true", help="do not log the user's devices out")

    rooms = top.add_parser("rooms", help="list, show, block, purge, delete rooms").add_subparsers(
        dest="action", metavar="ACTION")
    rooms.required = True
    rl = rooms.add_parser("list", help="rooms, largest first")
    rl.add_argument("--search", help="room id, name or alias containing this")
    rl.add_argument("--order-by", default="joined_members")
    rl.add_argument("--limit", type=int, default=100)
    rl.add_argument("--from", dest="offset", type=int, default=0)
    for name, text in (("show", "one room"), ("members", "joined members"), ("state", "current state events"),
                       ("block", "refuse joins (ours and over federation)"), ("unblock", "allow joins again")):
        rooms.add_parser(name, help=text).add_argument("room")
    rp = rooms.add_parser("purge", help="delete history before a point (state is kept)")
    rp.add_argument("room")
    point = rp.add_mutually_exclusive_group(required=True)
    point.add_argument("--before-event", metavar="EVENT_ID")
    point.add_argument("--before-ts", type=int, metavar="MS")
    point.add_argument("--older-than-days", type=float, metavar="DAYS")
    rp.add_argument("--delete-local", action="store_true", help="also delete our own users' events")
    rd = rooms.add_parser("delete", help="make our users leave, remove aliases, purge (and block)")
    rd.add_argument("room")
    rd.add_argument("--block", action="store_true", help="block the room so nobody of ours rejoins")
    rd.add_argument("--no-purge", action="store_true", help="keep what is stored about the room")
    rd.add_argument("--message", help="reason given in our users' leave events")

    dests = top.add_parser("destinations", help="other servers we send to").add_subparsers(dest="action", metavar="ACTION")
    dests.required = True
    dl = dests.add_parser("list", help="destinations with their backoff and queue")
    dl.add_argument("--name")
    dl.add_argument("--backing-off", action="store_true", help="only those backing off")
    dests.add_parser("reset", help="end a destination's backoff and send what is queued").add_argument("destination")
    return p


def _read_password(path: Optional[str], stdin: TextIO, prompt: Callable[[str], str]) -> str:
    if path is None:
        first = prompt("Password: ")
        if prompt is getpass.getpass and first != prompt("Again: "):
            raise CliFailure("the passwords differ", EXIT_USAGE)
        return first
    try:
        if path == "-":
            return stdin.readline().rstrip("\r\n")
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        raise CliFailure(f"cannot read the password file: {e}", EXIT_USAGE) from None


def run(
    argv: Sequence[str], stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr, *,
    stdin: TextIO = sys.stdin, environ: Optional[dict[str, str]] = None,
    prompt: Callable[[str], str] = getpass.getpass, now: Callable[[], float] = time.time,
) -> int:
    """Run the command; returns the exit status."""
    env = os.environ if environ is None else environ
    parser = build_parser(stdout, stderr)
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as e:
        return EXIT_OK if e.code == 0 else EXIT_USAGE
    try:
        url = args.url or env.get("FEDSERVER_ADMIN_URL")
        if url is None and args.config:
            url = base_url_from_config(args.config)
            if url is None:
                raise CliFailure("cannot tell the client listener's address from the config; give --url", EXIT_USAGE)
        url = url or "http://127.0.0.1:8008"
        token = args.token or env.get("FEDSERVER_ADMIN_TOKEN")
        if args.area != "login" and not token:
            raise CliFailure("no admin token: give --token or set FEDSERVER_ADMIN_TOKEN ('fedserver-admin login')",
                             EXIT_USAGE)
        client = AdminClient(url, token)
        out = _dispatch(args, client, stdin, prompt, now)
    except CliFailure as e:
        stderr.write(f"{PROG}: {e}\n")
        return e.status
    if out is not None:
        text, answer = out
        stdout.write((json.dumps(answer, indent=2, ensure_ascii=False) if args.json else text) + "\n")
    return EXIT_OK


def _server_name(client: AdminClient) -> Optional[str]:
    who = client.call("GET", "/_matrix/client/v3/account/whoami")
    user = who.get("user_id", "")
    return user.split(":", 1)[1] if ":" in user else None


#: The admin API's prefix.
_ADMIN = "/_synapse/admin"


def _dispatch(args: argparse.Namespace, client: AdminClient, stdin: TextIO, prompt: Callable[[str], str],
              now: Callable[[], float]) -> Optional[tuple[str, Any]]:
    """Run ``args``' command: the text to print and the server's answer (for ``--json``)."""
    area = _AREAS.get(args.area)
    out = area(args, client, stdin, prompt, now) if area is not None else None
    if out is None:
        raise CliFailure("unknown command", EXIT_USAGE)  # pragma: no cover - argparse allows no other
    return out


def _login(args: argparse.Namespace, client: AdminClient, stdin: TextIO, prompt: Callable[[str], str],
           now: Callable[[], float]) -> Optional[tuple[str, Any]]:
    """``login``: a password login (client-server API ``POST /login``) for an admin token."""
    password = _read_password(args.password_file, stdin, lambda text: prompt(text))
    identifier = {"type": "m.id.user", "user": args.user}
    answer = client.call("POST", "/_matrix/client/v3/login", {
        "type": "m.login.password", "identifier": identifier, "password": password,
        "initial_device_display_name": "fedserver-admin",
    })
    return answer["access_token"], answer


def _users(args: argparse.Namespace, client: AdminClient, stdin: TextIO, prompt: Callable[[str], str],
           now: Callable[[], float]) -> Optional[tuple[str, Any]]:
    """``users list|show|devices|rooms|create|deactivate|reset-password``."""
    if args.action == "list":
        answer = client.call("GET", f"{_ADMIN}/v2/users", params={
            "name": args.name, "deactivated": args.deactivated or None, "admins": True if args.admins else None,
            "limit": args.limit, "from": args.offset})
        text = table(answer["users"], [("name", "USER"), ("displayname", "NAME"), ("admin", "ADMIN"),
                                       ("deactivated", "DEACTIVATED"), ("creation_ts", "CREATED (s)")])
        if answer.get("next_token"):
            text += f"\nmore: --from {answer['next_token']} ({answer['total']} in all)"
        return text, answer
    user_id = _user_id(args.user, None if args.user.startswith("@") else _server_name(client))
    path = f"{_ADMIN}/v2/users/{q(user_id)}"
    if args.action == "show":
        answer = client.call("GET", path)
        return "\n".join(f"{k:<14}{'-' if v is None else v}" for k, v in answer.items() if not isinstance(v, list)), answer
    if args.action == "devices":
        answer = client.call("GET", f"{path}/devices")
        return table(answer["devices"], [("device_id", "DEVICE"), ("display_name", "NAME"),
                                         ("last_seen_ip", "LAST IP"), ("last_seen_ts", "LAST SEEN (ms)")]), answer
    if args.action == "rooms":
        answer = client.call("GET", f"{_ADMIN}/v1/users/{q(user_id)}/joined_rooms")
        return "\n".join(answer["joined_rooms"]) or "(none)", answer
    if args.action == "create":
        body: dict[str, Any] = {"admin": args.admin}
        if not args.no_password:
            body["password"] = _read_password(args.password_file, stdin, prompt)
        if args.displayname is not None:
            body["displayname"] = args.displayname
        answer = client.call("PUT", path, body)
        return f"{user_id}: saved", answer
    if args.action == "deactivate":
        answer = client.call("POST", f"{_ADMIN}/v1/deactivate/{q(user_id)}", {"erase": args.erase})
        return f"{user_id}: deactivated", answer
    if args.action == "reset-password":
        password = _read_password(args.password_file, stdin, prompt)
        answer = client.call("POST", f"{_ADMIN}/v1/reset_password/{q(user_id)}",
                             {"new_password": password, "logout_devices": not args.keep_devices})
        return f"{user_id}: password reset", answer
    return None


def _rooms(args: argparse.Namespace, client: AdminClient, stdin: TextIO, prompt: Callable[[str], str],
           now: Callable[[], float]) -> Optional[tuple[str, Any]]:
    """``rooms list|show|members|state|block|unblock|purge|delete``."""
    if args.action == "list":
        answer = client.call("GET", f"{_ADMIN}/v1/rooms", params={
            "search_term": args.search, "order_by": args.order_by, "limit": args.limit, "from": args.offset})
        text = table(answer["rooms"], [("room_id", "ROOM"), ("name", "NAME"), ("canonical_alias", "ALIAS"),
                                       ("joined_members", "MEMBERS"), ("joined_local_members", "LOCAL"),
                                       ("version", "VERSION")])
        if answer.get("next_batch") is not None:
            text += f"\nmore: --from {answer['next_batch']} ({answer['total_rooms']} in all)"
        return text, answer
    path = f"{_ADMIN}/v1/rooms/{q(args.room)}"
    if args.action == "show":
        answer = client.call("GET", path)
        return "\n".join(f"{k:<20}{'-' if v is None else v}" for k, v in answer.items()), answer
    if args.action == "members":
        answer = client.call("GET", f"{path}/members")
        return "\n".join(answer["members"]) or "(none)", answer
    if args.action == "state":
        answer = client.call("GET", f"{path}/state")
        return "\n".join(f"{e['type']} {e.get('state_key')!r} {json.dumps(e['content'], ensure_ascii=False)}"
                         for e in answer["state"]), answer
    if args.action in ("block", "unblock"):
        answer = client.call("PUT", f"{path}/block", {"block": args.action == "block"})
        return f"{args.room}: {'blocked' if answer['block'] else 'not blocked'}", answer
    if args.action == "purge":
        return _purge(args, client, now)
    if args.action == "delete":
        body = {"block": args.block, "purge": not args.no_purge}
        if args.message:
            body["message"] = args.message
        answer = client.call("DELETE", path, body)
        text = (f"{args.room}: deleted; {len(answer['kicked_users'])} of our users left"
                + (f", {len(answer['failed_to_kick_users'])} could not: {', '.join(answer['failed_to_kick_users'])}"
                   if answer["failed_to_kick_users"] else "")
                + (f"; aliases removed: {', '.join(answer['local_aliases'])}" if answer["local_aliases"] else ""))
        return text, answer
    return None


def _purge(args: argparse.Namespace, client: AdminClient, now: Callable[[], float]) -> tuple[str, Any]:
    """``rooms purge``: starts the purge, then waits up to ``PURGE_WAIT_S`` for it to end."""
    body = {"delete_local_events": args.delete_local}
    if args.before_event:
        body["purge_up_to_event_id"] = args.before_event
    elif args.before_ts is not None:
        body["purge_up_to_ts"] = args.before_ts
    else:
        body["purge_up_to_ts"] = int((now() - args.older_than_days * 86400) * 1000)
    started = client.call("POST", f"{_ADMIN}/v1/purge_history/{q(args.room)}", body)
    deadline = time.monotonic() + PURGE_WAIT_S
    while True:
        status = client.call("GET", f"{_ADMIN}/v1/purge_history_status/{q(started['purge_id'])}")
        if status["status"] != "active" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if status["status"] != "complete":
        raise CliFailure(f"purge {started['purge_id']}: {status['status']} {status.get('error', '')}".rstrip(),
                         EXIT_REFUSED)
    return (f"{args.room}: {status['deleted_events']} events deleted, "
            f"{status['kept_state_events']} older state events kept"), status


def _destinations(args: argparse.Namespace, client: AdminClient, stdin: TextIO, prompt: Callable[[str], str],
                  now: Callable[[], float]) -> Optional[tuple[str, Any]]:
    """``destinations list|reset``: federation destinations and their backoff."""
    if args.action == "list":
        answer = client.call("GET", f"{_ADMIN}/v1/federation/destinations", params={"destination": args.name, "limit": 1000})
        rows = [d for d in answer["destinations"] if d["retry_interval"] or not args.backing_off]
        return table(rows, [("destination", "DESTINATION"), ("retry_interval", "BACKOFF (ms)"),
                            ("failure_ts", "FAILING SINCE (ms)"), ("queued", "QUEUED")]), answer
    if args.action == "reset":
        answer = client.call("POST", f"{_ADMIN}/v1/federation/destinations/{q(args.destination)}/reset_connection", {})
        return f"{args.destination}: backoff reset", answer
    return None


_AREAS: dict[str, Callable[
    [argparse.Namespace, AdminClient, TextIO, Callable[[str], str], Callable[[], float]],
    Optional[tuple[str, Any]],
]] = {"login": _login, "users": _users, "rooms": _rooms, "destinations": _destinations}


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console script entry point: ``fedserver-admin``."""
    raise SystemExit(run(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
