"""App (enterprise) endpoints: the app's default billing mode (``worker.billing.modes``)."""

from __future__ import annotations

from fastapi import APIRouter

from api_stub.deps import ERROR_RESPONSES, Caller, field_problem, forbid_unless, get_gate
from api_stub.routes.wallets import WalletId, mode_problem
from models.enums import ApiRole
from models.wallet import ModePublic, ModeUpdate
from worker.billing.modes import ModeError, set_app_mode
from worker.chats.wiring import resume_wallet_chats
from worker.db import session_scope

#: tagged "wallets" as before the split, so the OpenAPI document is unchanged
router = APIRouter(tags=["wallets"])


@router.put("/v1/enterprises/{enterprise_id}/mode", response_model=ModePublic, responses=ERROR_RESPONSES)
def enterprise_mode(enterprise_id: WalletId, body: ModeUpdate, who: Caller) -> ModePublic:
    """Set an app's default billing mode (owner key of the app, or admin); its wallets without
    an override follow.  Audit-logged (``mode_change``)."""
    forbid_unless(who, ApiRole.owner, ApiRole.admin, action="change modes")
    if who.role is ApiRole.owner and enterprise_id != who.enterprise_id:
        raise field_problem(404, "Unknown enterprise", "enterprise_id", f"no enterprise {enterprise_id!r} for this key")
    if body.mode is None:
        raise field_problem(422, "Invalid request", "mode", "an app needs a mode")
    try:
        with session_scope() as session:
            changed = set_app_mode(
                session, get_gate(), enterprise_id, body.mode, actor=who.actor, resume=resume_wallet_chats
            )
    except ModeError as exc:
        raise mode_problem(exc) from None
    return ModePublic(mode=body.mode, enterprise_id=enterprise_id, wallets_changed=len(changed))
