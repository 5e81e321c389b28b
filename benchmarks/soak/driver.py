"""One load-driver process of the soak: turns at a fixed rate through the public ``record_turns``.

Run by :mod:`benchmarks.soak.run` as ``python -m benchmarks.soak.driver '<json args>'`` with the
``TOLLGATE_*`` settings already pointing at the soak's own servers (the gate's drain kicks go to its
Celery broker).  Each driver process owns the turn_ids ``<run>-d<index>-<n>`` and:

- every ``batch / rate`` seconds sends one batch of ``batch`` turns (a slot is, with probability
  ``retry_fraction``, a retry of a turn this process had accepted earlier, else a new turn whose tokens
  and timestamp come from the next row of the Azure conversation trace); when it falls behind it sends
  at once (no sleeping) and reports how far behind it was;
- spreads new turns over the funded wallets and, for ``dry_fraction`` of them, the small-balance
  wallets that run dry (their turns are denied until the next top-up);
- retries a batch (same turn_ids) whose call failed (Redis restarting): an orchestrator's retry.  A
  turn answered ``duplicate`` whose first answer it never received counts with that first answer;
- appends the first answer of every turn to ``decisions`` (CSV: turn_id, wallet_id, accepted 0/1,
  billed_nanos, cost_nanos, prompt, completion, cached tokens, answered at (Unix ms)), and writes a
  JSON summary (``summary``) when done.

Money stays in integer nano-USD as returned by the gate.
"""

from __future__ import annotations

import csv
import json
import random
import sys
import time
from collections import deque
from pathlib import Path

import redis

from worker import GateBatchError, TurnIn, process_gate
from worker.devtools.traces import read_trace

#: a retry picks among this many of the process's most recent accepted turns
RETRY_WINDOW = 20_000


def build_turn(run: str, index: int, n: int, row, wallets: list[str], dry: list[str], dry_fraction: float) -> TurnIn:
    """The ``n``-th new turn of driver ``index``: ``dry_fraction`` of turns go to a dry wallet, the
    rest to a funded one; 8 chats and 4 agents per wallet; gpt-4o priced; tokens from ``row``."""
    pick = (n * 2654435761) % 10_000 / 10_000  # deterministic spread, no RNG state to share
    wallet = dry[n % len(dry)] if dry and pick < dry_fraction else wallets[n % len(wallets)]
    return TurnIn(
        turn_id=f"{run}-d{index}-{n}",
        wallet_id=wallet,
        enterprise_id=f"soak-e{sum(map(ord, wallet)) % 4}",
        chat_id=f"{wallet}-c{n % 8}",
        workflow="soak",
        agent=f"agent-{n % 4}",
        model="gpt-4o",
        provider="openai",
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        cached_prompt_tokens=row.cached_prompt_tokens,
        duration_ms=1000,
        occurred_at=row.occurred_at,
    )


def drive(args: dict) -> dict:
    """Drive ``args['rate']`` turns/s for ``args['duration']`` s from ``args['start_at']`` (Unix s);
    returns the summary (counts, seconds, max seconds behind schedule)."""
    rows = read_trace(Path(args["trace"]), "azure")
    gate = process_gate()
    rng = random.Random(args["index"])
    rate, batch, index, run = args["rate"], args["batch"], args["index"], args["run"]
    wallets, dry = args["wallets"], args["dry_wallets"]
    recent: deque[TurnIn] = deque(maxlen=RETRY_WINDOW)
    counts = dict(new=0, retries=0, accepted=0, denied=0, duplicates=0, retry_not_duplicate=0, call_errors=0)
    behind_max = 0.0
    n = 0
    interval = batch / rate
    while time.time() < args["start_at"]:
        time.sleep(0.005)
    started = time.monotonic()
    deadline = started + args["duration"]
    next_at = started
    with open(args["decisions"], "a", newline="") as fh:
        out = csv.writer(fh)
        while next_at < deadline:
            now = time.monotonic()
            if now < next_at:
                time.sleep(next_at - now)
            else:
                behind_max = max(behind_max, now - next_at)
            next_at += interval
            turns, is_retry = [], []
            for _ in range(batch):
                if recent and rng.random() < args["retry_fraction"]:
                    turns.append(recent[rng.randrange(len(recent))])
                    is_retry.append(True)
                else:
                    turns.append(build_turn(run, index, n, rows[n % len(rows)], wallets, dry, args["dry_fraction"]))
                    is_retry.append(False)
                    n += 1
            pending = list(range(len(turns)))
            answered: set[str] = set()  # this batch's turns already answered (a reply lost to a failure)
            while pending:  # an orchestrator retries what was not answered (same turn_ids)
                try:
                    decisions = gate.record_turns([turns[i] for i in pending])
                    failed: list[int] = []
                except GateBatchError as exc:
                    decisions = exc.decisions
                    failed = [i for i, d in zip(pending, decisions) if d is None]
                    counts["call_errors"] += 1
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                    counts["call_errors"] += 1
                    time.sleep(0.1)
                    continue
                at_ms = int(time.time() * 1000)
                for i, d in zip(pending, decisions):
                    if d is None:
                        continue
                    t = turns[i]
                    if is_retry[i]:
                        counts["retries"] += 1
                        counts["duplicates"] += d.duplicate
                        counts["retry_not_duplicate"] += not d.duplicate
                        continue
                    if t.turn_id in answered:  # answered before a failed call lost the reply
                        continue
                    answered.add(t.turn_id)
                    counts["new"] += 1
                    if d.accepted:
                        counts["accepted"] += 1
                        recent.append(t)
                    else:
                        counts["denied"] += 1
                    out.writerow(
                        (
                            t.turn_id,
                            t.wallet_id,
                            int(d.accepted),
                            d.billed_nanos,
                            d.cost_nanos,
                            t.prompt_tokens,
                            t.completion_tokens,
                            t.cached_prompt_tokens,
                            at_ms,
                        )
                    )
                pending = failed
                if pending:
                    time.sleep(0.1)
    elapsed = time.monotonic() - started
    return dict(counts, index=index, seconds=elapsed, behind_max_s=behind_max, turns_per_s=counts["new"] / elapsed)


def main(argv: list[str] | None = None) -> int:
    """Entry point: one JSON object of arguments (see :func:`drive`); writes ``args['summary']``."""
    args = json.loads((argv or sys.argv[1:])[0])
    summary = drive(args)
    Path(args["summary"]).write_text(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
