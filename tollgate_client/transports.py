"""How a billing session reaches tollgate: in-process (a :class:`~worker.wallet.WalletGate` on Redis,
with PostgreSQL for pauses and summaries) or over HTTP (the API's ``POST /v1/turns``, which answers
the same :class:`~models.schemas.Decision`).  Both raise the same errors, so a session behaves the
same on either.

Each transport has a synchronous and an asyncio form; the asyncio in-process transport runs the
synchronous gate in a worker thread (``asyncio.to_thread``), the asyncio HTTP one uses
``httpx.AsyncClient``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

from models.schemas import Decision, TurnIn
from worker.pricing import PricingError

log = logging.getLogger(__name__)


class TollgateClientError(Exception):
    """Base of the client's errors."""


class WalletNotFound(TollgateClientError, LookupError):
    """The session's wallet does not exist in the gate (open and credit it first), or belongs to
    another app.  ``wallet_id`` names it."""

    def __init__(self, wallet_id: str, detail: str = "") -> None:
        super().__init__(f"wallet_id: unknown wallet {wallet_id!r}" + (f" ({detail})" if detail else ""))
        self.wallet_id = wallet_id


class ApiError(TollgateClientError):
    """The HTTP API refused a request: ``status`` and its problem document (``problem``: title,
    detail, ``errors`` naming the fields)."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        super().__init__(f"HTTP {status}: {problem.get('title', '')}: {problem.get('detail', problem)}")
        self.status = status
        self.problem = problem


def _unknown_model(turn: TurnIn, detail: str) -> Exception:
    from tollgate_client.adapters import UnknownModel

    return UnknownModel(turn.model, turn.provider, detail)


# in-process --------------------------------------------------------------------------------------
class InProcessTransport:
    """Records turns through a :class:`~worker.wallet.WalletGate` in this process.

    Args:
        gate: the gate (default: ``WalletGate()`` on ``settings.redis_url``, kicking Celery drains).
        events_url: Redis URL for pub/sub events (default: the gate's settings' ``redis_url``).
    """

    def __init__(self, gate=None, *, events_url: str | None = None) -> None:
        from worker.wallet import WalletGate

        self.gate = gate or WalletGate()
        self.events_url = events_url or self.gate.settings.redis_url

    def record(self, turn: TurnIn) -> Decision:
        """The gate's decision for ``turn``.  Raises UnknownModel, WalletNotFound."""
        from worker.wallet import UnknownWallet, WrongEnterprise

        try:
            return self.gate.record_turn(turn)
        except PricingError as exc:
            raise _unknown_model(turn, str(exc)) from exc
        except (UnknownWallet, WrongEnterprise) as exc:
            raise WalletNotFound(turn.wallet_id, str(exc)) from exc

    def balance(self, wallet_id: str) -> int | None:
        """The wallet's gate balance, nano-USD; None for an unlimited wallet.  Raises WalletNotFound."""
        balance, limited = self.gate.redis.hmget(self.gate.wallet_key(wallet_id), ["balance", "limited"])
        if balance is None:
            raise WalletNotFound(wallet_id)
        return None if limited == "0" else int(balance)

    def start(self, *, enterprise_id: str, chat_id: str, wallet_id: str, workflow: str) -> None:
        """Create the chat's session row (``worker.sessions.start_session``).  Raises WalletNotFound."""
        from worker.sessions import start_session
        from worker.wallet import UnknownWallet

        try:
            start_session(self.gate, enterprise_id=enterprise_id, chat_id=chat_id, wallet_id=wallet_id,
                          workflow=workflow)
        except (UnknownWallet, LookupError) as exc:
            raise WalletNotFound(wallet_id, str(exc)) from exc

    def can_continue(self, wallet_id: str) -> bool:
        """Would the gate accept the wallet's next turn (``worker.sessions.can_continue``: balance
        minus holds, mode, block)?  Raises WalletNotFound."""
        from worker.sessions import can_continue
        from worker.wallet import UnknownWallet

        try:
            return can_continue(self.gate, wallet_id)
        except UnknownWallet as exc:
            raise WalletNotFound(wallet_id) from exc

    def pause(self, *, enterprise_id: str, chat_id: str, wallet_id: str, reason: str,
              needed_nanos: int | None) -> bool:
        """Record the chat as paused (``worker.sessions.pause_chat``: a paused-chat row, the chat
        paused, a ``chat.paused`` event).  True if this call paused it."""
        from worker.sessions import pause_chat

        return bool(pause_chat(self.gate, enterprise_id=enterprise_id, chat_id=chat_id, wallet_id=wallet_id,
                               reason=reason, needed_nanos=needed_nanos))

    def resumed(self, *, enterprise_id: str, chat_id: str) -> None:
        """Mark the chat active and connected again (``worker.sessions.resume_chat``)."""
        from worker.sessions import resume_chat

        try:
            resume_chat(self.gate, enterprise_id=enterprise_id, chat_id=chat_id)
        except (LookupError, PermissionError) as exc:  # the next turn's answer decides anyway
            log.info("chat %s not marked resumed: %s", chat_id, exc)

    def finish(self, *, enterprise_id: str, chat_id: str, workflow: str, period: str) -> dict[str, Any] | None:
        """End the chat (completed; its rollups refreshed) if any of its turns is persisted yet, and
        return the workflow's per-session averages of ``period`` (:func:`worker.rollups.workflow_averages`)."""
        from worker.db import session_scope
        from worker.rollups import end_chat, workflow_averages

        with session_scope() as session:
            try:
                end_chat(session, enterprise_id=enterprise_id, chat_id=chat_id)
            except LookupError:  # nothing drained yet: the averages are those without this chat
                log.info("chat %s has no persisted turn yet; ending it is left to the drain", chat_id)
        with session_scope() as session:
            return workflow_averages(session, enterprise_id, workflow, period)


class AsyncInProcessTransport:
    """:class:`InProcessTransport` for asyncio: the same calls in a worker thread."""

    def __init__(self, gate=None, *, events_url: str | None = None) -> None:
        self.sync = InProcessTransport(gate, events_url=events_url)
        self.events_url = self.sync.events_url

    async def record(self, turn: TurnIn) -> Decision:
        """See :meth:`InProcessTransport.record`."""
        return await asyncio.to_thread(self.sync.record, turn)

    async def balance(self, wallet_id: str) -> int | None:
        """See :meth:`InProcessTransport.balance`."""
        return await asyncio.to_thread(self.sync.balance, wallet_id)

    async def pause(self, **kwargs: Any) -> bool:
        """See :meth:`InProcessTransport.pause`."""
        return await asyncio.to_thread(lambda: self.sync.pause(**kwargs))

    async def start(self, **kwargs: Any) -> None:
        """See :meth:`InProcessTransport.start`."""
        await asyncio.to_thread(lambda: self.sync.start(**kwargs))

    async def can_continue(self, wallet_id: str) -> bool:
        """See :meth:`InProcessTransport.can_continue`."""
        return await asyncio.to_thread(self.sync.can_continue, wallet_id)

    async def resumed(self, **kwargs: Any) -> None:
        """See :meth:`InProcessTransport.resumed`."""
        await asyncio.to_thread(lambda: self.sync.resumed(**kwargs))

    async def finish(self, **kwargs: Any) -> dict[str, Any] | None:
        """See :meth:`InProcessTransport.finish`."""
        return await asyncio.to_thread(lambda: self.sync.finish(**kwargs))


# HTTP --------------------------------------------------------------------------------------------
def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = {"detail": response.text}
    return body if isinstance(body, dict) else {"detail": body}


def _decision(turn: TurnIn, response: httpx.Response) -> Decision:
    if response.status_code == 200:
        return Decision.model_validate(response.json())
    problem = _problem(response)
    if response.status_code == 404:
        raise WalletNotFound(turn.wallet_id, problem.get("detail", ""))
    if response.status_code == 422 and problem.get("title") == "Unknown price":
        raise _unknown_model(turn, problem.get("detail", ""))
    raise ApiError(response.status_code, problem)


def _balance(wallet_id: str, response: httpx.Response) -> int | None:
    if response.status_code == 404:
        raise WalletNotFound(wallet_id, _problem(response).get("detail", ""))
    if response.status_code != 200:
        raise ApiError(response.status_code, _problem(response))
    body = response.json()
    if not body["limited"]:
        return None
    balance = body["gate_balance_nanos"]
    if balance is None:
        raise WalletNotFound(wallet_id, "not loaded in the gate")
    return int(balance)


def _body(turn: TurnIn) -> dict[str, Any]:
    return turn.model_dump(mode="json", exclude_none=True)


class HttpTransport:
    """Records turns through the HTTP API (``POST /v1/turns``, ``GET /v1/wallets/{id}``).

    Args:
        base_url: the API's root, e.g. ``https://tollgate.example`` (ignored when ``client`` is given).
        api_key: an owner key of the session's app (``tg_…``), sent as ``Authorization: Bearer``.
        client: an ``httpx.Client`` to use (e.g. FastAPI's ``TestClient``); default: a new one.
        events_url: Redis URL to subscribe to the app's events for :meth:`wait_for_resume`, or None.
        timeout: seconds per request.

    The API has no endpoint for chat sessions, pauses or summaries yet: :meth:`start` only checks
    the wallet, :meth:`pause` records nothing (the drain records the paused chat from the turn's
    ``pause`` answer) and :meth:`finish` returns None (no comparison with the workflow's averages).
    """

    def __init__(self, base_url: str = "", *, api_key: str, client: httpx.Client | None = None,
                 events_url: str | None = None, timeout: float = 10.0) -> None:
        self.client = client or httpx.Client(base_url=base_url, timeout=timeout)
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.events_url = events_url

    def record(self, turn: TurnIn) -> Decision:
        """The gate's decision for ``turn`` (``POST /v1/turns``).  Raises UnknownModel, WalletNotFound, ApiError."""
        return _decision(turn, self.client.post("/v1/turns", json=_body(turn), headers=self.headers))

    def balance(self, wallet_id: str) -> int | None:
        """The wallet's gate balance, nano-USD (None: unlimited).  Raises WalletNotFound, ApiError."""
        return _balance(wallet_id, self.client.get(f"/v1/wallets/{wallet_id}", headers=self.headers))

    def start(self, *, wallet_id: str, **_: Any) -> None:
        """Check the wallet exists (``GET /v1/wallets/{id}``).  Raises WalletNotFound, ApiError."""
        self.balance(wallet_id)

    def can_continue(self, wallet_id: str) -> bool:
        """The wallet's gate balance is > 0 (or unlimited).  Raises WalletNotFound, ApiError."""
        balance = self.balance(wallet_id)
        return balance is None or balance > 0

    def pause(self, **_: Any) -> bool:
        """Nothing to call over HTTP yet (see the class docstring); False."""
        return False

    def resumed(self, **_: Any) -> None:
        """Nothing to call over HTTP yet (the next accepted turn marks the chat active)."""

    def finish(self, **_: Any) -> dict[str, Any] | None:
        """No summary endpoint over HTTP yet (see the class docstring); None."""
        return None


class AsyncHttpTransport:
    """:class:`HttpTransport` for asyncio, on ``httpx.AsyncClient`` (same arguments)."""

    def __init__(self, base_url: str = "", *, api_key: str, client: httpx.AsyncClient | None = None,
                 events_url: str | None = None, timeout: float = 10.0) -> None:
        self.client = client or httpx.AsyncClient(base_url=base_url, timeout=timeout)
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.events_url = events_url

    async def record(self, turn: TurnIn) -> Decision:
        """See :meth:`HttpTransport.record`."""
        return _decision(turn, await self.client.post("/v1/turns", json=_body(turn), headers=self.headers))

    async def balance(self, wallet_id: str) -> int | None:
        """See :meth:`HttpTransport.balance`."""
        return _balance(wallet_id, await self.client.get(f"/v1/wallets/{wallet_id}", headers=self.headers))

    async def start(self, *, wallet_id: str, **_: Any) -> None:
        """See :meth:`HttpTransport.start`."""
        await self.balance(wallet_id)

    async def can_continue(self, wallet_id: str) -> bool:
        """See :meth:`HttpTransport.can_continue`."""
        balance = await self.balance(wallet_id)
        return balance is None or balance > 0

    async def pause(self, **_: Any) -> bool:
        """See :meth:`HttpTransport.pause`."""
        return False

    async def resumed(self, **_: Any) -> None:
        """See :meth:`HttpTransport.resumed`."""

    async def finish(self, **_: Any) -> dict[str, Any] | None:
        """See :meth:`HttpTransport.finish`."""
        return None
