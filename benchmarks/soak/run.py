"""The soak run: servers, processes, driver, samples, faults, exactness and the verdict (issue 16).

Imported by ``benchmarks/soak/__main__.py`` after it has pointed the ``TOLLGATE_*`` settings at the
soak's own (not yet started) servers, so every ``worker`` module here and every child process uses
them.  See ``benchmarks/README.md`` ("soak") for the flags and what each figure means.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil
import psycopg

from benchmarks.soak.sampler import Sampler, measure_queued
from benchmarks.soak.stack import REPO, Stack, raise_on_sigterm
from worker import credit_wallet, get_settings, open_wallet, process_gate
from worker.ledger.migrate import create_database_if_missing, upgrade
from worker.ledger.reconcile import reconcile

DEFAULT_TRACE = REPO.parent / "shared" / "data" / "azure_llm_2023_conv_shared.csv"
BUNDLED_TRACE = REPO / "worker" / "devtools" / "data" / "azure_llm_2023_conv_sample.csv"
FUNDED_WALLETS = 40
DRY_WALLETS = 10
FUNDED_NANOS = 10**15  # 1,000,000 USD: a funded wallet never runs dry
DRY_OPENING_NANOS = 20_000_000  # 0.02 USD: a dry wallet is empty after a few gpt-4o turns
DRY_TOPUP_NANOS = 20_000_000  # 0.02 USD every TOPUP_EVERY_S
TOPUP_EVERY_S = 10.0
DRY_FRACTION = 0.02  # share of new turns sent to the dry wallets
RETRY_FRACTION = 0.01  # share of slots that retry an earlier accepted turn_id
FAULT_KINDS = ("worker-kill", "redis-restart", "pg-restart")
#: issue 16's targets on this 2-core machine
TARGET_LAG_P99_S = 1.0
TARGET_RECOVERY_S = 5.0
TARGET_REDIS_B_PER_TURN_ID = 64
TARGET_REDIS_B_PER_QUEUED = 300
TARGET_PG_B_PER_TURN = 400
TARGET_RSS_RATIO = 1.10
RATE_HELD = 0.98  # the driver sent at least this share of the asked rate
FAULT_SPACING_S = 45.0  # a fault's figures need this long (recovery, RSS 30 s after) before the next one


@dataclass
class Fault:
    """One fault: ``kind`` at ``at_s`` seconds into driving; filled in when it has run."""

    kind: str
    at_s: float
    started: float | None = None  # Unix s
    answering: float | None = None  # Unix s: the service answers again
    error: str | None = None


@dataclass
class Step:
    """One driving period at one rate, and what it measured."""

    rate: int
    duration: float
    start: float = 0.0
    end: float = 0.0
    drivers: list[dict] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)


def parse_fault(text: str) -> Fault:
    """``kind@seconds`` (e.g. ``worker-kill@60``).  Raises argparse.ArgumentTypeError naming the flag."""
    kind, sep, at = text.partition("@")
    if kind not in FAULT_KINDS or not sep:
        raise argparse.ArgumentTypeError(f"--fault {text!r}: expected one of {', '.join(FAULT_KINDS)} then @seconds")
    try:
        at_s = float(at)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fault {text!r}: {at!r} is not a number of seconds") from None
    if at_s < 0:
        raise argparse.ArgumentTypeError(f"--fault {text!r}: seconds must be >= 0")
    return Fault(kind, at_s)


def pct(values: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``values`` by nearest rank; NaN for none."""
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


# ---------------------------------------------------------------------------------------------
# set-up


def seed_wallets(gate) -> tuple[list[str], list[str]]:
    """Open the funded and the dry wallets (PostgreSQL and gate) with their opening credits."""
    funded = [f"soak-f{i:02d}" for i in range(FUNDED_WALLETS)]
    dry = [f"soak-d{i:02d}" for i in range(DRY_WALLETS)]
    for wallet_id in funded + dry:
        enterprise = f"soak-e{sum(map(ord, wallet_id)) % 4}"
        open_wallet(gate, wallet_id=wallet_id, enterprise_id=enterprise, owner_id=wallet_id, limited=True)
        amount = FUNDED_NANOS if wallet_id in funded else DRY_OPENING_NANOS
        credit_wallet(gate, wallet_id=wallet_id, amount_nanos=amount, idempotency_key=f"soak:{wallet_id}:opening")
    return funded, dry


class TopUps:
    """A thread crediting every dry wallet ``DRY_TOPUP_NANOS`` every ``TOPUP_EVERY_S`` seconds.

    A top-up that fails (a service restarting) is sent again with the same idempotency key until it
    succeeds, as a billing system retries a payment's credit; :meth:`stop` finishes the retries."""

    def __init__(self, gate, dry: list[str]) -> None:
        self.gate, self.dry = gate, dry
        self.done = 0
        self.failed = 0
        self._retry: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-topups", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 120) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        deadline = time.monotonic() + timeout_s
        while self._retry and time.monotonic() < deadline:
            self._send(self._retry)
            time.sleep(0.5)

    def _send(self, credits: list[tuple[str, str]]) -> None:
        failed = []
        for wallet_id, key in credits:
            try:
                credit_wallet(self.gate, wallet_id=wallet_id, amount_nanos=DRY_TOPUP_NANOS, idempotency_key=key)
                self.done += 1
            except Exception as exc:  # a service restarting (a fault): sent again, same key
                logging.getLogger(__name__).warning(
                    "top-up %s failed (%s: %s); sending it again", key, type(exc).__name__, exc
                )
                self.failed += 1
                failed.append((wallet_id, key))
        self._retry = failed

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(TOPUP_EVERY_S):
            n += 1
            self._send(self._retry + [(w, f"soak:{w}:topup:{n}") for w in self.dry])


# ---------------------------------------------------------------------------------------------
# driving


def drive(stack: Stack, sampler: Sampler, step: Step, args, run_id: str, wallets, dry) -> Step:
    """Run ``args.drivers`` driver processes at ``step.rate`` in total for ``step.duration`` s,
    with ``step.faults``; returns ``step`` with times, driver summaries and fault times filled."""
    n_drivers = args.drivers or max(1, math.ceil(step.rate / 4000))
    start_at = time.time() + 6.0  # the drivers import and read the trace first
    procs = []
    for k in range(n_drivers):
        spec = dict(
            index=k,
            run=f"{run_id}-r{step.rate}",
            rate=step.rate / n_drivers,
            duration=step.duration,
            batch=args.batch,
            start_at=start_at,
            trace=str(args.trace),
            wallets=wallets,
            dry_wallets=dry,
            dry_fraction=DRY_FRACTION,
            retry_fraction=RETRY_FRACTION,
            decisions=str(stack.run_dir / f"decisions-{k}.csv"),
            summary=str(stack.run_dir / f"driver-{step.rate}-{k}.json"),
        )
        with (stack.run_dir / f"driver-{k}.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.soak.driver", json.dumps(spec)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=stack.env(),
                start_new_session=True,
            )
        proc.spec = spec  # type: ignore[attr-defined]
        procs.append(proc)
        stack.extra.append(proc)
    while time.time() < start_at:
        time.sleep(0.05)
    step.start = start_at
    sampler.phase = f"drive@{step.rate}"
    pending = sorted(step.faults, key=lambda f: f.at_s)
    while any(p.poll() is None for p in procs):
        if pending and time.time() >= start_at + pending[0].at_s:
            run_fault(stack, pending.pop(0))
        time.sleep(0.05)
    step.end = time.time()
    for p in procs:
        if p.returncode != 0:
            raise RuntimeError(f"driver exited with {p.returncode}; see {stack.run_dir}/driver-*.log")
        step.drivers.append(json.loads(Path(p.spec["summary"]).read_text()))
    sampler.phase = "drain"
    return step


def run_fault(stack: Stack, fault: Fault) -> None:
    """Inject ``fault`` now and record when its service answers again."""
    fault.started = time.time()
    print(f"  fault {fault.kind} at {fault.at_s:.0f} s", flush=True)
    try:
        if fault.kind == "worker-kill":
            fault.answering = stack.kill_worker()
        elif fault.kind == "redis-restart":
            fault.answering = stack.restart_redis()
        else:
            fault.answering = stack.restart_pg()
    except Exception as exc:  # reported, and the run goes on
        fault.error = f"{type(exc).__name__}: {exc}"


def wait_drained(sampler: Sampler, timeout_s: float) -> float:
    """Wait until two consecutive samples show nothing pending; returns the seconds waited.
    Raises RuntimeError after ``timeout_s``."""
    started = time.time()
    while time.time() - started < timeout_s:
        recent = [s for s in sampler.samples if s["t"] > started][-2:]
        if len(recent) == 2 and all(s.get("pending") == 0 for s in recent):
            return time.time() - started
        time.sleep(0.5)
    raise RuntimeError(f"the outbox still holds entries after {timeout_s:.0f} s")


def queued_probe(stack: Stack, sampler: Sampler, args, run_id: str, wallets, dry) -> dict:
    """Redis bytes per queued turn measured in service: the worker is paused (SIGSTOP of its
    process group, so no drain reads or trims), the drivers send about :data:`PROBE_TURNS` more
    turns at the run's rate (at most :data:`PROBE_RATE`), and the streams' growth (``MEMORY
    USAGE``, every node) is divided by the entries appended meanwhile, counted exactly by the
    streams' ``entries-added`` (:func:`benchmarks.soak.sampler.measure_queued`; not the group's
    ``lag``, which a Redis restart leaves too high: see the sampler's module doc); then the worker
    goes on (SIGCONT) and the run waits for the outbox to drain.  The probe's turns are decided and
    checked like the others.  Returns ``probe_turns`` (new turns answered), ``probe_accepted``,
    ``probe_entries`` (entries appended: one per accepted turn), ``probe_bytes_per_queued_turn``
    (None when nothing was queued or an entry was trimmed meanwhile; ``probe_problem`` says why)
    and ``probe_seconds``."""
    worker = stack.worker
    if worker is None or worker.poll() is not None:
        return {"probe_turns": 0, "probe_bytes_per_queued_turn": None, "probe_problem": "no worker to pause"}
    client = stack.redis_client()
    shards = get_settings().outbox_shards
    rate = min(PROBE_RATE, args.rate)
    started = time.time()
    steps: list[Step] = []
    os.killpg(worker.pid, signal.SIGSTOP)
    try:
        time.sleep(PAUSE_SETTLE_S)  # a command the worker sent before it stopped has run by now
        measured = measure_queued(
            client,
            shards,
            lambda: steps.append(
                drive(stack, sampler, Step(rate, PROBE_TURNS / rate), args, f"{run_id}-probe", wallets, dry)
            ),
        )
    finally:
        os.killpg(worker.pid, signal.SIGCONT)
        client.close()
    wait_drained(sampler, 600)
    return {
        "probe_turns": sum(d["new"] for d in steps[0].drivers),
        "probe_accepted": sum(d["accepted"] for d in steps[0].drivers),
        "probe_entries": measured["queued_entries"],
        "probe_bytes_per_queued_turn": measured["bytes_per_queued_entry"],
        "probe_problem": measured["problem"],
        "probe_seconds": time.time() - started,
    }


#: the queued-turn probe's turns and rate (:func:`queued_probe`)
PROBE_TURNS = 20_000
PROBE_RATE = 10_000
#: seconds between pausing the worker and the probe's first measurement
PAUSE_SETTLE_S = 0.2


# ---------------------------------------------------------------------------------------------
# exactness


def relation_bytes(pg_url: str) -> dict[str, int]:
    """Bytes on disk of every table of the soak's database (``pg_total_relation_size``: heap, free
    space and visibility maps, TOAST and indexes), partitions summed under their partitioned table's
    name, by table name.  What :func:`summarize` splits the database's growth by."""
    url = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT coalesce(parent.relname, c.relname), sum(pg_total_relation_size(c.oid))::bigint "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_inherits i ON i.inhrelid = c.oid LEFT JOIN pg_class parent ON parent.oid = i.inhparent "
            "WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE 'pg_toast%' GROUP BY 1"
        ).fetchall()
    return {name: int(size) for name, size in rows}


def check_exactness(stack: Stack, gate) -> dict:
    """Every accepted turn persisted once, denied turns absent, nothing else persisted, billed sums
    per wallet equal (decisions = usage rows = ledger debits = wallet.debits_nanos) and the gate's
    balance = credits - debits for every wallet, and reconcile reports no drift.  Returns the counts."""
    url = stack.pg.url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        conn.execute(
            "CREATE TEMP TABLE soak_decision (turn_id text, wallet_id text, accepted int, billed bigint, "
            "cost bigint, prompt bigint, completion bigint, cached bigint, at_ms bigint)"
        )
        with conn.cursor().copy("COPY soak_decision FROM STDIN") as copy:
            for path in sorted(stack.run_dir.glob("decisions-*.csv")):
                with path.open(newline="") as fh:
                    for row in csv.reader(fh):
                        copy.write_row(row)
        conn.execute("CREATE INDEX ON soak_decision (turn_id)")
        conn.execute("ANALYZE soak_decision")
        one = lambda sql: conn.execute(sql).fetchone()  # noqa: E731
        out: dict = {}
        out["decided"], out["accepted"] = one("SELECT count(*), coalesce(sum(accepted), 0) FROM soak_decision")
        out["decided_distinct"] = one("SELECT count(DISTINCT turn_id) FROM soak_decision")[0]
        out["persisted"], out["persisted_distinct"] = one(
            "SELECT count(*), count(DISTINCT (enterprise_id, wallet_id, turn_id)) FROM usage_event"
        )
        out["accepted_missing"] = one(
            "SELECT count(*) FROM soak_decision d WHERE accepted = 1 AND NOT EXISTS "
            "(SELECT 1 FROM usage_event u WHERE u.turn_id = d.turn_id AND u.wallet_id = d.wallet_id)"
        )[0]
        out["denied_present"] = one(
            "SELECT count(*) FROM soak_decision d WHERE accepted = 0 AND EXISTS "
            "(SELECT 1 FROM usage_event u WHERE u.turn_id = d.turn_id)"
        )[0]
        out["unexpected_persisted"] = one(
            "SELECT count(*) FROM usage_event u WHERE NOT EXISTS "
            "(SELECT 1 FROM soak_decision d WHERE d.turn_id = u.turn_id AND d.accepted = 1)"
        )[0]
        out["sums_mismatch"] = one(
            "SELECT count(*) FROM (SELECT wallet_id, sum(billed) b, sum(prompt) p, sum(completion) c, sum(cost) k "
            "FROM soak_decision WHERE accepted = 1 GROUP BY wallet_id) d FULL JOIN (SELECT wallet_id, "
            "sum(billed_nanos) b, sum(prompt_tokens) p, sum(completion_tokens) c, sum(cost_nanos) k "
            "FROM usage_event GROUP BY wallet_id) u USING (wallet_id) "
            "WHERE d.b IS DISTINCT FROM u.b OR d.p IS DISTINCT FROM u.p OR d.c IS DISTINCT FROM u.c "
            "OR d.k IS DISTINCT FROM u.k"
        )[0]
        wallets = conn.execute(
            "SELECT w.id, w.credits_nanos, w.debits_nanos, coalesce(l.debits, 0), coalesce(u.billed, 0) FROM wallet w "
            "LEFT JOIN (SELECT wallet_id, sum(amount_nanos) debits FROM wallet_transaction WHERE kind = 'debit' "
            "GROUP BY wallet_id) l ON l.wallet_id = w.id LEFT JOIN (SELECT wallet_id, sum(billed_nanos) billed "
            "FROM usage_event GROUP BY wallet_id) u ON u.wallet_id = w.id ORDER BY w.id"
        ).fetchall()
    out["wallets"] = len(wallets)
    out["ledger_mismatch_wallets"] = sum(
        1 for _w, _c, debits, ledger, usage in wallets if not debits == ledger == usage
    )
    out["gate_balance_mismatch_wallets"] = sum(
        1 for wallet_id, credits, debits, _l, _u in wallets if gate.balance(wallet_id) != credits - debits
    )
    report = reconcile(gate)
    out["reconcile"] = {
        k: getattr(report, k)
        for k in (
            "wallets_checked",
            "wallets_drifted",
            "drift_nanos_abs",
            "wallets_busy",
            "ledger_mismatches",
            "wallets_missing",
        )
    }
    problems = [
        k
        for k in (
            "accepted_missing",
            "denied_present",
            "unexpected_persisted",
            "sums_mismatch",
            "ledger_mismatch_wallets",
            "gate_balance_mismatch_wallets",
        )
        if out[k]
    ]
    if out["persisted"] != out["persisted_distinct"]:
        problems.append("persisted twice")
    if out["decided"] != out["decided_distinct"]:
        problems.append("a turn_id decided twice by the driver")
    r = out["reconcile"]
    if r["wallets_drifted"] or r["drift_nanos_abs"] or r["ledger_mismatches"] or r["wallets_missing"]:
        problems.append("reconcile drift")
    out["problems"] = problems
    out["exact"] = not problems
    return out


# ---------------------------------------------------------------------------------------------
# figures


def window(samples: list[dict], start: float, end: float) -> list[dict]:
    return [s for s in samples if start <= s["t"] <= end]


def families(samples: list[dict]) -> list[str]:
    return sorted({k[4:] for s in samples for k in s if k.startswith("rss.")})


def fault_figures(samples: list[dict], fault: Fault) -> dict:
    """Lag peak, seconds from the service answering to lag < 1 s, RSS before and 30 s after."""
    out: dict = {"kind": fault.kind, "at_s": fault.at_s, "error": fault.error}
    if fault.started is None or fault.answering is None:
        return out
    before = [s for s in samples if s["t"] < fault.started - 1.0]  # a sample whose processes were measured before
    after = [s for s in samples if s["t"] >= fault.answering and s.get("lag_s") is not None]
    recovered = next((s for s in after if s["lag_s"] < TARGET_LAG_P99_S), None)
    until = recovered["t"] if recovered else (after[-1]["t"] if after else fault.answering)
    lags = [s["lag_s"] for s in window(samples, fault.started, until) if s.get("lag_s") is not None]
    out["down_s"] = fault.answering - fault.started
    out["window"] = (fault.started, until)  # from the fault to the first sample with lag < 1 s
    out["lag_peak_s"] = max(lags, default=None)
    out["recovery_s"] = None if recovered is None else max(0.0, recovered["t"] - fault.answering)
    later = [s for s in samples if s["t"] >= fault.answering + 30]
    out["rss_before"] = {f: before[-1].get(f"rss.{f}") for f in families(samples)} if before else {}
    out["rss_after_30s"] = {f: later[0].get(f"rss.{f}") for f in families(samples)} if later else {}
    return out


#: the unread entries the samples must span for their cost to be fitted (else the ratio at the peak)
QUEUED_SPAN_MIN = 2000

#: ``redis_queued_method`` of the plain ratio at the largest outbox (:func:`queued_turn_bytes`)
UPPER_BOUND = "ratio at the largest outbox, an upper bound"


def queued_turn_bytes(samples: list[dict]) -> dict:
    """Redis bytes per queued turn from the samples' stream sizes (``outbox_bytes``, ``MEMORY USAGE``
    of the streams, every node counted) against what the streams hold.

    A stream entry costs more once a drain has read it: until it is acknowledged it also sits in
    the group's and the consumer's pending-entries lists (two radix trees), and once acknowledged
    and trimmed its bytes stay in its listpack node until every entry of that node is trimmed (an
    exact XTRIM marks entries deleted; a node is freed whole).  Both are bounded by the drain's
    batches in flight, not by the backlog; what grows with the backlog, and what issue 16's "per
    queued turn" bounds, is the entries not read yet.  So ``redis_bytes_per_queued_turn`` is ``b``
    of the least-squares fit ``bytes = a + b × unread + c × (XLEN − unread)`` over the samples
    (``outbox_unread`` of each), given when the unread counts span at least
    :data:`QUEUED_SPAN_MIN` entries; ``c`` (``redis_bytes_per_read_entry``) and ``a``
    (``redis_stream_fixed_bytes``) are reported beside it.  Otherwise (a drain that keeps up reads
    everything at once; samples of an older soak) it is the plain ratio of bytes over XLEN at the
    largest outbox (``redis_queued_method`` says which), an upper bound: it spreads the streams'
    fixed cost and the read entries' extra over a short outbox.  The ratio is always given as
    ``redis_bytes_per_queued_turn_at_peak``."""
    points = [
        (s["outbox_len"], s["outbox_bytes"], s.get("outbox_unread"))
        for s in samples
        if s.get("outbox_len") and s.get("outbox_bytes")
    ]
    out: dict = {"redis_bytes_per_queued_turn": None, "redis_queued_method": None}
    if not points:
        return out
    length, size, _ = max(points)
    out["redis_bytes_per_queued_turn_at_peak"] = out["redis_bytes_per_queued_turn"] = size / length
    out["redis_queued_method"] = UPPER_BOUND
    fitted = [(u, n - u, b) for n, b, u in points if u is not None]
    unread = [u for u, _, _ in fitted]
    out["redis_queued_span"] = max(unread) - min(unread) if unread else 0
    if out["redis_queued_span"] >= QUEUED_SPAN_MIN and len(fitted) >= 4:
        solved = least_squares_2([(u, r) for u, r, _ in fitted], [b for _, _, b in fitted])
        if solved is not None:
            a, b, c = solved
            out.update(
                redis_bytes_per_queued_turn=b,
                redis_bytes_per_read_entry=c,
                redis_stream_fixed_bytes=a,
                redis_queued_method=f"fit over {len(fitted)} samples, unread entries",
            )
    return out


def least_squares_2(xs: list[tuple[float, float]], ys: list[float]) -> tuple[float, float, float] | None:
    """``(a, b, c)`` minimising Σ (y − a − b·x1 − c·x2)² (the normal equations, Cramer's rule);
    None when they are singular (x1 and x2 collinear or constant)."""
    n = len(xs)
    s1 = sum(x1 for x1, _ in xs)
    s2 = sum(x2 for _, x2 in xs)
    s11 = sum(x1 * x1 for x1, _ in xs)
    s22 = sum(x2 * x2 for _, x2 in xs)
    s12 = sum(x1 * x2 for x1, x2 in xs)
    sy = sum(ys)
    s1y = sum(x1 * y for (x1, _), y in zip(xs, ys))
    s2y = sum(x2 * y for (_, x2), y in zip(xs, ys))
    m = [[n, s1, s2], [s1, s11, s12], [s2, s12, s22]]
    v = [sy, s1y, s2y]

    def det(a: list[list[float]]) -> float:
        return (
            a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1])
            - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
            + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0])
        )

    d = det(m)
    if abs(d) < 1e-9 * max(1.0, abs(m[1][1] * m[2][2])):
        return None
    cols = []
    for k in range(3):
        mk = [row[:] for row in m]
        for i in range(3):
            mk[i][k] = v[i]
        cols.append(det(mk) / d)
    return cols[0], cols[1], cols[2]


def cpu_per_1000(samples: list[dict], step: Step, turns: int) -> dict[str, float]:
    """CPU seconds per 1,000 new turns of each process family, from the driving start to the first
    sample after it whose outbox was empty again (the drain of the step's last turns included):
    the sum of each sample's CPU % (of one core, since the sample before) times the seconds of its
    interval after the start, over ``turns``."""
    if not turns:
        return {}
    end = next(
        (s["t"] for s in samples if s["t"] > step.end and s.get("pending") == 0),
        samples[-1]["t"] if samples else step.end,
    )
    used: dict[str, float] = {}
    before = None
    for s in samples:
        if before is not None and step.start < s["t"] <= end:
            dt = s["t"] - max(before["t"], step.start)  # the part of the sample's interval after the start
            for f in families([s]):
                used[f] = used.get(f, 0.0) + s.get(f"cpu.{f}", 0.0) / 100 * dt
        before = s
    return {f: 1000 * v / turns for f, v in sorted(used.items())}


def covered_seconds(spans: list[tuple[float, float]], start: float, end: float) -> float:
    """Seconds of ``start``..``end`` inside the union of ``spans`` (overlapping spans, faults closer
    than their recoveries, counted once)."""
    total, reached = 0.0, start
    for a, b in sorted(spans):
        a, b = max(a, reached), min(b, end)
        if b > a:
            total += b - a
            reached = b
    return total


def summarize(step: Step, samples: list[dict], baseline: dict, final: dict, exact: dict | None) -> dict:
    """The figures of one step (module doc of benchmarks/README.md, section soak).

    With faults, the lag p50 and p99 and whether it grows are over the samples outside every fault's
    window (from the fault to the first sample with lag < 1 s again, ``fault_figures``): the
    recovery target bounds those; ``lag_p99_all_s`` is over every sample, ``lag_left_out_s`` the
    seconds of samples left out."""
    during = window(samples, step.start, step.end)
    faults = [fault_figures(samples, f) for f in step.faults]
    spans = [f["window"] for f in faults if "window" in f]
    all_lags = [s["lag_s"] for s in during if s.get("lag_s") is not None]
    steady = [s for s in during if not any(a <= s["t"] <= b for a, b in spans)]
    lags = [s["lag_s"] for s in steady if s.get("lag_s") is not None]
    sent = sum(d["new"] for d in step.drivers)
    seconds = step.end - step.start
    half = len(lags) // 2
    fig: dict = {
        "rate_asked": step.rate,
        "seconds": round(seconds, 1),
        "turns_new": sent,
        # over the seconds the drivers really took: a driver that fell behind sent the step's turns
        # late, so the asked duration would overstate the rate it held
        "rate_achieved": sent / max(seconds, step.duration, 1e-9),
        "driver_behind_max_s": max((d["behind_max_s"] for d in step.drivers), default=0.0),
        "driver_counts": {
            k: sum(d[k] for d in step.drivers)
            for k in ("accepted", "denied", "retries", "duplicates", "retry_not_duplicate", "call_errors")
        },
        "lag_p50_s": pct(lags, 0.50),
        "lag_p99_s": pct(lags, 0.99),
        "lag_p99_all_s": pct(all_lags, 0.99),
        "lag_left_out_s": covered_seconds(spans, step.start, step.end),
        "lag_max_s": max(all_lags, default=math.nan),
        # "not growing": the second half's median lag is within 0.25 s of the first half's
        "lag_growing": bool(lags) and statistics.median(lags[half:]) > statistics.median(lags[:half] or [0]) + 0.25,
        "outbox_peak": max((s["pending"] for s in during if s.get("pending") is not None), default=0),
        "cpu_mean": {
            f: statistics.fmean([s.get(f"cpu.{f}", 0.0) for s in during]) if during else math.nan
            for f in families(samples)
        },
        "faults": faults,
    }
    fig.update(queued_turn_bytes(during))
    fig["cpu_s_per_1000_turns"] = cpu_per_1000(samples, step, sent)
    fig["driver_cpu_s_per_1000_turns"] = (
        1000 * sum(d["cpu_s"] for d in step.drivers) / sent
        if sent and all("cpu_s" in d for d in step.drivers)
        else None
    )
    if exact is not None:
        decided = exact["decided"] or 1
        persisted = exact["persisted"] or 1
        fig["redis_bytes_per_turn_id"] = (final["redis_used_memory"] - baseline["redis_used_memory"]) / decided
        fig["pg_bytes_per_turn"] = (final["pg_db_bytes"] - baseline["pg_db_bytes"]) / persisted
        before, after = baseline.get("pg_relations", {}), final.get("pg_relations", {})
        growth = {name: (after[name] - before.get(name, 0)) / persisted for name in after}
        fig["pg_bytes_per_turn_by_table"] = dict(sorted(growth.items(), key=lambda kv: -kv[1]))
    rss = {}
    for f in families(samples):
        values = [s.get(f"rss.{f}") for s in during if s.get(f"rss.{f}")]
        if values:
            rss[f] = {"start": values[0], "peak": max(values), "end": values[-1]}
    fig["rss"] = rss
    return fig


def verdict(fig: dict, exact: dict | None) -> list[tuple[str, bool | None, str]]:
    """PASS/FAIL lines against issue 16's targets: (target, passed, measured); ``passed`` is None
    for a target the run could not measure (printed ``N/A``, failing nothing): Redis per queued turn
    when only its upper bound is known (:func:`queued_turn_bytes`) and that bound is over the target."""
    lines = [
        (
            f"rate held (>= {RATE_HELD:.0%} of {fig['rate_asked']:,}/s)",
            fig["rate_achieved"] >= RATE_HELD * fig["rate_asked"],
            f"{fig['rate_achieved']:,.0f}/s",
        ),
        (
            f"lag p99 <= {TARGET_LAG_P99_S} s" + (" outside the faults' windows" if fig["faults"] else ""),
            fig["lag_p99_s"] <= TARGET_LAG_P99_S,
            f"{fig['lag_p99_s']:.2f} s",
        ),
        ("lag not growing", not fig["lag_growing"], "growing" if fig["lag_growing"] else "stable"),
    ]
    for f in fig["faults"]:
        rec = f.get("recovery_s")
        lines.append(
            (
                f"{f['kind']}@{f['at_s']:.0f}: recovery <= {TARGET_RECOVERY_S} s",
                rec is not None and rec <= TARGET_RECOVERY_S and not f["error"],
                f["error"] or ("never" if rec is None else f"{rec:.1f} s (lag peak {f['lag_peak_s']:.1f} s)"),
            )
        )
        before, after = f.get("rss_before", {}), f.get("rss_after_30s", {})
        if before.get("worker") and after.get("worker"):
            ratio = after["worker"] / before["worker"]
            lines.append(
                (
                    f"{f['kind']}@{f['at_s']:.0f}: worker RSS within 10 % 30 s after",
                    ratio <= TARGET_RSS_RATIO,
                    f"{before['worker'] / 2**20:.0f} -> {after['worker'] / 2**20:.0f} MB ({ratio:.2f}x)",
                )
            )
    if fig.get("redis_bytes_per_queued_turn") is not None:
        v = fig["redis_bytes_per_queued_turn"]
        # an upper bound within the target proves it; over it, it proves nothing either way
        unmeasured = fig["redis_queued_method"] == UPPER_BOUND and v > TARGET_REDIS_B_PER_QUEUED
        lines.append(
            (
                f"Redis <= {TARGET_REDIS_B_PER_QUEUED} B per queued turn",
                None if unmeasured else v <= TARGET_REDIS_B_PER_QUEUED,
                f"{v:.0f} B ({fig['redis_queued_method']})"
                + ("; not measured: too few unread entries to fit, run with the probe" if unmeasured else ""),
            )
        )
    if exact is not None:
        v = fig["redis_bytes_per_turn_id"]
        lines.append((f"Redis <= {TARGET_REDIS_B_PER_TURN_ID} B per remembered turn_id", v <= 64, f"{v:.0f} B"))
        v = fig["pg_bytes_per_turn"]
        lines.append((f"PostgreSQL <= {TARGET_PG_B_PER_TURN} B per persisted turn", v <= 400, f"{v:.0f} B"))
        lines.append(
            (
                "exactly once, sums equal, reconcile 0 drift",
                exact["exact"],
                "exact" if exact["exact"] else ", ".join(exact["problems"]),
            )
        )
    return lines


def mb(v: float | None) -> str:
    return "-" if v is None else f"{v / 2**20:,.0f}"


def print_report(fig: dict, exact: dict | None, lines) -> None:
    """The human summary of one step."""
    c = fig["driver_counts"]
    print(
        f"\nrate asked {fig['rate_asked']:,}/s, achieved {fig['rate_achieved']:,.0f}/s over {fig['seconds']} s "
        f"({fig['turns_new']:,} new turns: {c['accepted']:,} accepted, {c['denied']:,} denied; {c['retries']:,} "
        f"retries, {c['duplicates']:,} answered duplicate; {c['call_errors']} failed calls retried; driver at most "
        f"{fig['driver_behind_max_s']:.2f} s behind)"
    )
    print(
        f"outbox lag p50 {fig['lag_p50_s']:.2f} s, p99 {fig['lag_p99_s']:.2f} s"
        + (
            f" (outside the faults' windows, {fig['lag_left_out_s']:.0f} s left out; every sample's "
            f"{fig['lag_p99_all_s']:.2f} s)"
            if fig["faults"]
            else ""
        )
        + f", max {fig['lag_max_s']:.2f} s; peak outbox {fig['outbox_peak']:,} entries"
    )
    per_q = fig.get("redis_bytes_per_queued_turn")
    print(
        "Redis "
        + (f"{fig['redis_bytes_per_turn_id']:.0f} B per remembered turn_id, " if exact else "")
        + ("-" if per_q is None else f"{per_q:.0f}")
        + f" B per queued turn (stream, {fig.get('redis_queued_method')}"
        + (
            f" spanning {fig['redis_queued_span']:,}; a read, unacknowledged or untrimmed entry "
            f"{fig['redis_bytes_per_read_entry']:.0f} B, fixed {fig['redis_stream_fixed_bytes'] / 1024:,.0f} kB; "
            f"{fig['redis_bytes_per_queued_turn_at_peak']:.0f} B over XLEN at the largest outbox"
            if fig.get("redis_stream_fixed_bytes") is not None
            else ""
        )
        + ")"
        + (f"; PostgreSQL {fig['pg_bytes_per_turn']:.0f} B per persisted turn" if exact else "")
    )
    by_table = [(k, v) for k, v in fig.get("pg_bytes_per_turn_by_table", {}).items() if abs(v) >= 0.5]
    if by_table:
        rest = fig["pg_bytes_per_turn"] - sum(v for _k, v in by_table)
        print(
            "PostgreSQL's growth per persisted turn by table (indexes and TOAST included): "
            + ", ".join(f"{k} {v:.0f} B" for k, v in by_table)
            + f"; the rest of the database (catalogs, temp tables, free space) {rest:.0f} B"
        )
    if fig.get("probe_turns"):
        print(
            f"queued-turn probe: {fig['probe_turns']:,} more turns sent with the worker paused "
            f"({fig['probe_accepted']:,} accepted, {fig['probe_entries']:,} outbox entries appended; "
            f"{fig['probe_seconds']:.0f} s with the drain after it); they are in the exactness counts below"
            + (f"; no figure: {fig['probe_problem']}" if fig.get("probe_problem") else "")
        )
    cpu_k = fig.get("cpu_s_per_1000_turns", {})
    print("process    CPU % (mean)   CPU s / 1,000 turns   RSS MB start / peak / end")
    for f, r in fig["rss"].items():
        print(
            f"  {f:9} {fig['cpu_mean'].get(f, math.nan):8.0f}       {cpu_k.get(f, math.nan):10.3f}            "
            f"{mb(r['start'])} / {mb(r['peak'])} / {mb(r['end'])}"
        )
    if cpu_k:
        own = fig.get("driver_cpu_s_per_1000_turns")
        print(
            f"  all       {sum(cpu_k.values()):24.3f}   (CPU s / 1,000 new turns from the driving start until the "
            "outbox is empty again"
            + ("" if own is None else f"; the drivers' own count while driving: {own:.3f}")
            + ")"
        )
    for f in fig["faults"]:
        if f.get("error"):
            print(f"fault {f['kind']}@{f['at_s']:.0f}: {f['error']}")
            continue
        rss = ", ".join(
            f"{k} {mb(f['rss_before'].get(k))}->{mb(f['rss_after_30s'].get(k))}" for k in f.get("rss_before", {})
        )
        rec = f.get("recovery_s")
        print(
            f"fault {f['kind']}@{f['at_s']:.0f}: down {f.get('down_s', 0):.1f} s, lag peak "
            f"{f.get('lag_peak_s') or 0:.1f} s, recovery {'never' if rec is None else f'{rec:.1f} s'}; RSS MB before->30 s "
            f"after: {rss or '(run ended before 30 s)'}"
        )
    if exact is not None:
        print(
            f"exactness: {exact['accepted']:,} accepted of {exact['decided']:,} decided, {exact['persisted']:,} "
            f"persisted ({exact['persisted_distinct']:,} distinct); missing {exact['accepted_missing']}, denied present "
            f"{exact['denied_present']}, unexpected {exact['unexpected_persisted']}, wallets with unequal sums "
            f"{exact['sums_mismatch']} / ledger {exact['ledger_mismatch_wallets']} / gate "
            f"{exact['gate_balance_mismatch_wallets']}; reconcile {exact['reconcile']}"
        )
    ats = sorted(f["at_s"] for f in fig["faults"])
    if any(b - a < FAULT_SPACING_S for a, b in zip(ats, ats[1:])):
        print(
            f"note: faults less than {FAULT_SPACING_S:.0f} s apart overlap: each one's lag, recovery and RSS figures "
            "include the other's (e.g. a worker still starting after a kill is the next fault's RSS 'before')"
        )
    for name, ok, measured in lines:
        print(f"{'N/A ' if ok is None else 'PASS' if ok else 'FAIL'}  {name}: {measured}")


# ---------------------------------------------------------------------------------------------
# main


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=int, default=2000, help="turns/s asked of the driver (default 2000)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of driving (default 60)")
    p.add_argument("--batch", type=int, default=100, help="turns per record_turns call (default 100)")
    p.add_argument("--drivers", type=int, default=0, help="driver processes (default: one per 4,000 turns/s)")
    p.add_argument("--fault", type=parse_fault, action="append", default=[], help="kind@seconds, repeatable")
    p.add_argument("--find-max", action="store_true", help="step the rate up until the lag is no longer stable")
    p.add_argument("--step", type=int, default=1000, help="--find-max: turns/s added per step (default 1000)")
    p.add_argument("--step-duration", type=float, default=60.0, help="--find-max: seconds per step (default 60)")
    p.add_argument("--max-rate", type=int, default=30_000, help="--find-max: stop at this rate (default 30000)")
    p.add_argument("--trace", type=Path, default=DEFAULT_TRACE if DEFAULT_TRACE.exists() else BUNDLED_TRACE)
    p.add_argument(
        "--out", type=Path, default=None, help="directory for samples, logs and summary (default: a new temp dir)"
    )
    p.add_argument(
        "--no-fsync",
        action="store_true",
        help="PostgreSQL with fsync and full-page writes off (not durable): tells the disk's latency apart",
    )
    p.add_argument(
        "--no-probe",
        action="store_true",
        help="skip the queued-turn probe at the end (worker paused while 20,000 more turns are queued)",
    )
    p.add_argument("--json", action="store_true", help="also print the summary as one JSON line at the end")
    return p


def main(ports: tuple[int, int], argv: list[str] | None = None) -> int:
    """Run the soak (``ports``: Redis, PostgreSQL, already in ``TOLLGATE_*``).  Returns 0 when every
    target passed, 1 when one failed, 2 on an error of the run itself."""
    args = parser().parse_args(argv)
    for f in args.fault:
        if not args.find_max and f.at_s >= args.duration:
            parser().error(f"--fault {f.kind}@{f.at_s:g}: later than --duration {args.duration:g}")
    if args.rate <= 0 or args.batch <= 0 or args.duration <= 0:
        parser().error("--rate, --batch and --duration must be positive")
    run_dir = args.out or Path(f"/tmp/tollgate-soak-{datetime.now(UTC):%Y%m%dT%H%M%S}")
    run_dir.mkdir(parents=True, exist_ok=True)
    raise_on_sigterm()
    # this process's own warnings (e.g. a top-up's after-commit hook failing while Redis restarts) go to a file
    logging.basicConfig(filename=run_dir / "soak.log", level=logging.WARNING, force=True)
    run_id = f"s{int(time.time())}"
    stack = Stack(run_dir, redis_port=ports[0], pg_port=ports[1], pg_durable=not args.no_fsync)
    sampler: Sampler | None = None
    topups: TopUps | None = None
    try:
        print(
            f"soak: run directory {run_dir}; Redis on port {ports[0]}, PostgreSQL on port {ports[1]} "
            f"({'fsync off' if args.no_fsync else 'durable'}); "
            f"load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        stack.start_servers()
        create_database_if_missing(stack.pg.url)
        upgrade(stack.pg.url)  # what the Procfile's release step does
        gate = process_gate()
        wallets, dry = seed_wallets(gate)
        stack.start_worker()
        stack.start_beat()
        stack.supervise()
        settings = get_settings()
        sampler = Sampler(
            run_dir / "samples.jsonl",
            redis_port=ports[0],
            pg_url=stack.pg.url,
            shards=settings.outbox_shards,
            pids=stack.pids,
        )
        sampler.start()
        time.sleep(3)  # a few idle samples: the baseline
        baseline = next(s for s in reversed(sampler.samples) if s.get("redis_used_memory") and s.get("pg_db_bytes"))
        baseline["pg_relations"] = relation_bytes(stack.pg.url)
        topups = TopUps(gate, dry)
        topups.start()
        results = []
        if args.find_max:
            best = None
            rate = args.rate
            while rate <= args.max_rate:
                print(f"step: {rate:,} turns/s for {args.step_duration:g} s", flush=True)
                step = drive(stack, sampler, Step(rate, args.step_duration), args, run_id, wallets, dry)
                fig = summarize(step, sampler.samples, baseline, {}, None)
                # what failed, named: a driver that could not send the rate (the machine's cores are
                # shared with it) is told apart from a drain that fell behind
                failed = [
                    why
                    for why, bad in (
                        (f"rate below {RATE_HELD:.0%} of the asked", fig["rate_achieved"] < RATE_HELD * rate),
                        (f"lag p99 above {TARGET_LAG_P99_S:g} s", fig["lag_p99_s"] > TARGET_LAG_P99_S),
                        ("lag growing", fig["lag_growing"]),
                    )
                    if bad
                ]
                stable = not failed
                fig["unstable_because"] = failed
                print(
                    f"  achieved {fig['rate_achieved']:,.0f}/s, lag p99 {fig['lag_p99_s']:.2f} s, "
                    f"{'growing' if fig['lag_growing'] else 'stable'}: "
                    f"{'stable' if stable else 'NOT stable (' + '; '.join(failed) + ')'}",
                    flush=True,
                )
                results.append(fig)
                wait_drained(sampler, 600)
                if not stable:
                    break
                best = rate
                rate += args.step
            print(f"\nhighest rate with a stable lag: {best if best is None else f'{best:,}'} turns/s")
        step = Step(args.rate, args.duration, faults=list(args.fault))
        if not args.find_max:
            print(f"driving {args.rate:,} turns/s for {args.duration:g} s", flush=True)
            step = drive(stack, sampler, step, args, run_id, wallets, dry)
        topups.stop()
        waited = wait_drained(sampler, 600)
        answered = [f.answering for f in step.faults if f.answering is not None]
        if answered:  # the faults' "RSS 30 s after" needs samples that late
            time.sleep(max(0.0, max(answered) + 31 - time.time()))
        probe = None if args.find_max or args.no_probe else queued_probe(stack, sampler, args, run_id, wallets, dry)
        time.sleep(2)
        final = dict(next(s for s in reversed(sampler.samples) if s.get("redis_used_memory") and s.get("pg_db_bytes")))
        final["pg_relations"] = relation_bytes(stack.pg.url)
        exact = check_exactness(stack, gate)
        if args.find_max:
            fig = results[-1] if results else {}
            summary = {"find_max": results, "highest_stable_rate": best, "exactness": exact}
            print(f"exactness over every step: {'PASS' if exact['exact'] else 'FAIL ' + ', '.join(exact['problems'])}")
            ok = exact["exact"]
        else:
            fig = summarize(step, sampler.samples, baseline, final, exact)
            fig["drain_after_s"] = waited
            if probe is not None:
                fig.update(probe)
                if probe["probe_bytes_per_queued_turn"] is not None:
                    fig["redis_bytes_per_queued_turn"] = probe["probe_bytes_per_queued_turn"]
                    fig["redis_queued_method"] = f"probe: worker paused, {probe['probe_entries']:,} entries appended"
            lines = verdict(fig, exact)
            print_report(fig, exact, lines)
            summary = {"figures": fig, "exactness": exact, "verdict": [list(v) for v in lines]}
            ok = all(v[1] is not False for v in lines)
        summary.update(
            worker_starts=stack.worker_starts,
            topups=topups.done,
            topups_failed=topups.failed,
            cpus=psutil.cpu_count(),
            load_average_end=os.getloadavg()[0],
        )
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        print(f"samples: {run_dir / 'samples.jsonl'}; summary: {run_dir / 'summary.json'}")
        if args.json:
            print(json.dumps(summary, default=str))
        return 0 if ok else 1
    except KeyboardInterrupt:
        print("soak: interrupted; stopping everything", file=sys.stderr)
        return 130
    finally:
        if topups is not None:
            topups.stop(timeout_s=0)  # no retries on the way out (after an error or Ctrl-C)
        if sampler is not None:
            sampler.stop()
        stack.close()
