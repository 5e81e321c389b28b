"""App (enterprise) endpoints: the app's default billing mode (``worker.billing.modes``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from api_stub.api_docs import described
from api_stub.deps import ERROR_RESPONSES, Caller, field_problem, forbid_unless, get_gate
from api_stub.routes.wallets import mode_problem
from api_stub.strict_json import StrictJsonRoute
from models.enums import ApiRole
from models.validation import SAFE_ID
from models.wallet import ModePublic, ModeUpdate
from worker.billing.modes import ModeError, set_app_mode
from worker.chats.wiring import resume_wallet_chats
from worker.db import session_scope

router = APIRouter(tags=["modes"], route_class=StrictJsonRoute)
#: the same constraints as a wallet id (the path parameter is unchanged but for its description)
EnterpriseId = Annotated[str, Path(min_length=1, max_length=200, description="The app's id."), SAFE_ID]


@router.put(
    "/v1/enterprises/{enterprise_id}/mode",
    response_model=ModePublic,
    summary="Set an app's default billing mode",
    description=(
        "Set the billing mode of an app (`production`, `development`, `trial` or `track_only`): every "
        "wallet of the app without a mode of its own follows it from its next turn "
        "(`wallets_changed` counts them); wallets given their own mode keep it.\n\n"
        "**Key:** an **owner** key of the app, or an **admin** key. Audit-logged."
    ),
    response_description="The app's mode after the change and how many wallets followed it.",
    responses=described(
        ERROR_RESPONSES,
        {
            403: "Only owner and admin keys change modes. Nothing changed.",
            404: "No such app in your key's scope. Nothing changed.",
            422: "`mode` is missing, null or not one of production, development, trial, track_only. Nothing changed.",
        },
    ),
)
def enterprise_mode(enterprise_id: EnterpriseId, body: ModeUpdate, who: Caller) -> ModePublic:
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
