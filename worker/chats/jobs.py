"""The chats' scheduled jobs: entry-point bodies shared by their beat task and their CLI command.

A job is a loop of units of work; it opens one ``session_scope`` per unit (a rollup group, a
wallet) and calls the services, which take that session and never commit.  Short transactions on
purpose: a job must not hold locks the drain waits for, and a job killed mid-way keeps what it
committed.
"""

from __future__ import annotations

import time

from worker.chats import rollups  # the module, not its names: tests patch rollups.refresh_rollup
from worker.chats.lifecycle import paused_wallets
from worker.chats.rollups import DEFAULT_DIRTY_LIMIT, pending_dirty
from worker.chats.wiring import resume_wallet_chats
from worker.db import session_scope
from worker.gate.gate import UnknownWallet, WalletGate


def refresh_dirty_groups(limit: int = DEFAULT_DIRTY_LIMIT, max_seconds: float | None = None) -> int:
    """THE rollup refresh (the beat job ``tollgate.rollups.refresh_dirty`` and ``tollgate rollup
    refresh --all-dirty``): refresh the groups marked dirty, each in a transaction of its own that
    also deletes its mark, ``limit`` marks read at a time, until none is left or ``max_seconds``
    have passed (None: no deadline).  Marks are read, not taken: a run killed mid-way (SIGKILL, no
    handler) leaves every group it did not refresh marked for the next run.  A mark a drain is
    writing right now is left for the next run.  Returns the groups refreshed.
    Raises: ValueError for a bad ``limit``; a failing group's error (its mark stays)."""
    total = 0
    seen: set[tuple[str, str, str]] = set()
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    while True:
        with session_scope() as session:
            groups = [g for g in pending_dirty(session, limit) if g not in seen]
        for group in groups:  # a failure rolls back that group's mark deletion: it stays marked
            with session_scope() as session:
                rollups.refresh_rollup(session, *group)
        seen.update(groups)
        total += len(groups)
        if not groups or (deadline is not None and time.monotonic() >= deadline):
            return total


def sweep_paused(gate: WalletGate, *, limit: int = 1000) -> dict[str, int]:
    """The beat job ``tollgate.billing.resume_paused``: resume the paused chats of every wallet (up
    to ``limit`` wallets with open records, :func:`worker.chats.lifecycle.paused_wallets`) that can
    pay again, cause ``sweep``, one ``session_scope`` per wallet (its chats' rows are locked in the
    drain's order within it).  Wallets the gate lacks are skipped (a rebuild loads them; the next
    sweep tries again).  Returns ``{"wallets", "resumed"}``."""
    with session_scope() as session:
        wallet_ids = paused_wallets(session, limit=limit)
    resumed = 0
    for wallet_id in wallet_ids:
        try:
            resumed += len(resume_wallet_chats(gate, wallet_id, cause="sweep"))
        except UnknownWallet:
            continue
    return {"wallets": len(wallet_ids), "resumed": resumed}
