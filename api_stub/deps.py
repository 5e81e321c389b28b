"""What every router of the HTTP API shares: problem documents, the process's gate, the caller's API
key (authentication, per-key rate limit) and the scope checks of the three roles.

Roles (``models.enums.ApiRole``), enforced by the helpers below on every endpoint:

- ``owner``: one app (``enterprise_id``): its wallets, chats, ledger, analytics and usage;
- ``end_user``: one wallet of one app: that wallet and its own chats, nothing else;
- ``admin``: aggregates across apps (analytics, rollup totals, metrics), credits and mode changes;
  never one end user's detail (wallet, ledger, chat, per-turn usage).

A resource outside the caller's scope answers the same 404 as one that does not exist, so ids of
other apps cannot be probed; an action the role may never take answers 403.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from functools import lru_cache
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from hiredis import pack_command
from limits import RateLimitItem, parse_many
from limits.storage import RedisStorage
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter, RateLimiter
from redis import asyncio as aioredis
from redis.exceptions import NoScriptError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.enums import ApiRole, PayerLevel
from models.wallet import Enterprise, Wallet
from worker.access.apikeys import Principal, authenticate, key_cache
from worker.db import session_scope
from worker.errors import TollgateError
from worker.gate.aio import asend_packed, process_async_gate
from worker.gate.gate import process_gate
from worker.gate.keys import RATE_LIMIT_PREFIX, revoked_marker
from worker.settings import get_settings

log = logging.getLogger(__name__)

#: Redis key prefix of the per-key rate-limit windows (``tollgate:ratelimit/...``)


class Problem(Exception):
    """An HTTP error answered as an RFC 9457 problem document (``application/problem+json``):
    ``{"type", "title", "status", "detail", "errors": [{"field", "message"}]}``."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        errors: list[dict] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.errors, self.headers = status, title, detail, errors, headers


#: OpenAPI ``responses`` of the keyed JSON routes: the problem+json statuses they may answer (no
#: key 401, role 403, not in scope 404, invalid input 422, over the rate limit 429).  A route adds its
#: own with ``ERROR_RESPONSES | {409: {}}``.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {401: {}, 403: {}, 404: {}, 422: {}, 429: {}}


def problem_response(
    status: int, title: str, detail: str, errors: list[dict] | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The problem document of an error, as a response: the API's one builder of
    ``application/problem+json`` (the handlers below, the billing page's exports and the Stripe
    endpoints all answer through it)."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type="application/problem+json", headers=headers)


def error_problem(
    exc: TollgateError, *, status: int | None = None, title: str | None = None, field: str | None = None
) -> Problem:
    """The problem of a domain error: its ``http_status`` and ``title`` (or ``status`` / ``title``
    given), ``detail`` its message, and ``errors`` naming ``exc.field`` (or ``field``) with the message
    without its ``"<field>: "`` prefix (:attr:`TollgateError.reason`).  The field is read from the
    error, never from its text."""
    name = field or exc.field
    errors = [{"field": name, "message": exc.reason}] if name else None
    return Problem(status or exc.http_status, title or exc.title, str(exc), errors)


def field_problem(status: int, title: str, field: str, message: str) -> Problem:
    """A problem about one field: ``detail`` is ``"<field>: <message>"``, ``errors`` names the field."""
    return Problem(status, title, f"{field}: {message}", [{"field": field, "message": message}])


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error as a problem document, in one place: Starlette's own (unknown route 404,
    wrong method 405, …), :class:`Problem`, any :class:`~worker.errors.TollgateError` a route lets
    through (its ``http_status``, ``title``, ``field``: :func:`error_problem`), and request
    validation (422, each error's ``loc`` as the field)."""

    @app.exception_handler(StarletteHTTPException)
    async def _on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = {404: "Not Found", 405: "Method Not Allowed"}.get(exc.status_code, "HTTP error")
        return problem_response(exc.status_code, title, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Problem)
    async def _on_problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.title, exc.detail, exc.errors, exc.headers)

    @app.exception_handler(TollgateError)
    async def _on_domain_error(request: Request, exc: TollgateError) -> JSONResponse:
        problem = error_problem(exc)  # a route that answers otherwise catches the error itself
        return problem_response(problem.status, problem.title, problem.detail, problem.errors)

    @app.exception_handler(RequestValidationError)
    async def _on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "field": ".".join(str(p) for p in e["loc"] if p not in ("body", "query", "path")) or "body",
                "message": e["msg"],
            }
            for e in exc.errors()
        ]
        return problem_response(
            422, "Invalid request", "; ".join(f"{e['field']}: {e['message']}" for e in errors), errors
        )


#: the process's gate (:func:`worker.gate.gate.process_gate`: one per process, drain kicks sent
#: without a result); the routes' name for it, for work that runs in the thread pool
get_gate = process_gate

#: the event loop's asyncio gate (:func:`worker.gate.aio.process_async_gate`, made from the process's
#: gate): what an ``async def`` route awaits for Redis on the request path (turns, reservations,
#: wallet balances), so no request blocks the loop
get_async_gate = process_async_gate


async def reservation_wallet(wallet_id: str, reservation_id: str) -> str | None:
    """The wallet a live reservation ``reservation_id`` belongs to, looked up on ``wallet_id``'s
    shard (``None``: no such reservation there).  The scripts key reservations by reservation id
    only, so the API checks this before a release or a settlement names one."""
    return await get_async_gate().reservation_wallet(wallet_id, reservation_id)


# rate limits ---------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _limiter(redis_url: str, strategy: str) -> RateLimiter:
    storage = RedisStorage(redis_url, key_prefix=RATE_LIMIT_PREFIX)
    return (MovingWindowRateLimiter if strategy == "moving-window" else FixedWindowRateLimiter)(storage)


@lru_cache(maxsize=16)
def _limits(spec: str) -> list[RateLimitItem]:
    return parse_many(spec)


def _too_many(limiter: RateLimiter, item: RateLimitItem, key_prefix: str) -> Problem:
    """The 429 of API key ``key_prefix`` over ``item`` (:func:`_over_limit`)."""
    return _over_limit(limiter, item, "key", key_prefix, f"this API key may make {item} requests")


def _over_limit(limiter: RateLimiter, item: RateLimitItem, namespace: str, who: str, allowed: str) -> Problem:
    """Problem 429 for ``who`` (in ``namespace``) over the limit ``item``: the detail ``allowed``
    (what the limit lets through), then when to retry; ``Retry-After`` is the integer seconds until
    the window lets one more request through, at least 1."""
    reset_at = limiter.get_window_stats(item, namespace, who).reset_time
    retry_after = max(1, math.ceil(reset_at - time.time()))
    return Problem(
        429, "Too Many Requests", f"{allowed}; retry in {retry_after} s", headers={"Retry-After": str(retry_after)}
    )


def check_rate_limit(key_prefix: str) -> None:
    """Count one request of the key ``key_prefix`` against ``settings.rate_limit`` (synchronous
    form, one round trip per limit; the API's requests use :func:`admit`).

    Raises: Problem 429 with ``Retry-After`` (integer seconds until the window lets one more
    request through, at least 1) when any of the configured limits is exhausted.
    """
    settings = get_settings()
    limiter = _limiter(settings.redis_url, settings.rate_limit_strategy)
    for item in _limits(settings.rate_limit):
        if not limiter.hit(item, "key", key_prefix):
            raise _too_many(limiter, item, key_prefix)


def check_client_rate_limit(spec: str, namespace: str, client: str, what: str) -> None:
    """Count one request of ``client`` (e.g. an IP address) in ``namespace`` against the limits of
    ``spec`` (``limits`` notation, e.g. ``settings.billing_login_rate_limit``), on the same
    limiter and Redis as the per-key limits; for requests made before any key is known (sign-in).

    Raises: Problem 429 with ``Retry-After`` (integer seconds, ≥ 1) and a detail naming ``what``
    when any limit is exhausted.
    """
    settings = get_settings()
    limiter = _limiter(settings.redis_url, settings.rate_limit_strategy)
    for item in _limits(spec):
        if not limiter.hit(item, namespace, client):
            raise _over_limit(limiter, item, namespace, client, f"{what} may be made {item}")


_AREDIS: list[Any] = [None, None, None]  # [event loop, its Redis URL, its asyncio Redis client]


def _aredis(url: str) -> aioredis.Redis:
    """The asyncio Redis client of the running event loop.  A client's connections belong to one
    loop: a server has one per process; a test client may run each request on a new loop, whose
    client then replaces the last one (left to the garbage collector, with its connections)."""
    loop = asyncio.get_running_loop()
    held_loop, held_url, client = _AREDIS
    if held_loop is not loop or client is None or held_url != url:
        client = aioredis.Redis.from_url(url)
        _AREDIS[:] = [loop, url, client]
    return client


class Admission:
    """The admission of one request of API key ``key_prefix`` (:func:`admit`): its revocation marker,
    its rate limits (``settings.rate_limit``, the ``limits`` strategy ``settings.rate_limit_strategy``)
    and the Redis commands or script arguments that check them, built once here for both ways of
    sending them (two round trips: :func:`admit`; in the turn's script: ``lib_admit.lua``)."""

    __slots__ = ("key_prefix", "limiter", "items", "moving", "now")

    def __init__(self, key_prefix: str) -> None:
        settings = get_settings()
        self.key_prefix = key_prefix
        self.limiter = _limiter(settings.redis_url, settings.rate_limit_strategy)
        self.items = _limits(settings.rate_limit)
        self.moving = settings.rate_limit_strategy == "moving-window"
        self.now = time.time()

    @property
    def script(self) -> Any:
        """``limits``' script of the strategy (moving window or fixed window's incr-expire)."""
        storage: RedisStorage = self.limiter.storage  # type: ignore[assignment]
        return storage.lua_acquire_moving_window if self.moving else storage.lua_incr_expire

    def _window(self, item: RateLimitItem) -> str:
        storage: RedisStorage = self.limiter.storage  # type: ignore[assignment]
        return storage.prefixed_key(item.key_for("key", self.key_prefix))

    def _script_args(self, item: RateLimitItem) -> tuple:
        """The arguments of ``limits``' script for ``item`` (one request)."""
        return (self.now, item.amount, item.get_expiry(), 1) if self.moving else (item.get_expiry(), 1)

    def commands(self) -> list[tuple[Any, ...]]:
        """``EXISTS`` of the revocation marker, then one ``EVALSHA`` of ``limits``' script per limit."""
        found: list[tuple[Any, ...]] = [("EXISTS", revoked_marker(self.key_prefix))]
        for item in self.items:
            found.append(("EVALSHA", self.script.sha, 1, self._window(item), *self._script_args(item)))
        return found

    def script_keys(self) -> list[str]:
        """``lib_admit.lua``'s KEYS: the revocation marker, then each limit's window."""
        return [revoked_marker(self.key_prefix), *(self._window(item) for item in self.items)]

    def script_args(self) -> list[Any]:
        """``lib_admit.lua``'s ARGV: the strategy, then per limit its amount and its script's arguments."""
        found: list[Any] = ["moving" if self.moving else "fixed"]
        for item in self.items:
            found += [item.amount, *self._script_args(item)]
        return found

    async def check(self, revoked: Any, answers: list[Any]) -> None:
        """Raise the refusal of the replies (the marker's EXISTS, each limit's answer), if any:
        Problem 401 when revoked (the key leaves this process's cache), else Problem 429 with
        ``Retry-After`` for the first limit exhausted."""
        if revoked:
            key_cache.forget(self.key_prefix)
            raise Problem(401, "Unauthorized", "the API key is unknown or revoked", headers=_CHALLENGE)
        for item, answer in zip(self.items, answers):
            if not (bool(answer) if self.moving else int(answer) <= item.amount):
                raise await run_in_threadpool(_too_many, self.limiter, item, self.key_prefix)


async def admit(key_prefix: str) -> None:
    """One Redis round trip per request: is key ``key_prefix`` revoked (its marker,
    :func:`worker.gate.keys.revoked_marker`), and count the request against every limit of
    ``settings.rate_limit`` (the same scripts and keys as ``limits``' strategies, pipelined).
    :func:`api_stub.routes.turns` sends the same checks inside a single turn's script instead.

    With several limits, a request refused by one still counts against the others (as if sent
    to each).  Raises: Problem 401 (revoked; the key leaves this process's cache), Problem 429
    with ``Retry-After`` (integer seconds, ≥ 1) over a limit.
    """
    settings = get_settings()
    admission = Admission(key_prefix)
    client = _aredis(settings.redis_url)
    packed = [pack_command(c) for c in admission.commands()]
    # one write of every command, their replies read in order: one send per request
    commands = [(b"".join(packed), len(packed))]
    for attempt in (0, 1):  # packed by hiredis, sent on one connection (redis-py's pipeline costs more)
        replies: list = []
        await asend_packed(client, commands, None, replies.append)
        if not any(isinstance(r, NoScriptError) for r in replies):
            break
        if attempt:  # a fresh or flushed Redis: the script is loaded once, then the same commands sent again
            raise next(r for r in replies if isinstance(r, NoScriptError))
        await client.script_load(admission.script.script)
    revoked, *answers = replies
    for answer in replies:
        if isinstance(answer, Exception):
            raise answer
    await admission.check(revoked, answers)


# the caller ----------------------------------------------------------------------------------
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="tollgate"'}


def _authenticate(key: str) -> Principal | None:
    with session_scope() as session:
        return authenticate(session, key)


#: the OpenAPI security scheme (/docs' Authorize button); :func:`principal` reads the header itself, so
#: this never answers on its own (``auto_error=False``)
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    bearerFormat="tg_<prefix>_<secret>",
    description="An API key from `tollgate apikey create` (owner, end_user or admin).",
)


async def principal(
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    _scheme: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None,
) -> Principal:
    """The caller, from ``Authorization: Bearer <key>`` (the header's value), counted against its
    rate limit.  A key is read from PostgreSQL about once per ``settings.api_key_cache_ttl_s`` per
    process (:data:`worker.access.apikeys.key_cache`); revocation is checked on every request
    (:func:`admit`).  A request using an entry in its last :data:`KEY_REFRESH_AHEAD` of the TTL
    starts its re-read in the thread pool and goes on with the entry (never past its expiry).

    Raises: Problem 401 (``WWW-Authenticate: Bearer``) for a missing, malformed, unknown or revoked
    key; Problem 429 (``Retry-After``) over the key's rate limit.
    """
    who = await authenticated(authorization)
    await admit(who.key_prefix)
    return who


async def authenticated(authorization: str | None) -> Principal:
    """:func:`principal` without :func:`admit`: the caller of ``Authorization: Bearer <key>`` from the
    process's key cache (or PostgreSQL), its revocation and rate limit not yet checked; the caller
    admits the request (``admit``, or in the turn's script).  Raises Problem 401 for a missing,
    malformed or unknown key."""
    if not authorization or not authorization.startswith("Bearer "):
        raise Problem(401, "Unauthorized", "an API key is required: Authorization: Bearer tg_…", headers=_CHALLENGE)
    key = authorization.removeprefix("Bearer ").strip()
    hit = key_cache.lookup(key)
    if hit is None:
        who = await run_in_threadpool(_authenticate, key)
        if who is None:
            raise Problem(401, "Unauthorized", "the API key is unknown or revoked", headers=_CHALLENGE)
        key_cache.put(key, who, get_settings().api_key_cache_ttl_s)
    else:
        who, left = hit
        if left < KEY_REFRESH_AHEAD * get_settings().api_key_cache_ttl_s and key not in _REFRESHING:
            _REFRESHING.add(key)  # one re-read at a time per key; this request goes on with the entry
            asyncio.get_running_loop().run_in_executor(None, _refresh_key, key, who.key_prefix)
    return who


#: part of ``api_key_cache_ttl_s`` before a cached key's expiry from which a request using it starts
#: its re-read from PostgreSQL in the thread pool (and is answered from the entry meanwhile): under
#: steady traffic an entry is renewed before it expires, so no request waits for PostgreSQL (every
#: request arriving at an expired entry did, each with its own read: a latency spike each TTL)
KEY_REFRESH_AHEAD = 0.2
_REFRESHING: set[str] = set()  # keys being re-read now


def _refresh_key(key: str, prefix: str) -> None:
    """Re-read ``key`` from PostgreSQL (thread pool) and renew its cache entry, or drop key ``prefix``
    from the cache when it is now unknown or revoked.  A failure is logged: the entry then expires
    at its own time and the next request reads PostgreSQL itself (and answers its error)."""
    try:
        who = _authenticate(key)
        if who is None:
            key_cache.forget(prefix)
        else:
            key_cache.put(key, who, get_settings().api_key_cache_ttl_s)
    except Exception:
        log.warning("could not re-read API key %s ahead of its cache expiry", prefix, exc_info=True)
    finally:
        _REFRESHING.discard(key)


Caller = Annotated[Principal, Depends(principal)]


# scopes ---------------------------------------------------------------------------------------
def forbid_unless(who: Principal, *roles: ApiRole, action: str) -> None:
    """Raises Problem 403 unless the caller has one of ``roles``."""
    if who.role not in roles:
        raise Problem(403, "Forbidden", f"a {who.role.value} key may not {action}")


def owner_enterprise(who: Principal, *, action: str) -> str:
    """The app (``enterprise_id``) of an owner key, for routes only owners may call.

    Raises: Problem 403 for any other role (as :func:`forbid_unless`), and for an owner key without
    an app, which ``create_key`` never issues (it refuses an owner key without ``enterprise_id``).
    """
    forbid_unless(who, ApiRole.owner, action=action)
    if who.enterprise_id is None:
        raise Problem(403, "Forbidden", f"this owner key is not scoped to an app and may not {action}")
    return who.enterprise_id


def unknown_wallet(wallet_id: str) -> Problem:
    """The one answer for "no such wallet" and "not your wallet" (404 naming ``wallet_id``)."""
    return field_problem(404, "Unknown wallet", "wallet_id", f"no wallet {wallet_id!r} for this key")


def creator_wallet(who: Principal, row: Wallet) -> bool:
    """Is ``row`` the level-1 (platform) wallet an owner key was issued for (``create_key(role=owner,
    wallet_id=…)``: the app creator's own wallet, which has no owning app)?"""
    return (
        who.role is ApiRole.owner
        and who.wallet_id is not None
        and row.id == who.wallet_id
        and row.level == PayerLevel.platform
        and row.enterprise_id is None
    )


def wallet_in_scope(
    session: Session, who: Principal, wallet_id: str, *, admin: bool = False, creator: bool = False
) -> Wallet:
    """The wallet row if the caller may see it: its app's owner, its own end user, admins only when
    ``admin`` (actions on a wallet, never its detail), and, when ``creator``, an owner key on the
    platform wallet it was issued for (:func:`creator_wallet`: reads, reservations and chat pauses; never
    credits or mode changes: the platform bills that wallet).  Raises Problem 404 otherwise."""
    row = session.get(Wallet, wallet_id)
    if row is None:
        raise unknown_wallet(wallet_id)
    allowed = (
        (who.role is ApiRole.owner and row.enterprise_id is not None and row.enterprise_id == who.enterprise_id)
        or (who.role is ApiRole.end_user and row.id == who.wallet_id)
        or (admin and who.role is ApiRole.admin)
        or (creator and creator_wallet(who, row))
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
        own = owner_enterprise(who, action="read an app's figures")
        if enterprise_id is not None and enterprise_id != own:
            raise field_problem(404, "Unknown enterprise", field, f"no enterprise {enterprise_id!r} for this key")
        return own
    if not enterprise_id:
        raise field_problem(422, "Invalid request", field, "required with an admin key")
    return enterprise_id


# platform-level wallets -------------------------------------------------------------------------
_WALLET_PAYERS: dict[str, tuple[str, str]] = {}
_CREATORS: dict[str, tuple[float, str | None]] = {}
#: seconds an app's creator is remembered by this process (changing it is rare and audited)
CREATOR_CACHE_TTL_S = 30.0


def platform_owner(wallet_id: str) -> str | None:
    """The app creator paying through ``wallet_id`` if it is a platform-level wallet, else None
    (an app's wallet, or unknown: the gate answers that).  A wallet's level and owner never
    change, so this process remembers them after the first lookup (up to 100,000 wallets)."""
    known = _WALLET_PAYERS.get(wallet_id)
    if known is None:
        with session_scope() as session:
            row = session.get(Wallet, wallet_id)
            if row is None:
                return None
            known = (row.level, row.owner_id)
        if len(_WALLET_PAYERS) >= 100_000:
            _WALLET_PAYERS.clear()
        _WALLET_PAYERS[wallet_id] = known
    level, owner = known
    return owner if level == PayerLevel.platform else None


def enterprise_creator(enterprise_id: str) -> str | None:
    """``enterprise.creator_id`` of an app (None if unset or unknown), remembered for
    :data:`CREATOR_CACHE_TTL_S` seconds."""
    now = time.monotonic()
    hit = _CREATORS.get(enterprise_id)
    if hit is not None and hit[0] > now:
        return hit[1]
    with session_scope() as session:
        app = session.get(Enterprise, enterprise_id)
        creator = app.creator_id if app is not None else None
    _CREATORS[enterprise_id] = (now + CREATOR_CACHE_TTL_S, creator)
    return creator


def charge_known(who: Principal, wallet_id: str) -> bool:
    """Can :func:`may_charge` answer from this process's memory (no database read)?  True when
    the wallet's payer is remembered and, for a platform-level wallet of another key, the app's
    creator too (still fresh)."""
    known = _WALLET_PAYERS.get(wallet_id)
    if known is None:
        return False
    if known[0] != PayerLevel.platform or who.wallet_id == wallet_id:
        return True
    if who.enterprise_id is None:  # no app: no creator to remember (may_charge answers False)
        return False
    hit = _CREATORS.get(who.enterprise_id)
    return hit is not None and hit[0] > time.monotonic()


def may_charge(who: Principal, wallet_id: str) -> bool:
    """May an owner key's turns charge ``wallet_id``?  An app's own wallets are checked by the gate
    (it refuses another app's); a platform-level wallet (the app creator's, with no owning app) only
    by the key issued for it, or by an app whose ``creator_id`` is that wallet's owner."""
    owner = platform_owner(wallet_id)
    if owner is None:
        return True
    return who.wallet_id == wallet_id or (
        who.enterprise_id is not None and enterprise_creator(who.enterprise_id) == owner
    )
