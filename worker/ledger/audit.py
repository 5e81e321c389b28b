"""The audit log: one ``audit_log`` row per credit, mode change, key change, in the caller's transaction.

It sits at the ledger layer (not in ``worker/access``) because the ledger's credits and the billing
services (modes, allowances, Stripe) write it, and neither may import ``access``.
"""

from __future__ import annotations

from sqlmodel import Session

from models.access import AuditLog


def audit(
    session: Session,
    *,
    actor: str,
    action: str,
    enterprise_id: str | None = None,
    wallet_id: str | None = None,
    **detail,
) -> None:
    """Append one audit log entry (credits, mode changes, key changes)."""
    # created_at: the column's server default (now()) fills it at INSERT
    entry = AuditLog(  # type: ignore[call-arg]
        actor=actor, action=action, enterprise_id=enterprise_id, wallet_id=wallet_id, detail=detail
    )
    session.add(entry)
