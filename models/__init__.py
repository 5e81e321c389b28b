"""tollgate's records, one module per family (``wallet``, ``turn``, ``chat``, ``rollup``, ``budget``,
``stripe``, ``access``, ``reconcile``), each with its SQLModel tables (schema by Alembic in
``models/migrations``) and its API shapes (``XBase`` shared fields, ``X`` the table, ``XCreate`` an
input, ``XPublic`` an output, ``XsPublic`` a list of them); ``enums`` and ``validation`` beside them.
Import from the family module; the names below are kept for existing callers.
"""

from models.chat import ChatAgentUsage, ChatSession
from models.enums import BillingMode, ChatStatus, PayerLevel, TransactionKind
from models.turn import Decision, TurnIn, UsageEvent
from models.wallet import Enterprise, Wallet, WalletTransaction

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
