"""How a billing session reaches tollgate: in-process (a :class:`~worker.gate.gate.WalletGate` on Redis,
with PostgreSQL for pauses and summaries) or over HTTP (the API's ``POST /v1/turns``, which answers
the same :class:`~models.turn.Decision`).  Both raise the same errors, so a session behaves the
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

import worker
from models.turn import Decision, TurnIn
from worker import PricingError, TollgateError
from worker.client.adapters import UnknownModel

log = logging.getLogger(__name__)


class TollgateClientError(TollgateError):
    """Base of the client's errors."""


class WalletNotFound(TollgateClientError, LookupError):
    """The session's wallet does not exist in the gate (open and credit it first), or belongs to
    another app.  ``wallet_id`` names it."""

    def __init__(self, wallet_id: str, detail: str = "") -> None:
        super().__init__(
            f"wallet_id: unknown wallet {wallet_id!r}" + (f" ({detail})" if detail else ""),
            field="wallet_id",
            http_status=404,
            title="Unknown wallet",
        )
        self.wallet_id = wallet_id


class ApiError(TollgateClientError):
    """The HTTP API refused a request: ``status`` and its problem document (``problem``: title,
    detail, ``errors`` naming the fields)."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        errors = problem.get("errors") if isinstance(problem, dict) else None
        super().__init__(
            f"HTTP {status}: {problem.get('title', '')}: {problem.get('detail', problem)}",
            field=errors[0].get("field") if errors and isinstance(errors[0], dict) else None,
            http_status=status,
        )
        self.status = status
        self.problem = problem


def _unknown_model(turn: TurnIn, detail: str) -> Exception:
    return UnknownModel(turn.model, turn.provider, detail)


# in-process --------------------------------------------------------------------------------------
class InProcessTransport:
    """Records turns through a :class:`~worker.gate.gate.WalletGate` in this process.

    Args:
        gate: the gate (default: the process's gate, ``worker.process_gate()``, on ``settings.redis_url``).
        events_url: Redis URL for pub/sub events (default: the gate's settings' ``redis_url``).
    """

    def __init__(self, gate=None, *, events_url: str | None = None) -> None:
        self.gate = gate or worker.process_gate()
        self.events_url = events_url or self.gate.settings.redis_url

    def record(self, turn: TurnIn) -> Decision:
        """The gate's decision for ``turn``.  Raises UnknownModel, WalletNotFound."""
        try:
            return self.gate.record_turn(turn)
        except PricingError as exc:
            raise _unknown_model(turn, str(exc)) from exc
        except (worker.UnknownWallet, worker.WrongEnterprise) as exc:
            raise WalletNotFound(turn.wallet_id, str(exc)) from exc

    def balance(self, wallet_id: str) -> int | None:
        """The wallet's gate balance, nano-USD; None for an unlimited wallet.  Raises WalletNotFound."""
        balance, limited = self.gate.redis.hmget(self.gate.wallet_key(wallet_id), ["balance", "limited"])
        if balance is None:
            raise WalletNotFound(wallet_id)
        return None if limited == "0" else int(balance)

    def start(self, *, enterprise_id: str, chat_id: str, wallet_id: str, workflow: str) -> None:
        """Create the chat's session row (``worker.chats.lifecycle.start_session``).  Raises WalletNotFound."""
        try:
            worker.start_session(
                self.gate, enterprise_id=enterprise_id, chat_id=chat_id, wallet_id=wallet_id, workflow=workflow
            )
        except (worker.UnknownWallet, LookupError) as exc:
            raise WalletNotFound(wallet_id, str(exc)) from exc

    def can_continue(self, wallet_id: str) -> bool:
        """Would the gate accept the wallet's next turn (``worker.chats.lifecycle.can_continue``: balance
        minus reservations, mode, block)?  Raises WalletNotFound."""
        try:
            return worker.can_continue(self.gate, wallet_id)
        except worker.UnknownWallet as exc:
            raise WalletNotFound(wallet_id) from exc

    def pause(self, *, enterprise_id: str, chat_id: str, wallet_id: str, reason: str, needed_nanos: int | None) -> bool:
        """Record the chat as paused (``worker.chats.lifecycle.pause_chat``: a paused-chat row, the chat
        paused, a ``chat.paused`` event).  True if this call paused it."""
        return bool(
            worker.pause_chat(
                self.gate,
                enterprise_id=enterprise_id,
                chat_id=chat_id,
                wallet_id=wallet_id,
                reason=reason,
                needed_nanos=needed_nanos,
            )
        )

    def resumed(self, *, enterprise_id: str, chat_id: str) -> None:
        """Mark the chat active and connected again (``worker.chats.lifecycle.resume_chat``)."""
        try:
            worker.resume_chat(self.gate, enterprise_id=enterprise_id, chat_id=chat_id)
        except (LookupError, PermissionError) as exc:  # the next turn's answer decides anyway
            log.info("chat %s not marked resumed: %s", chat_id, exc)

    def finish(self, *, enterprise_id: str, chat_id: str, workflow: str, period: str) -> dict[str, Any] | None:
        """End the chat (completed; its rollups refreshed) if any of its turns is persisted yet, and
        return the workflow's per-session averages of ``period`` (:func:`worker.chats.rollups.workflow_averages`)."""
        with worker.session_scope() as session:
            try:
                worker.end_chat(session, enterprise_id=enterprise_id, chat_id=chat_id)
            except LookupError:  # nothing drained yet: the averages are those without this chat
                log.info("chat %s has no persisted turn yet; ending it is left to the drain", chat_id)
        with worker.session_scope() as session:
            return worker.workflow_averages(session, enterprise_id, workflow, period)


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


def _wallet(wallet_id: str, response: httpx.Response) -> dict[str, Any]:
    """The body of ``GET /v1/wallets/{id}`` of a wallet loaded in the gate.  Raises WalletNotFound
    (unknown, outside the key's scope, or not in the gate), ApiError."""
    if response.status_code == 404:
        raise WalletNotFound(wallet_id, _problem(response).get("detail", ""))
    if response.status_code != 200:
        raise ApiError(response.status_code, _problem(response))
    body = response.json()
    if body["gate_balance_nanos"] is None:
        raise WalletNotFound(wallet_id, "not loaded in the gate")
    return body


def _balance(wallet_id: str, response: httpx.Response) -> int | None:
    body = _wallet(wallet_id, response)
    return int(body["gate_balance_nanos"]) if body["limited"] else None


def _started(wallet_id: str, response: httpx.Response) -> None:
    if response.status_code in (404, 409):  # outside the key's scope / not loaded in the gate
        raise WalletNotFound(wallet_id, _problem(response).get("detail", ""))
    if response.status_code != 200:
        raise ApiError(response.status_code, _problem(response))


def _paused(response: httpx.Response) -> bool:
    if response.status_code != 200:
        raise ApiError(response.status_code, _problem(response))
    return response.json()["status"] == "paused"


def _resumed(chat_id: str, response: httpx.Response) -> None:
    if response.status_code in (404, 409):  # the next turn's answer decides anyway
        log.info("chat %s not marked resumed: %s", chat_id, _problem(response).get("detail", ""))
    elif response.status_code != 200:
        raise ApiError(response.status_code, _problem(response))


def _ended(chat_id: str, response: httpx.Response) -> None:
    if response.status_code == 404:  # nothing drained yet: the averages are those without this chat
        log.info("chat %s has no persisted turn yet; ending it is left to the drain", chat_id)
    elif response.status_code != 200:
        raise ApiError(response.status_code, _problem(response))


def _averages(response: httpx.Response) -> dict[str, Any]:
    if response.status_code != 200:
        raise ApiError(response.status_code, _problem(response))
    return response.json()


def _pause_body(wallet_id: str, reason: str | None, needed_nanos: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"wallet_id": wallet_id, "reason": reason or "paused_by_orchestrator"}
    if needed_nanos is not None:
        body["needed_nanos"] = needed_nanos
    return body


def _body(turn: TurnIn) -> dict[str, Any]:
    return turn.model_dump(mode="json", exclude_none=True)


class HttpTransport:
    """Records turns and runs the chat's billing session through the HTTP API: ``POST /v1/turns``,
    ``GET /v1/wallets/{id}`` (balance, ``can_continue``), ``POST /v1/chats/{chat_id}/start|pause|
    resume|end`` and ``GET /v1/analytics/workflows/{workflow}`` (the comparison of ``finalize()``),
    so a session gives the same results as in process.

    Args:
        base_url: the API's root, e.g. ``https://tollgate.example`` (ignored when ``client`` is given).
        api_key: an owner key of the session's app (``tg_…``), sent as ``Authorization: Bearer``; for
            a level-1 (``platform``) session, the owner key issued for the creator's platform wallet
            (``tollgate apikey create --role owner --enterprise <app> --wallet plat:<creator>``).
        client: an ``httpx.Client`` to use (e.g. FastAPI's ``TestClient``); default: a new one.
        events_url: Redis URL to subscribe to the app's events for :meth:`wait_for_resume`, or None.
        timeout: seconds per request.
    """

    def __init__(
        self,
        base_url: str = "",
        *,
        api_key: str,
        client: httpx.Client | None = None,
        events_url: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.client = client or httpx.Client(base_url=base_url, timeout=timeout)
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.events_url = events_url

    def record(self, turn: TurnIn) -> Decision:
        """The gate's decision for ``turn`` (``POST /v1/turns``).  Raises UnknownModel, WalletNotFound, ApiError."""
        return _decision(turn, self.client.post("/v1/turns", json=_body(turn), headers=self.headers))

    def balance(self, wallet_id: str) -> int | None:
        """The wallet's gate balance, nano-USD (None: unlimited).  Raises WalletNotFound, ApiError."""
        return _balance(wallet_id, self.client.get(f"/v1/wallets/{wallet_id}", headers=self.headers))

    def start(self, *, enterprise_id: str, chat_id: str, wallet_id: str, workflow: str) -> None:
        """Open the chat's session (``POST /v1/chats/{chat_id}/start``; the key's app is
        ``enterprise_id``).  Raises WalletNotFound, ApiError."""
        _started(
            wallet_id,
            self.client.post(
                f"/v1/chats/{chat_id}/start", headers=self.headers, json={"wallet_id": wallet_id, "workflow": workflow}
            ),
        )

    def can_continue(self, wallet_id: str) -> bool:
        """Would the gate accept the wallet's next turn (balance minus reservations, mode, block; the
        wallet's ``can_continue``)?  Raises WalletNotFound, ApiError."""
        body = _wallet(wallet_id, self.client.get(f"/v1/wallets/{wallet_id}", headers=self.headers))
        return bool(body["can_continue"])

    def pause(
        self, *, enterprise_id: str, chat_id: str, wallet_id: str, reason: str | None, needed_nanos: int | None
    ) -> bool:
        """Record the chat as paused (``POST /v1/chats/{chat_id}/pause``: a paused-chat record, the
        chat paused, ``chat.paused``; once per chat).  True if the chat is paused.  Raises ApiError."""
        return _paused(
            self.client.post(
                f"/v1/chats/{chat_id}/pause", headers=self.headers, json=_pause_body(wallet_id, reason, needed_nanos)
            )
        )

    def resumed(self, *, enterprise_id: str, chat_id: str) -> None:
        """Mark the chat active and connected again (``POST /v1/chats/{chat_id}/resume``; a chat the
        API does not know, or a wallet that still cannot pay, is logged and left).  Raises ApiError."""
        _resumed(chat_id, self.client.post(f"/v1/chats/{chat_id}/resume", headers=self.headers))

    def finish(self, *, enterprise_id: str, chat_id: str, workflow: str, period: str) -> dict[str, Any] | None:
        """End the chat (``POST /v1/chats/{chat_id}/end``: completed, rollups refreshed) if any of
        its turns is persisted yet, and return the workflow's per-session averages of ``period``
        (``GET /v1/analytics/workflows/{workflow}``).  Raises ApiError."""
        _ended(chat_id, self.client.post(f"/v1/chats/{chat_id}/end", headers=self.headers))
        return _averages(
            self.client.get(f"/v1/analytics/workflows/{workflow}", headers=self.headers, params={"period": period})
        )


class AsyncHttpTransport:
    """:class:`HttpTransport` for asyncio, on ``httpx.AsyncClient`` (same arguments)."""

    def __init__(
        self,
        base_url: str = "",
        *,
        api_key: str,
        client: httpx.AsyncClient | None = None,
        events_url: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.client = client or httpx.AsyncClient(base_url=base_url, timeout=timeout)
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.events_url = events_url

    async def record(self, turn: TurnIn) -> Decision:
        """See :meth:`HttpTransport.record`."""
        return _decision(turn, await self.client.post("/v1/turns", json=_body(turn), headers=self.headers))

    async def balance(self, wallet_id: str) -> int | None:
        """See :meth:`HttpTransport.balance`."""
        return _balance(wallet_id, await self.client.get(f"/v1/wallets/{wallet_id}", headers=self.headers))

    async def start(self, *, enterprise_id: str, chat_id: str, wallet_id: str, workflow: str) -> None:
        """See :meth:`HttpTransport.start`."""
        _started(
            wallet_id,
            await self.client.post(
                f"/v1/chats/{chat_id}/start", headers=self.headers, json={"wallet_id": wallet_id, "workflow": workflow}
            ),
        )

    async def can_continue(self, wallet_id: str) -> bool:
        """See :meth:`HttpTransport.can_continue`."""
        body = _wallet(wallet_id, await self.client.get(f"/v1/wallets/{wallet_id}", headers=self.headers))
        return bool(body["can_continue"])

    async def pause(
        self, *, enterprise_id: str, chat_id: str, wallet_id: str, reason: str | None, needed_nanos: int | None
    ) -> bool:
        """See :meth:`HttpTransport.pause`."""
        return _paused(
            await self.client.post(
                f"/v1/chats/{chat_id}/pause", headers=self.headers, json=_pause_body(wallet_id, reason, needed_nanos)
            )
        )

    async def resumed(self, *, enterprise_id: str, chat_id: str) -> None:
        """See :meth:`HttpTransport.resumed`."""
        _resumed(chat_id, await self.client.post(f"/v1/chats/{chat_id}/resume", headers=self.headers))

    async def finish(self, *, enterprise_id: str, chat_id: str, workflow: str, period: str) -> dict[str, Any] | None:
        """See :meth:`HttpTransport.finish`."""
        _ended(chat_id, await self.client.post(f"/v1/chats/{chat_id}/end", headers=self.headers))
        return _averages(
            await self.client.get(
                f"/v1/analytics/workflows/{workflow}", headers=self.headers, params={"period": period}
            )
        )
