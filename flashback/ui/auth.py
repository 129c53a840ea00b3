"""The UI's access token: in the announced URL once, then an HttpOnly cookie.

Pure decisions, so the rule is tested without a server: a request that
carries ``?token=`` is answered with a redirect that sets the cookie and
drops the token from the address bar (and from any ``Referer``); otherwise
the cookie must match. Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

COOKIE_NAME: Final = "flashback_ui"
TOKEN_BYTES: Final = 32


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_matches(given: str | None, token: str) -> bool:
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("ascii"))


@dataclass(frozen=True)
class Decision:
    allowed: bool
    set_cookie: bool = False  # allowed by ?token=: set the cookie and redirect


def check_access(query_token: str | None, cookies: Mapping[str, str], token: str) -> Decision:
    if query_token is not None:
        return (
            Decision(True, set_cookie=True)
            if token_matches(query_token, token)
            else Decision(False)
        )
    return Decision(token_matches(cookies.get(COOKIE_NAME), token))
