"""Chats: end a chat.

Commands import their services when they run (function-local imports, on purpose): ``tollgate
--help`` and each command load only what they use."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Optional

import typer

from worker.cli.common import fail, out

chat_app = typer.Typer(help="Chats: end a chat (marks it completed, refreshes its rollups).", no_args_is_help=True)


@chat_app.command("end")
def chat_end(
    enterprise: str = typer.Argument(..., help="enterprise_id"),
    chat_id: str = typer.Argument(..., help="chat_id"),
    at: Optional[datetime] = typer.Option(None, "--at", help="when the chat ended (UTC; default now)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Mark a chat completed and refresh its rollups at once."""
    from datetime import UTC

    from worker.chats.rollups import end_chat
    from worker.db import session_scope

    if at is not None and at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    try:
        with session_scope() as session:
            ended = end_chat(session, enterprise_id=enterprise, chat_id=chat_id, ended_at=at)
    except (LookupError, ValueError) as exc:
        fail(str(exc).strip("'\""))
    data = ended.as_dict()
    if as_json:
        print(json.dumps(data))
        return
    note = " (already completed)" if ended.already_completed else ""
    out.print(
        f"chat {enterprise}/{chat_id} completed at {data['ended_at']}{note}; refreshed "
        + (", ".join(f"{r['workflow']}/{r['period']}" for r in data["rollups"]) or "no rollup")
    )
