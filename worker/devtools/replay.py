"""``tollgate replay``: push a real LLM request trace through the whole pipeline.

Each trace row becomes one turn, in file order, on one wallet per run (``replay-<run_id>``) through
the gate; a Celery worker started for the run drains the outbox into PostgreSQL; the replay waits
until every accepted turn is persisted and reports totals counted in PostgreSQL.  Turn ids are
``replay:<run_id>:<row>``, so replaying with the same run id records nothing new.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Callable

from models.enums import PayerLevel
from models.turn import TurnIn
from models.wallet import Wallet
from worker.chats.wiring import after_credit
from worker.db import session_scope
from worker.devtools.traces import TraceError, TraceFormat, TraceRow, read_trace
from worker.devtools.workers import start_celery_worker, stop_process_group, wait_ready
from worker.errors import TollgateError
from worker.gate.gate import WalletGate, process_gate
from worker.ledger.accounts import credit_wallet, ledger_balance, open_wallet
from worker.ledger.turns import wallet_usage
from worker.pricing.prices import TurnLimitExceeded, nanos_to_usd, usd_to_nanos
from worker.validation import InvalidInput, check_text

REPLAY_ENTERPRISE = "replay"
Progress = Callable[[str, int, int], None]  # (phase, done, total)


class ReplayError(TollgateError, RuntimeError):
    """The replay could not finish (a conflicting run id, or turns not persisted in time)."""


@dataclass
class ReplayReport:
    """Totals of one replay.  Counts of persisted turns, tokens and money are read from PostgreSQL.

    Money in nano-USD (``cost_usd`` is a decimal string for display); ``final_balance_nanos`` is
    ``None`` for an unlimited wallet; ``wall_s`` in seconds from the first turn recorded to the last
    one persisted.
    """

    run_id: str
    wallet_id: str
    turns_read: int
    turns_accepted: int
    turns_denied: int
    turns_duplicate: int
    turns_persisted: int
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int
    cost_nanos: int
    cost_usd: str
    billed_nanos: int
    final_balance_nanos: int | None
    ledger_balance_nanos: int | None
    max_turn_cost_nanos: int
    wall_s: float
    turns_per_s: float

    def as_dict(self) -> dict:
        """The report as a JSON-ready dict."""
        return asdict(self)


def _prepare_wallet(gate: WalletGate, run_id: str, wallet_nanos: int | None, enterprise_id: str) -> str:
    wallet_id = f"replay-{run_id}"
    limited = wallet_nanos is not None
    with session_scope() as session:
        existing = session.get(Wallet, wallet_id)
        if existing is not None and existing.enterprise_id != enterprise_id:
            raise ReplayError(
                f"run id {run_id!r} was replayed before in app {existing.enterprise_id!r}; give another --run-id"
            )
        if existing is not None:
            if existing.limited != limited or (limited and existing.credits_nanos != wallet_nanos):
                raise ReplayError(
                    f"run id {run_id!r} was replayed before with a different --wallet-usd "
                    f"({'unlimited' if not existing.limited else nanos_to_usd(existing.credits_nanos)} USD)"
                )
        open_wallet(
            session,
            gate,
            wallet_id=wallet_id,
            enterprise_id=enterprise_id,
            owner_id=wallet_id,
            level=PayerLevel.app_usage,
            limited=limited,
        )
    if wallet_nanos:
        # its own transaction: the gate must hold the wallet (loaded after the commit above) first
        with session_scope() as session:
            credit_wallet(
                session,
                gate,
                wallet_id=wallet_id,
                amount_nanos=wallet_nanos,
                idempotency_key=f"replay:{run_id}:opening",
                description="replay opening balance",
                on_credited=after_credit,
            )
    return wallet_id


def replay(
    path: str | Path,
    *,
    fmt: TraceFormat,
    model: str = "gpt-4o",
    provider: str | None = "openai",
    wallet_usd: Decimal | None = None,
    run_id: str | None = None,
    start_worker: bool = True,
    epoch: datetime | None = None,
    batch_size: int = 500,
    timeout_s: float = 600.0,
    policy: str = "post-hoc",
    progress: Progress | None = None,
    gate: WalletGate | None = None,
    enterprise_id: str = REPLAY_ENTERPRISE,
    chats: int = 1,
    agents: int = 1,
) -> ReplayReport:
    """Replay a trace end to end and return its :class:`ReplayReport`.

    Args:
        path, fmt: the trace and its format (see :mod:`worker.devtools.traces`).
        model, provider: what every turn is priced as (genai-prices ids or an override).
        wallet_usd: opening balance of the run's wallet in USD (``None``: unlimited).
        run_id: names the wallet and the turn ids (default: a new random id).
        start_worker: start a Celery worker for the run (else one must already be running).
        epoch: start time of a Mooncake trace's relative timestamps (default: now).
        batch_size: turns per pipelined gate call.
        timeout_s: give up if persistence makes no progress for this many seconds.
        policy: ``post-hoc`` (a turn is accepted while the balance is > 0 and may overdraw by itself)
            or ``reserve`` (each row first reserves exactly its cost; a row whose cost exceeds the
            available balance is denied and the replay goes on with the next row).
        progress: called with ``(phase, done, total)``; phases ``record`` and ``persist``.
        gate: the gate to record through (the CLI passes the process's,
            :func:`worker.gate.gate.process_gate`, which is also the default).
        enterprise_id: the app the run's wallet and turns belong to (default ``replay``); created if
            missing, so a trace can fill a real app's usage, rollups and /billing.
        chats, agents: spread the rows over this many chats (``replay-<run id>-<k>``, row ``i`` in
            chat ``i mod chats``) and agents (``<format>-trace-<j>``, ``i mod agents``); 1 and 1 (the
            default): one chat ``replay-<run id>``, one agent ``<format>-trace``.

    Raises:
        TraceError (malformed file or row, or a row above the model's context window),
        PricingError (unknown model), ReplayError; nothing is recorded for the first two.
    """
    if policy not in ("post-hoc", "reserve"):
        raise ValueError(f"--policy: {policy!r} is not one of post-hoc, reserve")
    check_text(enterprise_id, "enterprise_id")
    for name, count in (("chats", chats), ("agents", agents)):
        if not 1 <= count <= 1_000_000:
            raise InvalidInput(name, f"{count} is not between 1 and 1,000,000")
    rows: list[TraceRow] = read_trace(path, fmt, epoch=epoch)
    wallet_nanos = usd_to_nanos(wallet_usd) if wallet_usd is not None else None
    if wallet_nanos is not None and wallet_nanos < 0:
        raise ValueError(f"--wallet-usd must be >= 0, got {wallet_usd}")
    gate = gate or process_gate()
    for row in (rows[0], rows[-1]):  # unknown model → error before anything is recorded
        gate.prices.sheet(model, provider, row.occurred_at)
    sheet = gate.prices.sheet(model, provider, rows[0].occurred_at)  # a model's window does not move with time
    for row in rows:  # a row above the model's context window → error before anything is recorded
        try:
            sheet.check_window(row.prompt_tokens, row.completion_tokens)
        except TurnLimitExceeded as exc:
            field = {
                "azure": {"prompt_tokens": "ContextTokens", "completion_tokens": "GeneratedTokens"},
                "mooncake": {"prompt_tokens": "input_length", "completion_tokens": "output_length"},
            }
            column = None if exc.field is None else field.get(fmt, {}).get(exc.field, exc.field)
            raise TraceError(Path(path), exc.message, row=row.row, field=column) from None
    run_id = run_id or uuid.uuid4().hex[:12]
    wallet_id = _prepare_wallet(gate, run_id, wallet_nanos, enterprise_id)
    chat_ids = [f"replay-{run_id}"] if chats == 1 else [f"replay-{run_id}-{k}" for k in range(chats)]
    agent_names = [f"{fmt}-trace"] if agents == 1 else [f"{fmt}-trace-{j}" for j in range(agents)]
    notify = progress or (lambda phase, done, total: None)

    worker: subprocess.Popen | None = None
    log: Path | None = None  # the worker's log (set with the worker)
    if start_worker:
        log = Path(tempfile.gettempdir()) / f"tollgate-replay-{run_id}.log"
        worker = start_celery_worker(f"replay-{run_id}", log, loglevel="INFO")
    try:
        if worker is not None and log is not None:  # the clock measures the pipeline, not the worker's boot (~1 s)
            try:
                wait_ready(worker, log)
            except RuntimeError as exc:
                raise ReplayError(f"the replay's Celery worker did not start: {exc}") from None
        started = time.perf_counter()
        accepted = denied = duplicate = 0
        max_cost = 0
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            turns = [
                TurnIn(
                    turn_id=f"replay:{run_id}:{r.row}",
                    wallet_id=wallet_id,
                    enterprise_id=enterprise_id,
                    chat_id=chat_ids[n % chats],
                    workflow="replay",
                    agent=agent_names[n % agents],
                    model=model,
                    provider=provider,
                    prompt_tokens=r.prompt_tokens,
                    completion_tokens=r.completion_tokens,
                    cached_prompt_tokens=r.cached_prompt_tokens,
                    occurred_at=r.occurred_at,
                )
                for n, r in enumerate(chunk, start=i)
            ]
            for d in gate.record_turns(turns, reserve_exact=policy == "reserve"):
                accepted += d.accepted
                denied += not d.accepted
                duplicate += d.duplicate
                if d.accepted:
                    max_cost = max(max_cost, d.cost_nanos)
            notify("record", i + len(chunk), len(rows))
        gate.kicker(gate.shard(wallet_id))

        persisted = _wait_persisted(gate, wallet_id, accepted, timeout_s, worker, log, notify)
        wall_s = time.perf_counter() - started
    finally:
        if worker is not None:
            stop_process_group(worker)

    with session_scope() as session:
        usage = wallet_usage(session, wallet_id)
        ledger = ledger_balance(session, wallet_id) if wallet_nanos is not None else None
    return ReplayReport(
        run_id=run_id,
        wallet_id=wallet_id,
        turns_read=len(rows),
        turns_accepted=accepted,
        turns_denied=denied,
        turns_duplicate=duplicate,
        turns_persisted=persisted,
        prompt_tokens=usage["prompt_tokens"],
        completion_tokens=usage["completion_tokens"],
        cached_prompt_tokens=usage["cached_prompt_tokens"],
        cost_nanos=usage["cost_nanos"],
        cost_usd=nanos_to_usd(usage["cost_nanos"]),
        billed_nanos=usage["billed_nanos"],
        final_balance_nanos=gate.balance(wallet_id) if wallet_nanos is not None else None,
        ledger_balance_nanos=ledger,
        max_turn_cost_nanos=max_cost,
        wall_s=round(wall_s, 3),
        turns_per_s=round(len(rows) / wall_s, 1) if wall_s > 0 else 0.0,
    )


def _wait_persisted(gate, wallet_id, target, timeout_s, worker, log, notify) -> int:
    """Poll PostgreSQL until ``target`` usage events of the wallet exist; returns the count."""
    last_count, last_progress, last_kick = -1, time.monotonic(), time.monotonic()
    while True:
        with session_scope() as session:
            count = wallet_usage(session, wallet_id)["turns"]
        notify("persist", count, target)
        now = time.monotonic()
        if count >= target:
            return count
        if count != last_count:
            last_count, last_progress = count, now
        if worker is not None and worker.poll() is not None:
            raise ReplayError(f"the replay's Celery worker exited with {worker.returncode}; see {log}")
        if now - last_progress > timeout_s:
            raise ReplayError(
                f"{target - count} accepted turn(s) not persisted after {timeout_s:.0f} s without progress "
                f"(is a worker running? {'see ' + str(log) if log else 'started with --no-worker'})"
            )
        if now - last_kick > 2.0:  # a kick can be missed while a drain is finishing: ask again
            gate.kicker(gate.shard(wallet_id))
            last_kick = now
        time.sleep(0.05)
