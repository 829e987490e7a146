"""Grammar checks for the identifiers the auth rules look at (appendix "Identifier
Grammar"): server names, user ids, and the domain part of ids."""

from __future__ import annotations

import re

# server_name = hostname [ ":" port ]; hostname = IPv4address / "[" IPv6address "]" /
# dns-name; dns-name = 1*255 [A-Za-z0-9.-]; port = 1*5DIGIT.
_SERVER_NAME = re.compile(
    r"(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}"
    r"|\[[0-9A-Fa-f:.]{2,45}\]"
    r"|[A-Za-z0-9.-]{1,255})"
    r"(?::[0-9]{1,5})?"
)

# Historical user ids: any printable ASCII except ":" in the localpart.
_LOCALPART = re.compile(r"[\x21-\x39\x3b-\x7e]+")


def domain_of(identifier: str) -> str | None:
    """The part after the first ``:`` of a sigilled id, or ``None`` if there is none."""
    _, sep, domain = identifier.partition(":")
    return domain if sep else None


def is_valid_server_name(name: str) -> bool:
    """Whether ``name`` matches the server name grammar."""
    return _SERVER_NAME.fullmatch(name) is not None


def is_valid_user_id(user_id: object) -> bool:
    """Whether ``user_id`` is a string that is a valid (historical) user id: ``@``, a
    localpart of printable ASCII without ``:``, ``:``, a server name; at most 255 bytes.
    """
    if not isinstance(user_id, str) or not user_id.startswith("@"):
        return False
    if len(user_id.encode("utf-8")) > 255:
        return False
    localpart, sep, server = user_id[1:].partition(":")
    return bool(sep) and _LOCALPART.fullmatch(localpart) is not None and is_valid_server_name(server)
