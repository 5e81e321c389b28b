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


class TurnMaker:
    """The new turns of driver ``index``, built cheaply while driving: every distinct part of a turn
    is validated by :class:`TurnIn` once, before the timed phase, and each turn is then a copy of its
    trace row's validated turn with its own ids (as ``model_copy(update=...)`` makes it: no second
    validation of values already validated).  The ``n``-th turn: ``dry_fraction`` of turns go to a dry wallet, the rest
    to a funded one; 8 chats and 4 agents per wallet; gpt-4o priced; tokens and time from trace row
    ``n % len(rows)``; turn_id ``<run>-d<index>-<n>``.  Raises pydantic.ValidationError (at
    construction) for a row, wallet, chat or agent :class:`TurnIn` refuses."""

    def __init__(self, run: str, index: int, rows, wallets: list[str], dry: list[str], dry_fraction: float) -> None:
        self.prefix = f"{run}-d{index}-"
        self.wallets, self.dry, self.dry_fraction = wallets, dry, dry_fraction
        self.rows = [
            TurnIn(
                turn_id=f"{self.prefix}0",
                wallet_id=wallets[0],
                enterprise_id=enterprise_of(wallets[0]),
                chat_id=f"{wallets[0]}-c0",
                workflow="soak",
                agent="agent-0",
                model="gpt-4o",
                provider="openai",
                prompt_tokens=row.prompt_tokens,
                completion_tokens=row.completion_tokens,
                cached_prompt_tokens=row.cached_prompt_tokens,
                duration_ms=1000,
                occurred_at=row.occurred_at,
            )
            for row in rows
        ]
        template = self.rows[0]
        self.fields_set = frozenset(template.model_fields_set)
        #: per wallet: its enterprise and its 8 chats' ids (each combination validated once)
        self.ids = {
            wallet: (enterprise_of(wallet), [f"{wallet}-c{c}" for c in range(8)]) for wallet in (*wallets, *dry)
        }
        for wallet, (enterprise, chats) in self.ids.items():
            for c, chat in enumerate(chats):
                TurnIn.model_validate(
                    {**template.model_dump(), "wallet_id": wallet, "enterprise_id": enterprise, "chat_id": chat}
                    | {"agent": f"agent-{c % 4}", "turn_id": f"{self.prefix}{10**12}"}
                )

    def __call__(self, n: int) -> TurnIn:
        """The ``n``-th new turn (class doc)."""
        pick = (n * 2654435761) % 10_000 / 10_000  # deterministic spread, no RNG state to share
        dry = self.dry
        wallet = dry[n % len(dry)] if dry and pick < self.dry_fraction else self.wallets[n % len(self.wallets)]
        enterprise, chats = self.ids[wallet]
        values = self.rows[n % len(self.rows)].__dict__.copy()
        values.update(
            turn_id=f"{self.prefix}{n}",
            wallet_id=wallet,
            enterprise_id=enterprise,
            chat_id=chats[n % 8],
            agent=AGENTS[n % 4],
        )
        # what TurnIn.model_copy(update=...) does, without its copies of the (unchanged) fields set
        turn = object.__new__(TurnIn)
        set_attr = object.__setattr__
        set_attr(turn, "__dict__", values)
        set_attr(turn, "__pydantic_fields_set__", self.fields_set)
        set_attr(turn, "__pydantic_extra__", None)
        set_attr(turn, "__pydantic_private__", None)
        return turn


AGENTS = tuple(f"agent-{a}" for a in range(4))


def enterprise_of(wallet: str) -> str:
    """The app of a soak wallet (as :func:`benchmarks.soak.run.seed_wallets` opens it)."""
    return f"soak-e{sum(map(ord, wallet)) % 4}"


def build_turn(run: str, index: int, n: int, row, wallets: list[str], dry: list[str], dry_fraction: float) -> TurnIn:
    """The ``n``-th new turn of driver ``index`` built and validated in full (:class:`TurnMaker`
    builds the same turn without validating it again)."""
    pick = (n * 2654435761) % 10_000 / 10_000
    wallet = dry[n % len(dry)] if dry and pick < dry_fraction else wallets[n % len(wallets)]
    return TurnIn(
        turn_id=f"{run}-d{index}-{n}",
        wallet_id=wallet,
        enterprise_id=enterprise_of(wallet),
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
    returns the summary (counts, seconds, max seconds behind schedule, CPU seconds of this process
    while driving)."""
    rows = read_trace(Path(args["trace"]), "azure")
    gate = process_gate()
    rng = random.Random(args["index"])
    rate, batch, index = args["rate"], args["batch"], args["index"]
    make = TurnMaker(args["run"], index, rows, args["wallets"], args["dry_wallets"], args["dry_fraction"])
    retry_fraction = args["retry_fraction"]
    recent: deque[TurnIn] = deque(maxlen=RETRY_WINDOW)
    new = accepted = retries = duplicates = call_errors = 0
    behind_max = 0.0
    n = 0
    interval = batch / rate
    while time.time() < args["start_at"]:
        time.sleep(0.005)
    started = time.monotonic()
    cpu_started = time.process_time()
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
            turns: list[TurnIn] = []
            retried: set[int] = set()  # id() of the retried turns (objects held by ``recent``)
            for _ in range(batch):
                if recent and rng.random() < retry_fraction:
                    turn = recent[rng.randrange(len(recent))]
                    turns.append(turn)
                    retried.add(id(turn))
                else:
                    turns.append(make(n))
                    n += 1
            pending = turns
            answered: set[str] = set()  # this batch's turns already answered (a reply lost to a failure)
            rows_out = []
            while pending:  # an orchestrator retries what was not answered (same turn_ids)
                try:
                    decisions: list = gate.record_turns(pending)
                    failed: list[TurnIn] = []
                except GateBatchError as exc:
                    decisions = exc.decisions
                    failed = [t for t, d in zip(pending, decisions) if d is None]
                    call_errors += 1
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                    call_errors += 1
                    time.sleep(0.1)
                    continue
                at_ms = int(time.time() * 1000)
                for t, d in zip(pending, decisions):
                    if d is None:
                        continue
                    if id(t) in retried:  # a retry of an earlier accepted turn: answered duplicate
                        retries += 1
                        duplicates += d.duplicate
                    elif t.turn_id not in answered:
                        answered.add(t.turn_id)
                        if d.accepted:
                            recent.append(t)
                        rows_out.append(
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
            new += len(rows_out)
            accepted += sum(r[2] for r in rows_out)
            out.writerows(rows_out)
    elapsed = time.monotonic() - started
    counts = dict(
        new=new,
        retries=retries,
        accepted=accepted,
        denied=new - accepted,
        duplicates=duplicates,
        retry_not_duplicate=retries - duplicates,
        call_errors=call_errors,
    )
    return dict(
        counts,
        index=index,
        seconds=elapsed,
        behind_max_s=behind_max,
        turns_per_s=new / elapsed,
        cpu_s=time.process_time() - cpu_started,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point: one JSON object of arguments (see :func:`drive`); writes ``args['summary']``."""
    args = json.loads((argv or sys.argv[1:])[0])
    summary = drive(args)
    Path(args["summary"]).write_text(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
