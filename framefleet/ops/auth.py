"""Who may call the API: a bearer token on every route but /healthz, compared in constant
time. The write token may do anything; the read token (if set) only GET; read-only mode
refuses every write whatever the token. With no token configured the API serves loopback
only (api.serve checks), and lets every local caller through."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import HTTPException, Request

from framefleet.settings import ApiSettings


@dataclass(frozen=True, slots=True)
class Tokens:
    write: str | None
    read: str | None
    read_only: bool

    @classmethod
    def of(cls, settings: ApiSettings) -> Tokens:
        return cls(settings.write_token(), settings.read_token or None, settings.read_only)


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _same(given: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(given.encode(), expected.encode())


def _check(request: Request, write: bool) -> str:
    """The caller's name ("write", "read" or "local"), or 401/403."""
    tokens: Tokens = request.app.state.tokens
    if write and tokens.read_only:
        raise HTTPException(403, "the API is read-only (FRAMEFLEET_API_READ_ONLY)")
    if tokens.write is None:
        return "local"
    token = _bearer(request)
    if token is None:
        raise HTTPException(401, "a bearer token is needed", {"WWW-Authenticate": "Bearer"})
    if _same(token, tokens.write):
        return "write"
    if _same(token, tokens.read):
        if write:
            raise HTTPException(403, "the read token may only GET")
        return "read"
    raise HTTPException(401, "wrong token", {"WWW-Authenticate": "Bearer"})


def may_read(request: Request) -> str:
    return _check(request, write=False)


def may_write(request: Request) -> str:
    return _check(request, write=True)
