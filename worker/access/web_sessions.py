"""Browser sign-in sessions of the /billing page: server-side, in Redis, never the API key.

Signing in with an API key (the form of ``/billing/login``) opens a session: a random id
(``secrets.token_urlsafe(32)``, 256 bits) goes to the browser in an HttpOnly cookie; Redis keeps,
under the SHA-256 of that id (a copy of Redis reveals no usable id), the key's *prefix* and a CSRF
token for the page's forms, for ``settings.billing_session_ttl_s`` (an absolute expiry: the TTL is
set once, at sign-in).  The key itself is never stored.

Keys (all ``decode_responses`` strings):

- ``tollgate:websession:<sha256 of id>``: hash ``{key_prefix, csrf, created_at}`` (unix seconds), TTL;
- ``tollgate:websessions:key:<prefix>``: set of the session digests of one API key, so revoking the
  key ends its sessions (:func:`end_sessions`, called by ``worker.access.apikeys`` when a revocation
  commits).

A session ends when it expires, at sign-out (:func:`close_session`), or when its key is revoked; the
web process also re-reads the key's row (:func:`principal_for_prefix`) on every request, so a key
revoked straight in SQL ends its sessions at once too.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlmodel import Session, col

from models.access import ApiKey
from models.enums import ApiRole
from worker.access.apikeys import Principal
from worker.gate.keys import KEY_SESSIONS_PREFIX, WEB_SESSION_PREFIX

SESSION_PREFIX = WEB_SESSION_PREFIX


@dataclass(frozen=True)
class WebSession:
    """A live session: its id (the cookie's value; known only at sign-in and from the cookie), the
    API key prefix it speaks for and the CSRF token its page's forms carry."""

    session_id: str
    key_prefix: str
    csrf: str


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def session_key(session_id: str) -> str:
    """The Redis key of a session (by the SHA-256 of its id)."""
    return SESSION_PREFIX + _digest(session_id)


def open_session(redis, key_prefix: str, ttl_s: int) -> WebSession:
    """Open a session for the API key ``key_prefix`` lasting ``ttl_s`` seconds; returns it with its
    new random id and CSRF token."""
    session_id, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    key, index = session_key(session_id), KEY_SESSIONS_PREFIX + key_prefix
    redis.hset(key, mapping={"key_prefix": key_prefix, "csrf": csrf, "created_at": int(time.time())})
    redis.expire(key, ttl_s)
    redis.sadd(index, _digest(session_id))
    redis.expire(index, ttl_s)
    return WebSession(session_id, key_prefix, csrf)


def read_session(redis, session_id: str | None) -> WebSession | None:
    """The live session of ``session_id`` (the cookie's value), or None (absent, expired, ended, or
    not a plausible id)."""
    if not session_id or len(session_id) > 128:
        return None
    data = redis.hgetall(session_key(session_id))
    if not data or "key_prefix" not in data:
        return None
    return WebSession(session_id, data["key_prefix"], data.get("csrf", ""))


def close_session(redis, session_id: str | None) -> bool:
    """End one session (sign-out); True if it was live."""
    if not session_id or len(session_id) > 128:
        return False
    return bool(redis.delete(session_key(session_id)))


def end_sessions(redis, key_prefix: str) -> int:
    """End every session of the API key ``key_prefix`` (its revocation); returns how many were live."""
    index = KEY_SESSIONS_PREFIX + key_prefix
    ended = 0
    for digest in redis.smembers(index):
        ended += redis.delete(SESSION_PREFIX + (digest.decode() if isinstance(digest, bytes) else digest))
    redis.delete(index)
    return ended


def principal_for_prefix(session: Session, key_prefix: str) -> Principal | None:
    """The principal of the active (unrevoked) API key ``key_prefix``, or None."""
    row = session.execute(select(ApiKey).where(col(ApiKey.prefix) == key_prefix)).scalar_one_or_none()
    if row is None or row.revoked_at is not None:
        return None
    return Principal(
        key_prefix=row.prefix, role=ApiRole(row.role), enterprise_id=row.enterprise_id, wallet_id=row.wallet_id
    )


__all__ = [
    "WebSession",
    "close_session",
    "end_sessions",
    "open_session",
    "principal_for_prefix",
    "read_session",
    "session_key",
]
