"""The access family: API keys and the audit log."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, Index, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from models.columns import enum_type, ts
from models.enums import ApiRole


class ApiKey(SQLModel, table=True):
    """An API key, stored as the SHA-256 of the secret (the key is shown once, at creation).

    ``enterprise_id`` scopes ``owner`` and ``end_user`` keys; ``wallet_id`` scopes ``end_user`` keys.
    """

    __tablename__ = "api_key"

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    prefix: str = Field(max_length=20, unique=True)
    key_sha256: str = Field(max_length=64)
    role: ApiRole = Field(sa_type=enum_type(ApiRole, 20))
    enterprise_id: str | None = Field(default=None, foreign_key="enterprise.id", max_length=200)
    wallet_id: str | None = Field(default=None, foreign_key="wallet.id", max_length=200)
    name: str = Field(default="", max_length=200)
    created_at: datetime = Field(sa_column=ts(nullable=False, server_default=func.now()))
    revoked_at: datetime | None = Field(default=None, sa_column=ts(nullable=True))


class AuditLog(SQLModel, table=True):
    """Who did what to money or access: every credit, mode change and key change."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_enterprise_created", "enterprise_id", "created_at"),)

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    actor: str = Field(max_length=200)  # 'key:<prefix>', 'cli', 'stripe', 'system'
    action: str = Field(max_length=50)  # 'credit', 'mode_change', 'key_create', 'key_revoke'
    enterprise_id: str | None = Field(default=None, max_length=200)
    wallet_id: str | None = Field(default=None, max_length=200)
    detail: dict = Field(default_factory=dict, sa_column=Column(JSONB, nullable=False))
    created_at: datetime = Field(sa_column=ts(nullable=False, server_default=func.now()))
