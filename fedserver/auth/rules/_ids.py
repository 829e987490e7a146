"""Identifier helpers for the auth rules: the domain part of ids, and the user id check
the rules share with event validation."""

from __future__ import annotations

# The rules validate user ids exactly as a PDU's sender is validated (v12 rule 1.4 says
# "the same user ID validation applied to sender").
from fedserver.events.validation import is_valid_user_id

__all__ = ["domain_of", "is_valid_user_id"]


def domain_of(identifier: str) -> str | None:
    """The part after the first ``:`` of a sigilled id, or ``None`` if there is none."""
    _, sep, domain = identifier.partition(":")
    return domain if sep else None
