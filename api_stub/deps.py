"""What every router of the HTTP API shares: problem documents, the process's gate, the caller's API
key (authentication, per-key rate limit) and the scope checks of the three roles.

Roles (``models.tables.ApiRole``), enforced by the helpers below on every endpoint:

- ``owner``: one app (``enterprise_id``): its wallets, chats, ledger, analytics and usage;
- ``end_user``: one wallet of one app: that wallet and its own chats, nothing else;
- ``admin``: aggregates across apps (analytics, rollup totals, metrics), credits and mode changes;
  never one end user's detail (wallet, ledger, chat, per-turn usage).

A resource outside the caller's scope answers the same 404 as one that does not exist, so ids of
other apps cannot be probed; an action the role may never take answers 403.
"""

from __future__ import annotations

import math
import time
from functools import lru_cache
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from limits import RateLimitItem, parse_many
from limits.storage import RedisStorage
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter, RateLimiter
from sqlmodel import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.tables import ApiRole, Wallet
from worker.apikeys import Principal, authenticate
from worker.db import session_scope
from worker.settings import get_settings
from worker.wallet import WalletGate, celery_kicker, shard_tag

#: Redis key prefix of the per-key rate-limit windows (``tollgate:ratelimit/...``)
RATE_LIMIT_PREFIX = "tollgate:ratelimit"


class Problem(Exception):
    """An HTTP error answered as an RFC 9457 problem document (``application/problem+json``):
    ``{"type", "title", "status", "detail", "errors": [{"field", "message"}]}``."""

    def __init__(self, status: int, title: str, detail: str, errors: list[dict] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.errors, self.headers = status, title, detail, errors, headers


def problem_response(status: int, title: str, detail: str, errors: list[dict] | None = None,
                     headers: dict[str, str] | None = None) -> JSONResponse:
    """The problem document of an error, as a response."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type="application/problem+json", headers=headers)


def field_problem(status: int, title: str, field: str, message: str) -> Problem:
    """A problem about one field: ``detail`` is ``"<field>: <message>"``, ``errors`` names the field."""
    return Problem(status, title, f"{field}: {message}", [{"field": field, "message": message}])


def install_error_handlers(app: FastAPI) -> None:
    """Answer Starlette's own errors (unknown route 404, wrong method 405, …) as problem documents
    too, so every error of the API has one shape."""

    @app.exception_handler(StarletteHTTPException)
    async def _on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = {404: "Not Found", 405: "Method Not Allowed"}.get(exc.status_code, "HTTP error")
        return problem_response(exc.status_code, title, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Problem)
    async def _on_problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.title, exc.detail, exc.errors, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": ".".join(str(p) for p in e["loc"] if p not in ("body", "query", "path")) or "body",
                   "message": e["msg"]} for e in exc.errors()]
        return problem_response(422, "Invalid request", "; ".join(f"{e['field']}: {e['message']}" for e in errors),
                                errors)


@lru_cache(maxsize=1)
def get_gate() -> WalletGate:
    """The process's gate (one Redis pool, scripts registered once)."""
    return WalletGate(kicker=celery_kicker)


def hold_wallet(wallet_id: str, reservation_id: str) -> str | None:
    """The wallet a live hold ``reservation_id`` belongs to, looked up on ``wallet_id``'s shard
    (``None``: no such hold there).  The scripts key holds by reservation id only, so the API checks
    this before a release or a settlement names a hold."""
    gate = get_gate()
    return gate.redis.hget(f"{shard_tag(gate.shard(wallet_id))}:hold:{reservation_id}", "wallet")


# rate limits ----------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _limiter(redis_url: str, strategy: str) -> RateLimiter:
    storage = RedisStorage(redis_url, key_prefix=RATE_LIMIT_PREFIX)
    return (MovingWindowRateLimiter if strategy == "moving-window" else FixedWindowRateLimiter)(storage)


@lru_cache(maxsize=16)
def _limits(spec: str) -> list[RateLimitItem]:
    return parse_many(spec)


def check_rate_limit(key_prefix: str) -> None:
    """Count one request of the key ``key_prefix`` against ``settings.rate_limit``.

    Raises: Problem 429 with ``Retry-After`` (integer seconds until the window lets one more
    request through, at least 1) when any of the configured limits is exhausted.
    """
    settings = get_settings()
    limiter = _limiter(settings.redis_url, settings.rate_limit_strategy)
    for item in _limits(settings.rate_limit):
        if not limiter.hit(item, "key", key_prefix):
            reset_at = limiter.get_window_stats(item, "key", key_prefix).reset_time
            retry_after = max(1, math.ceil(reset_at - time.time()))
            raise Problem(429, "Too Many Requests",
                          f"this API key may make {item} requests; retry in {retry_after} s",
                          headers={"Retry-After": str(retry_after)})


# the caller ----------------------------------------------------------------------------------
def principal(authorization: Annotated[str | None, Header()] = None) -> Principal:
    """The caller, from ``Authorization: Bearer <key>`` (the header's value; callable directly),
    counted against its rate limit.

    Raises: Problem 401 (``WWW-Authenticate: Bearer``) for a missing, malformed, unknown or revoked
    key; Problem 429 (``Retry-After``) over the key's rate limit.
    """
    challenge = {"WWW-Authenticate": 'Bearer realm="tollgate"'}
    if not authorization or not authorization.startswith("Bearer "):
        raise Problem(401, "Unauthorized", "an API key is required: Authorization: Bearer tg_…", headers=challenge)
    with session_scope() as session:
        who = authenticate(session, authorization.removeprefix("Bearer ").strip())
    if who is None:
        raise Problem(401, "Unauthorized", "the API key is unknown or revoked", headers=challenge)
    check_rate_limit(who.key_prefix)
    return who


Caller = Annotated[Principal, Depends(principal)]


# scopes ---------------------------------------------------------------------------------------
def forbid_unless(who: Principal, *roles: ApiRole, action: str) -> None:
    """Raises Problem 403 unless the caller has one of ``roles``."""
    if who.role not in roles:
        raise Problem(403, "Forbidden", f"a {who.role.value} key may not {action}")


def unknown_wallet(wallet_id: str) -> Problem:
    """The one answer for "no such wallet" and "not your wallet" (404 naming ``wallet_id``)."""
    return field_problem(404, "Unknown wallet", "wallet_id", f"no wallet {wallet_id!r} for this key")


def wallet_in_scope(session: Session, who: Principal, wallet_id: str, *, admin: bool = False) -> Wallet:
    """The wallet row if the caller may see it: its app's owner, its own end user, and admins only
    when ``admin`` (actions on a wallet, never its detail).  Raises Problem 404 otherwise."""
    row = session.get(Wallet, wallet_id)
    allowed = row is not None and (
        (who.role is ApiRole.owner and row.enterprise_id == who.enterprise_id)
        or (who.role is ApiRole.end_user and row.id == who.wallet_id)
        or (admin and who.role is ApiRole.admin)
    )
    if not allowed:
        raise unknown_wallet(wallet_id)
    return row


def enterprise_in_scope(who: Principal, enterprise_id: str | None, *, field: str = "enterprise_id") -> str:
    """The enterprise an app-level query is about: an owner's own app (``enterprise_id`` may be
    omitted; another app's id is 404), any app for an admin (required).  End users: 403.

    Raises: Problem 403 (end_user), 404 (another app), 422 (admin without ``enterprise_id``).
    """
    forbid_unless(who, ApiRole.owner, ApiRole.admin, action="read an app's figures")
    if who.role is ApiRole.owner:
        if enterprise_id is not None and enterprise_id != who.enterprise_id:
            raise field_problem(404, "Unknown enterprise", field, f"no enterprise {enterprise_id!r} for this key")
        return who.enterprise_id  # type: ignore[return-value]  # owner keys always carry one
    if not enterprise_id:
        raise field_problem(422, "Invalid request", field, "required with an admin key")
    return enterprise_id
