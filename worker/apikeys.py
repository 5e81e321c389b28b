"""API keys: created (shown once), stored as SHA-256, revocable; every key change is audited.

A key reads ``tg_<prefix>_<secret>``: the prefix (12 hex) finds the row, the SHA-256 of the whole
key is compared in constant time.  Keys are 32 random bytes, so a plain hash is as good as a slow
one (nothing to brute-force).  Functions that take a session never commit.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlmodel import Session

from models.tables import ApiKey, ApiRole, AuditLog, Enterprise, Wallet


class ApiKeyError(ValueError):
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


def audit(session: Session, *, actor: str, action: str, enterprise_id: str | None = None,
          wallet_id: str | None = None, **detail) -> None:
    """Append one audit log entry (credits, mode changes, key changes)."""
    session.add(AuditLog(actor=actor, action=action, enterprise_id=enterprise_id, wallet_id=wallet_id,
                         detail=detail))


def create_key(session: Session, *, role: ApiRole, enterprise_id: str | None = None,
               wallet_id: str | None = None, name: str = "", actor: str = "cli") -> str:
    """Create a key and return it (the only time it is visible).

    Scopes: ``owner`` needs ``enterprise_id``; ``end_user`` needs ``enterprise_id`` and a wallet of
    that enterprise; ``admin`` takes neither.  Raises ApiKeyError naming the field.
    """
    role = ApiRole(role)
    if role is ApiRole.admin and (enterprise_id or wallet_id):
        raise ApiKeyError("enterprise_id/wallet_id: an admin key is not scoped to an app or wallet")
    if role is not ApiRole.admin:
        if not enterprise_id or session.get(Enterprise, enterprise_id) is None:
            raise ApiKeyError(f"enterprise_id: unknown enterprise {enterprise_id!r}")
    if role is ApiRole.end_user:
        wallet = session.get(Wallet, wallet_id) if wallet_id else None
        if wallet is None or wallet.enterprise_id != enterprise_id:
            raise ApiKeyError(f"wallet_id: no wallet {wallet_id!r} in enterprise {enterprise_id!r}")
    elif wallet_id:
        raise ApiKeyError("wallet_id: only end_user keys are scoped to a wallet")
    prefix = secrets.token_hex(6)
    key = f"tg_{prefix}_{secrets.token_urlsafe(32)}"
    session.add(ApiKey(prefix=prefix, key_sha256=_digest(key), role=role, enterprise_id=enterprise_id,
                       wallet_id=wallet_id, name=name))
    audit(session, actor=actor, action="key_create", enterprise_id=enterprise_id, wallet_id=wallet_id,
          prefix=prefix, role=role.value)
    return key


def revoke_key(session: Session, prefix: str, *, actor: str = "cli") -> bool:
    """Revoke the key with ``prefix``; True if it was active."""
    row = session.execute(select(ApiKey).where(ApiKey.prefix == prefix)).scalar_one_or_none()
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = datetime.now(UTC)
    audit(session, actor=actor, action="key_revoke", enterprise_id=row.enterprise_id, wallet_id=row.wallet_id,
          prefix=prefix)
    return True


def authenticate(session: Session, key: str) -> Principal | None:
    """The principal of a valid, unrevoked key, or None (malformed, unknown, wrong or revoked)."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != "tg" or len(parts[1]) != 12:
        return None
    row = session.execute(select(ApiKey).where(ApiKey.prefix == parts[1])).scalar_one_or_none()
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_sha256, _digest(key)):
        return None
    return Principal(key_prefix=row.prefix, role=ApiRole(row.role), enterprise_id=row.enterprise_id,
                     wallet_id=row.wallet_id)
