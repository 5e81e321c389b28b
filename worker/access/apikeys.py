"""API keys: created (shown once), stored as SHA-256, revocable; every key change is audited.

A key reads ``tg_<prefix>_<secret>``: the prefix (12 hex) finds the row, the SHA-256 of the whole
key is compared in constant time.  Keys are 32 random bytes, so a plain hash is as good as a slow
one (nothing to brute-force).  Functions that take a session never commit.

Authenticated keys are cached in-process (:class:`KeyCache`, keyed by the key's SHA-256) for
``settings.api_key_cache_ttl_s`` (default 5 s), so the API's hot path does not query PostgreSQL per
request.  Revocation bound: a revoked key stops working

- at once in the process that revoked it (its cache entry is dropped when the revocation commits);
- at once in every other API process as long as Redis is reachable: the commit also writes the
  marker ``tollgate:apikey:revoked:<prefix>`` (kept :data:`REVOKED_MARKER_TTL_S`), which the API
  checks on every request in the same Redis round trip as the rate limit;
- within ``api_key_cache_ttl_s`` at most in any case (a revocation made straight in SQL, or a
  marker write that failed): every cache entry expires by then and is re-read from PostgreSQL.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlmodel import Session, col

from models.access import ApiKey
from models.enums import ApiRole, PayerLevel
from models.wallet import Enterprise, Wallet
from worker.db import after_commit
from worker.errors import InputError
from worker.gate.keys import revoked_marker
from worker.ledger.audit import audit
from worker.settings import get_settings

log = logging.getLogger(__name__)

#: seconds a revocation marker lives in Redis: far longer than any sane cache TTL (entries older
#: than the TTL are re-read from PostgreSQL, which has the revocation for good)
REVOKED_MARKER_TTL_S = 3600


class ApiKeyError(InputError, ValueError):
    """A key request is invalid (names the field): unknown enterprise or wallet, wrong scope."""


@dataclass(frozen=True)
class Principal:
    """Who a valid key speaks for: role, and the enterprise (and wallet) it is scoped to."""

    key_prefix: str
    role: ApiRole
    enterprise_id: str | None
    wallet_id: str | None

    @property
    def actor(self) -> str:
        """The name of this principal in the audit log: ``key:<prefix>``."""
        return f"key:{self.key_prefix}"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyCache:
    """Authenticated keys of this process: SHA-256 of the key → (:class:`Principal`, expiry), each
    entry kept ``ttl_s`` seconds (monotonic clock), at most ``max_entries`` (expired ones are swept
    first, then the oldest dropped).  Unknown and revoked keys are never cached.  Thread-safe."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._entries: dict[str, tuple[Principal, float]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, *, now: float | None = None) -> Principal | None:
        """The cached principal of ``key`` (the full ``tg_…`` key), or None (absent or expired)."""
        hit = self.lookup(key, now=now)
        return None if hit is None else hit[0]

    def lookup(self, key: str, *, now: float | None = None) -> tuple[Principal, float] | None:
        """As :meth:`get`, with the seconds the entry has left: ``(principal, seconds > 0)``, or None
        (absent or expired; an expired entry is dropped)."""
        digest = _digest(key)
        hit = self._entries.get(digest)
        if hit is None:
            return None
        left = hit[1] - (time.monotonic() if now is None else now)
        if left <= 0:
            self._entries.pop(digest, None)
            return None
        return hit[0], left

    def put(self, key: str, who: Principal, ttl_s: float) -> None:
        """Cache ``who`` for ``key`` for ``ttl_s`` seconds (nothing when ``ttl_s`` ≤ 0)."""
        if ttl_s <= 0:
            return
        now = time.monotonic()
        with self._lock:
            if len(self._entries) >= self.max_entries:
                for digest in [d for d, (_, exp) in self._entries.items() if exp <= now]:
                    del self._entries[digest]
                while len(self._entries) >= self.max_entries:
                    del self._entries[next(iter(self._entries))]
            self._entries[_digest(key)] = (who, now + ttl_s)

    def forget(self, prefix: str) -> int:
        """Drop every entry of key ``prefix``; returns how many were dropped."""
        with self._lock:
            gone = [d for d, (who, _) in self._entries.items() if who.key_prefix == prefix]
            for digest in gone:
                del self._entries[digest]
        return len(gone)

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._entries.clear()


#: the process's cache of authenticated keys (see the module docstring for the revocation bound)
key_cache = KeyCache()


def _announce_revocation(prefix: str, redis_client=None) -> None:
    """After the revocation committed: drop the key from this process's cache, set its Redis
    marker, so other processes refuse it on their next request, and end its /billing sign-in
    sessions (:func:`worker.access.web_sessions.end_sessions`).  A Redis failure is logged, not
    raised (the revocation is committed; the cache TTL then bounds it)."""
    from worker.access.web_sessions import end_sessions  # it imports this module (Principal)

    key_cache.forget(prefix)
    try:
        if redis_client is None:
            import redis

            with redis.Redis.from_url(get_settings().redis_url) as client:
                client.set(revoked_marker(prefix), "1", ex=REVOKED_MARKER_TTL_S)
                end_sessions(client, prefix)
        else:
            redis_client.set(revoked_marker(prefix), "1", ex=REVOKED_MARKER_TTL_S)
            end_sessions(redis_client, prefix)
    except Exception:
        log.warning(
            "key %s revoked, but its Redis marker could not be written: other API processes "
            "may accept it until their cache entry expires",
            prefix,
            exc_info=True,
        )


def create_key(
    session: Session,
    *,
    role: ApiRole,
    enterprise_id: str | None = None,
    wallet_id: str | None = None,
    name: str = "",
    actor: str = "cli",
) -> str:
    """Create a key and return it (the only time it is visible).

    Scopes: ``owner`` needs ``enterprise_id``; ``end_user`` needs ``enterprise_id`` and a wallet of
    that enterprise; ``admin`` takes neither.  An ``owner`` key may also name ``wallet_id``: the app
    creator's level-1 (``platform``) wallet, which has no owning app; the key may then read that
    wallet, reserve funds on it and pause its chats, never credit it or change its mode (the platform
    bills the creator).  Raises ApiKeyError naming the field.
    """
    role = ApiRole(role)
    if role is ApiRole.admin and (enterprise_id or wallet_id):
        raise ApiKeyError(
            "enterprise_id/wallet_id: an admin key is not scoped to an app or wallet", field="enterprise_id/wallet_id"
        )
    if role is not ApiRole.admin:
        if not enterprise_id or session.get(Enterprise, enterprise_id) is None:
            raise ApiKeyError(f"enterprise_id: unknown enterprise {enterprise_id!r}", field="enterprise_id")
    if role is ApiRole.end_user:
        wallet = session.get(Wallet, wallet_id) if wallet_id else None
        if wallet is None or wallet.enterprise_id != enterprise_id:
            raise ApiKeyError(f"wallet_id: no wallet {wallet_id!r} in enterprise {enterprise_id!r}", field="wallet_id")
    elif wallet_id and role is ApiRole.owner:
        wallet = session.get(Wallet, wallet_id)
        if wallet is None or wallet.level != PayerLevel.platform or wallet.enterprise_id is not None:
            raise ApiKeyError(f"wallet_id: {wallet_id!r} is not a platform (level 1) wallet", field="wallet_id")
    elif wallet_id:
        raise ApiKeyError("wallet_id: an admin key is not scoped to a wallet", field="wallet_id")
    prefix = secrets.token_hex(6)
    key = f"tg_{prefix}_{secrets.token_urlsafe(32)}"
    session.add(
        ApiKey(  # type: ignore[call-arg]  # created_at: the column's server default (now()) fills it at INSERT
            prefix=prefix,
            key_sha256=_digest(key),
            role=role,
            enterprise_id=enterprise_id,
            wallet_id=wallet_id,
            name=name,
        )
    )
    audit(
        session,
        actor=actor,
        action="key_create",
        enterprise_id=enterprise_id,
        wallet_id=wallet_id,
        prefix=prefix,
        role=role.value,
    )
    return key


def revoke_key(session: Session, prefix: str, *, actor: str = "cli", redis_client=None) -> bool:
    """Revoke the key with ``prefix``; True if it was active.

    This process's cache drops the key at once; when the caller's transaction commits, the key is
    dropped again (a request racing the commit may have re-cached it) and its Redis marker
    (:func:`revoked_marker`) is set on ``redis_client`` (default: ``settings.redis_url``), so every
    API process refuses it from its next request on.  See the module docstring for the bound.
    """
    row = session.execute(select(ApiKey).where(col(ApiKey.prefix) == prefix)).scalar_one_or_none()
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = datetime.now(UTC)
    audit(
        session,
        actor=actor,
        action="key_revoke",
        enterprise_id=row.enterprise_id,
        wallet_id=row.wallet_id,
        prefix=prefix,
    )
    key_cache.forget(prefix)
    after_commit(session, lambda: _announce_revocation(prefix, redis_client))
    return True


def authenticate(session: Session, key: str) -> Principal | None:
    """The principal of a valid, unrevoked key, or None (malformed, unknown, wrong or revoked)."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != "tg" or len(parts[1]) != 12:
        return None
    row = session.execute(select(ApiKey).where(col(ApiKey.prefix) == parts[1])).scalar_one_or_none()
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_sha256, _digest(key)):
        return None
    return Principal(
        key_prefix=row.prefix, role=ApiRole(row.role), enterprise_id=row.enterprise_id, wallet_id=row.wallet_id
    )
