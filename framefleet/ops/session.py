"""The dashboard's login: the API token, once, for an HttpOnly, SameSite=Strict cookie.

The cookie holds the role it grants (`write` or `read`), when it ends and an HMAC of both,
keyed by that role's token: the server keeps no session state, a cookie cannot be forged
or have its role raised without the token, and changing a token ends its sessions. With no
token configured (the API on loopback only) every local caller is `local`, as for the API.

Writes from a page are also checked for their origin (auth.same_origin, as Sidekiq Web
does): a browser's `Sec-Fetch-Site` must say `same-origin` (or `none`: typed by the user),
else `Origin` must be this host; a request with neither is refused. With the
SameSite=Strict cookie that stops cross-site form posts without a CSRF token in every form.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from fastapi import Request

from .auth import Tokens

COOKIE = "framefleet_session"
SESSION_S = 12 * 3600


def _sign(token: str, role: str, until: int) -> str:
    message = f"framefleet-dashboard:{role}:{until}".encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def login(tokens: Tokens, given: str, now: float | None = None) -> tuple[str, str] | None:
    """(role, cookie value) for a known token, else None (compared in constant time)."""
    until = int((time.time() if now is None else now) + SESSION_S)
    for role, token in (("write", tokens.write), ("read", tokens.read)):
        if token is not None and hmac.compare_digest(given.encode(), token.encode()):
            return role, f"{role}.{until}.{_sign(token, role, until)}"
    return None


def role(request: Request) -> str | None:
    """Who this request is: `write`, `read`, `local` (no token configured) or None."""
    tokens: Tokens = request.app.state.tokens
    if tokens.write is None:
        return "local"
    name, _, rest = request.cookies.get(COOKIE, "").partition(".")
    until, _, mac = rest.partition(".")
    token = {"write": tokens.write, "read": tokens.read}.get(name)
    # ASCII digits only ("²" is a digit to str.isdigit, not to int), compared as bytes: a
    # forged cookie is refused, never a 500
    if token is None or not (until.isascii() and until.isdigit()) or int(until) < time.time():
        return None
    expected = _sign(token, name, int(until)).encode()
    return name if hmac.compare_digest(mac.encode(errors="replace"), expected) else None
