"""tollgate's records: SQLModel tables (schema by Alembic in ``models/migrations``) and Pydantic schemas."""

from models.schemas import Decision, TurnIn
from models.tables import (
    BillingMode,
    ChatAgentUsage,
    ChatSession,
    ChatStatus,
    Enterprise,
    PayerLevel,
    TransactionKind,
    UsageEvent,
    Wallet,
    WalletTransaction,
)

__all__ = [
    "BillingMode",
    "ChatAgentUsage",
    "ChatSession",
    "ChatStatus",
    "Decision",
    "Enterprise",
    "PayerLevel",
    "TransactionKind",
    "TurnIn",
    "UsageEvent",
    "Wallet",
    "WalletTransaction",
]
