"""Chat endpoints: a chat session's detail, and its lifecycle (start, pause, resume, end: the
billing session of ``worker.chats.lifecycle`` over HTTP).  A chat is named by ``chat_id`` within the
caller's app.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path
from sqlalchemy import select
from sqlmodel import col

from api_stub.api_docs import described
from api_stub.deps import (
    ERROR_RESPONSES,
    Caller,
    Problem,
    field_problem,
    forbid_unless,
    get_gate,
    owner_enterprise,
    wallet_in_scope,
)
from api_stub.strict_json import StrictJsonRoute
from models.chat import ChatSession, ChatSessionCreate, ChatSessionEnd, ChatSessionPublic, PausedChatCreate
from models.enums import ApiRole
from models.validation import SAFE_ID
from worker.access.apikeys import Principal
from worker.chats.lifecycle import WalletCannotPay, pause_chat, resume_chat, start_session
from worker.chats.rollups import UnknownChat, chat_performance, end_chat
from worker.db import session_scope
from worker.gate.gate import UnknownWallet

router = APIRouter(tags=["chats"], route_class=StrictJsonRoute)
ChatId = Annotated[
    str,
    Path(min_length=1, max_length=200, description="The chat's id (`chat_id` of its turns), within your app."),
    SAFE_ID,
]
#: pause/resume need worker.chats.lifecycle (another part of issue 6); without it they are not served


def _unknown_chat(chat_id: str):
    return field_problem(404, "Unknown chat", "chat_id", f"no chat {chat_id!r} for this key")


def _chat_in_scope(session, who: Principal, chat_id: str) -> ChatSession:
    """The chat session if the caller may see it: its app's owner or the end user whose wallet
    pays for it; admins never (no end user's detail: 403).  404 otherwise (or not yet persisted)."""
    forbid_unless(who, ApiRole.owner, ApiRole.end_user, action="read a chat")
    chat = session.execute(
        select(ChatSession).where(
            col(ChatSession.enterprise_id) == who.enterprise_id, col(ChatSession.chat_id) == chat_id
        )
    ).scalar_one_or_none()
    if chat is None or (who.role is ApiRole.end_user and chat.wallet_id != who.wallet_id):
        raise _unknown_chat(chat_id)
    return chat


def _public(session, chat: ChatSession) -> ChatSessionPublic:
    perf: dict[str, Any] = chat_performance(session, chat.enterprise_id, chat.chat_id)
    return ChatSessionPublic(
        **perf,
        wallet_id=chat.wallet_id,
        connection_state=chat.connection_state,
        pause_reason=chat.pause_reason,
        can_resume=chat.can_resume,
    )


@router.get(
    "/v1/chats/{chat_id}",
    response_model=ChatSessionPublic,
    summary="Get a chat",
    description=(
        "A chat's state and totals: `status` (active, paused, completed), `connection_state` and "
        "`can_resume` (whether the orchestrator may go on), its turns, tokens and cost (nano-USD) in "
        "total and per agent. Figures include the chat's turns recorded up to a few seconds ago.\n\n"
        "**Key:** an **owner** key of the chat's app, or the **end_user** key of the wallet paying for "
        "it. **Admin** keys: 403 (no end user's detail)."
    ),
    response_description="The chat's state and totals.",
    responses=described(
        ERROR_RESPONSES,
        {
            403: "Admin keys never see one chat. Nothing was done.",
            404: "No chat `chat_id` of your app (or, for an end-user key, of your wallet) has a recorded turn yet.",
        },
    ),
)
def chat_detail(chat_id: ChatId, who: Caller) -> ChatSessionPublic:
    """A chat session of the caller's app: status, pause state, totals and per-agent figures, as of
    the last drained batch (owner key, or the end user who pays for it)."""
    with session_scope() as session:
        return _public(session, _chat_in_scope(session, who, chat_id))


@router.post(
    "/v1/chats/{chat_id}/end",
    response_model=ChatSessionPublic,
    summary="End a chat",
    description=(
        "Mark a chat completed (at `ended_at`, default now) and refresh its workflow's monthly "
        "rollup at once, so `GET /v1/analytics/rollups` shows it. The body is optional.\n\n"
        "**Key:** an **owner** key of the chat's app.\n\n"
        "**Idempotent:** ending an ended chat changes nothing (the first `ended_at` stays)."
    ),
    response_description="The chat, completed.",
    responses=described(
        ERROR_RESPONSES,
        {
            403: "Only owner keys end chats. Nothing changed.",
            404: "No chat `chat_id` of your app (or, for an end-user key, of your wallet) has a recorded turn yet. Nothing changed.",
        },
    ),
)
def chat_end(chat_id: ChatId, who: Caller, body: Annotated[ChatSessionEnd | None, Body()] = None) -> ChatSessionPublic:
    """End a chat (owner key): marked completed once (a second call keeps the first ``ended_at``)
    and its rollups refreshed at once.  404 until a turn of the chat has been persisted."""
    forbid_unless(who, ApiRole.owner, action="end chats")
    ended_at = body.ended_at if body else None
    if ended_at is not None and ended_at.tzinfo is None:
        raise field_problem(422, "Invalid request", "ended_at", "must carry a time zone (UTC)")
    with session_scope() as session:
        chat = _chat_in_scope(session, who, chat_id)
        _end(session, chat, ended_at)
        session.expire_all()  # the reply reads the chat as the service left it (Core UPDATEs)
        return _public(session, _chat_in_scope(session, who, chat_id))


def _end(session, chat: ChatSession, ended_at) -> None:
    end_chat(session, enterprise_id=chat.enterprise_id, chat_id=chat.chat_id, ended_at=ended_at)


@router.post(
    "/v1/chats/{chat_id}/start",
    response_model=ChatSessionPublic,
    summary="Start a chat",
    description=(
        "Open a chat before its first turn: active and connected, in `workflow`, paid by `wallet_id` "
        "(a wallet of your app, or the platform wallet your key was issued for). Optional: a chat "
        "also starts with its first recorded turn.\n\n"
        "**Key:** an **owner** key.\n\n"
        "**Idempotent:** starting a chat that exists changes nothing (its first wallet and workflow stay)."
    ),
    response_description="The chat.",
    responses=described(
        ERROR_RESPONSES | {409: {}},
        {
            403: "Only owner keys start chats. Nothing changed.",
            404: "`wallet_id` is not a wallet in your key's scope. Nothing changed.",
            409: "The wallet is not active for metering yet. Nothing changed.",
        },
    ),
)
def chat_start(chat_id: ChatId, body: ChatSessionCreate, who: Caller) -> ChatSessionPublic:
    """Open a chat's billing session (owner key; ``worker.chats.lifecycle.start_session``): its row,
    active and connected, in ``workflow``, paid by ``wallet_id``.  Starting a chat that exists
    changes nothing (its first wallet and workflow stay).  404 naming ``wallet_id`` for a wallet
    outside the key's scope; 409 when the wallet is not loaded in the gate."""
    enterprise_id = owner_enterprise(who, action="start chats")
    if body.started_at is not None and body.started_at.tzinfo is None:
        raise field_problem(422, "Invalid request", "started_at", "must carry a time zone (UTC)")
    with session_scope() as session:  # one transaction: the scope check, the chat's row, the reply
        wallet_in_scope(session, who, body.wallet_id, creator=True)
        try:
            start_session(
                session,
                get_gate(),
                enterprise_id=enterprise_id,
                chat_id=chat_id,
                wallet_id=body.wallet_id,
                workflow=body.workflow,
                started_at=body.started_at,
            )
        except UnknownWallet:
            raise Problem(
                409, "Wallet not in the gate", f"wallet {body.wallet_id!r} is not loaded in the gate"
            ) from None
        except LookupError as exc:  # scope checked above; kept for a wallet deleted meanwhile
            raise field_problem(404, "Unknown wallet", "wallet_id", str(exc)) from None
        session.expire_all()  # the reply reads the chat as the service left it (Core statements)
        return _public(session, _chat_in_scope(session, who, chat_id))


@router.post(
    "/v1/chats/{chat_id}/pause",
    response_model=ChatSessionPublic,
    summary="Pause a chat",
    description=(
        "Pause a chat yourself (e.g. an agent loop you stopped), with a `reason` and the nano-USD its "
        "wallet needs before it can go on (`needed_nanos`; default: what it lacks now). The chat is "
        "marked paused and a `chat.paused` event is sent to your app; a credit that covers "
        "`needed_nanos` makes it resumable. A chat with no recorded turn yet needs `wallet_id`.\n\n"
        "You need not call this when a turn is denied: tollgate pauses that chat itself.\n\n"
        "**Key:** an **owner** key.\n\n"
        "**Idempotent:** pausing a paused chat changes nothing."
    ),
    response_description="The chat, paused.",
    responses=described(
        ERROR_RESPONSES,
        {
            403: "Only owner keys pause chats. Nothing changed.",
            404: "No such chat of your app, or `wallet_id` is not a wallet in your key's scope. Nothing changed.",
            422: (
                "Invalid body, `wallet_id` missing for a chat with no recorded turn, or another wallet than "
                "the one paying for the chat. Nothing changed."
            ),
        },
    ),
)
def chat_pause(
    chat_id: ChatId, who: Caller, body: Annotated[PausedChatCreate | None, Body()] = None
) -> ChatSessionPublic:
    """Pause a chat (owner key): an open paused-chat record (one per chat), the chat marked
    paused, ``chat.paused`` announced.  A chat not persisted yet needs ``wallet_id`` (of the
    caller's app, or the platform wallet the key was issued for).  Pausing a paused chat changes
    nothing."""
    enterprise_id = owner_enterprise(who, action="pause chats")
    body = body or PausedChatCreate()
    with session_scope() as session:
        chat = session.execute(
            select(ChatSession).where(
                col(ChatSession.enterprise_id) == who.enterprise_id, col(ChatSession.chat_id) == chat_id
            )
        ).scalar_one_or_none()
        if chat is not None and body.wallet_id not in (None, chat.wallet_id):
            raise field_problem(422, "Invalid request", "wallet_id", f"chat {chat_id!r} is paid by another wallet")
        wallet_id = chat.wallet_id if chat is not None else body.wallet_id
        if wallet_id is None:
            raise field_problem(422, "Invalid request", "wallet_id", "required for a chat with no persisted turn")
        if chat is None:  # a chat of the caller's app may be paused whoever pays for it
            wallet_in_scope(session, who, wallet_id, creator=True)
        try:
            pause_chat(
                session,
                get_gate(),
                enterprise_id=enterprise_id,
                chat_id=chat_id,
                wallet_id=wallet_id,
                reason=body.reason,
                needed_nanos=body.needed_nanos,
            )
        except UnknownWallet:
            raise Problem(409, "Wallet not in the gate", f"wallet {wallet_id!r} is not loaded in the gate") from None
        session.expire_all()  # the reply reads the chat as the service left it (Core UPDATEs)
        return _public(session, _chat_in_scope(session, who, chat_id))


@router.post(
    "/v1/chats/{chat_id}/resume",
    response_model=ChatSessionPublic,
    summary="Resume a paused chat",
    description=(
        "Resume a paused chat if its wallet can pay again: active and connected, so its next turns are "
        "accepted. A `chat.resumable` event is sent once per pause (by this call, or earlier by the "
        "credit that made it payable).\n\n"
        "**Key:** an **owner** key."
    ),
    response_description="The chat, active again.",
    responses=described(
        ERROR_RESPONSES | {409: {}},
        {
            403: "Only owner keys resume chats. Nothing changed.",
            404: "No chat `chat_id` of your app (or, for an end-user key, of your wallet) has a recorded turn yet. Nothing changed.",
            409: (
                "The wallet cannot pay yet (`detail` says how many nano-USD it needs: credit it first), or "
                "it is not active for metering. Nothing changed."
            ),
        },
    ),
)
def chat_resume(chat_id: ChatId, who: Caller) -> ChatSessionPublic:
    """Resume a paused chat (owner key) if its wallet can pay: active and connected again.  If no
    credit or sweep closed its pause first, this call does and announces ``chat.resumable``
    (cause ``resume``), once.  409 while the wallet cannot pay (``needed_nanos`` in the
    detail); nothing changes then."""
    enterprise_id = owner_enterprise(who, action="resume chats")
    with session_scope() as session:  # one transaction: the scope check, the resume, the reply
        _chat_in_scope(session, who, chat_id)
        try:
            resume_chat(session, get_gate(), enterprise_id=enterprise_id, chat_id=chat_id)
        except UnknownWallet as exc:  # before UnknownChat: both are NotFound (LookupError), this one is 409
            raise Problem(409, "Wallet not in the gate", str(exc)) from None
        except UnknownChat:
            raise _unknown_chat(chat_id) from None
        except WalletCannotPay as exc:
            raise Problem(409, "Wallet cannot pay yet", str(exc)) from None
        session.expire_all()  # the reply reads the chat as the service left it (Core UPDATEs)
        return _public(session, _chat_in_scope(session, who, chat_id))
