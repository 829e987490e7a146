"""Who is calling: the authenticated user behind a client request, as handlers see it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True, slots=True)
class Requester:
    """The authenticated user behind a client request.

    :ivar user_id: the user.
    :ivar device_id: the device the access token belongs to (``None`` for a token without
        one).
    :ivar access_token_id: identifies the token (for logout), never the token itself.
    :ivar is_guest: whether this is a guest account.
    """

    user_id: str
    device_id: Optional[str]
    access_token_id: int
    is_guest: bool = False
