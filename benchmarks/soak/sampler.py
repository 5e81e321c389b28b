"""The soak's once-a-second samples: outbox lag and length, Redis and PostgreSQL size, RSS and CPU.

One sample is a flat dict (one JSON line in ``samples.jsonl``):

- ``t``: Unix time (s) of the sample; ``phase``: what the run was doing (``drive``, ``drain``, ...).
- ``lag_s``: age of the oldest outbox entry not yet acknowledged by the drain, over all shards (s),
  from the stream ids' millisecond clock against Redis ``TIME``; ``0.0`` when nothing is pending.
- ``pending``: entries not yet acknowledged (delivered-but-unacked plus never delivered);
  ``outbox_len``: ``XLEN`` summed over the shards (includes acknowledged entries not yet trimmed);
  ``outbox_unread``: of those, the entries no drain has read yet (the group's ``lag``, or the
  entries after its last-delivered id counted with XRANGE when Redis gives no ``lag`` or one larger
  than the entries not pending can be).  Redis before 7.2.4 propagates XREADGROUP as XCLAIM …
  LASTID, which leaves the group's ``entries-read`` behind, so after an AOF reload (the
  ``redis-restart`` fault) ``lag`` overstates the unread entries by every entry read since the
  last AOF rewrite, for as long as the group lives (redis/redis#12898); the check above catches the
  offset only when it exceeds what the stream holds, so after that fault ``outbox_unread`` (and the
  fit of :func:`benchmarks.soak.run.queued_turn_bytes` over it) may still be too high.  The
  queued-turn probe does not use it (:func:`outbox_totals`);
  ``outbox_bytes``: ``MEMORY USAGE <stream> SAMPLES 0`` summed (bytes; every listpack node counted,
  not extrapolated from the first ten: those at a stream's head hold entries acknowledged and
  trimmed that XTRIM could not free yet, so a sample of them overstates the rest).
- ``redis_used_memory``: ``INFO memory`` ``used_memory`` (bytes); ``pg_db_bytes``:
  ``pg_database_size('tollgate')`` (bytes).  Any of these is ``None`` while its server is down.
- ``rss.<process>`` (bytes) and ``cpu.<process>`` (% of one core, since the last sample) for
  ``worker`` (main process and pool children), ``beat``, ``postgres`` (postmaster and every
  backend), ``redis`` and ``driver`` (all driver processes); from psutil.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import psycopg
import redis

from worker.gate.keys import outbox_key
from worker.ledger.drain import GROUP


def _id_ms(stream_id: str) -> int:
    return int(stream_id.split("-", 1)[0])


def outbox_state(r: redis.Redis, shards: int) -> dict[str, float | int]:
    """``lag_s``, ``pending``, ``outbox_len``, ``outbox_bytes`` and ``outbox_unread`` of the outbox (module doc).

    Raises redis errors when Redis is unavailable."""
    now_s, now_us = r.time()
    now_ms = now_s * 1000 + now_us // 1000
    oldest: int | None = None
    pending = length = size = unread = 0
    for shard in range(shards):
        key = outbox_key(shard)
        n = r.xlen(key)
        length += n
        if not n:
            continue
        size += r.memory_usage(key, samples=0) or 0
        pipe = r.pipeline(transaction=True)  # XLEN and the group's counts at one instant
        pipe.xlen(key)
        pipe.xinfo_groups(key)
        now_len, infos = pipe.execute()
        groups = {g["name"]: g for g in infos}
        group = groups.get(GROUP)
        if group is None:  # no drain ever read it: everything is undelivered
            first = r.xrange(key, count=1)
            pending += n
            unread += n
            if first:
                oldest = min(oldest or now_ms, _id_ms(first[0][0]))
            continue
        pending += group["pending"]
        if group["pending"]:
            summary = r.xpending(key, GROUP)
            if summary["min"]:  # None when acknowledged since XINFO
                oldest = min(oldest or now_ms, _id_ms(summary["min"]))
        undelivered = r.xrange(key, min=f"({group['last-delivered-id']}", count=1)
        if undelivered:
            oldest = min(oldest or now_ms, _id_ms(undelivered[0][0]))
            lag = group.get("lag")
            if lag is None or lag > now_len - group["pending"]:  # no counter, or a stale one (module doc)
                lag = len(r.xrange(key, min=f"({group['last-delivered-id']}"))
            pending += lag
            unread += lag
    return {
        "lag_s": 0.0 if oldest is None else max(0.0, (now_ms - oldest) / 1000),
        "pending": pending,
        "outbox_len": length,
        "outbox_bytes": size,
        "outbox_unread": unread,
    }


def outbox_totals(r: redis.Redis, shards: int) -> dict[str, int]:
    """What the outbox streams hold and have ever been given, summed over the shards:
    ``entries_added`` (XINFO STREAM ``entries-added``: every entry ever appended to the stream,
    trimmed, deleted or not; reloaded exactly from the AOF or RDB), ``outbox_len`` (XLEN) and
    ``outbox_bytes`` (``MEMORY USAGE … SAMPLES 0``, bytes).  A shard's stream that does not exist
    counts 0.  Unlike the group's ``lag`` these do not depend on how the consumer group's read
    counter survived a restart.  Raises redis errors when Redis is unavailable."""
    added = length = size = 0
    for shard in range(shards):
        key = outbox_key(shard)
        try:
            info = r.xinfo_stream(key)
        except redis.ResponseError as exc:
            if "no such key" not in str(exc):
                raise
            continue
        added += info["entries-added"]
        length += info["length"]
        size += r.memory_usage(key, samples=0) or 0
    return {"entries_added": added, "outbox_len": length, "outbox_bytes": size}


def queued_growth(before: dict[str, int], after: dict[str, int]) -> dict:
    """Bytes per entry queued between two :func:`outbox_totals` of a paused drain.

    Returns ``queued_entries`` (growth of ``entries_added``: the entries appended, exactly),
    ``queued_bytes`` (growth of ``outbox_bytes``) and ``bytes_per_queued_entry`` (their ratio),
    which is None, with ``problem`` saying why, when nothing was appended or when XLEN did not grow
    by the entries appended (an entry trimmed or deleted meanwhile: the drain was not paused, so
    the bytes' growth is not the appended entries' cost); ``problem`` is None otherwise."""
    entries = after["entries_added"] - before["entries_added"]
    grown = after["outbox_len"] - before["outbox_len"]
    size = after["outbox_bytes"] - before["outbox_bytes"]
    out: dict = {"queued_entries": entries, "queued_bytes": size, "bytes_per_queued_entry": None, "problem": None}
    if entries <= 0:
        out["problem"] = "no entry was appended"
    elif grown != entries:
        out["problem"] = f"XLEN grew by {grown:,} while {entries:,} entries were appended: some were trimmed or deleted"
    else:
        out["bytes_per_queued_entry"] = size / entries
    return out


def measure_queued(r: redis.Redis, shards: int, send: Callable[[], object]) -> dict:
    """:func:`queued_growth` of the outbox over ``send()`` (which appends entries while no drain
    reads or trims): :func:`outbox_totals` before and after it.  Raises redis errors when Redis is
    unavailable, and whatever ``send`` raises."""
    before = outbox_totals(r, shards)
    send()
    return queued_growth(before, outbox_totals(r, shards))


class ProcessMeter:
    """RSS and CPU% of process families, each a top-level pid and its descendants (psutil)."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}

    def _get(self, pid: int) -> psutil.Process:
        proc = self._procs.get(pid)
        if proc is None:
            proc = self._procs[pid] = psutil.Process(pid)
            proc.cpu_percent(None)  # the first call only starts the interval
        return proc

    def measure(self, families: dict[str, list[int]]) -> dict[str, float]:
        """``rss.<family>`` (bytes) and ``cpu.<family>`` (%, one core = 100) for each family."""
        out: dict[str, float] = {}
        for family, pids in families.items():
            rss = cpu = 0.0
            for pid in pids:
                try:
                    top = psutil.Process(pid)
                    members = [top, *top.children(recursive=True)]
                except psutil.NoSuchProcess:
                    continue
                for member in members:
                    try:
                        proc = self._get(member.pid)
                        rss += proc.memory_info().rss
                        cpu += proc.cpu_percent(None)
                    except psutil.NoSuchProcess:
                        self._procs.pop(member.pid, None)
            out[f"rss.{family}"] = rss
            out[f"cpu.{family}"] = cpu
        return out


class Sampler:
    """A thread that appends one sample a second to ``path`` and keeps them in :attr:`samples`."""

    def __init__(
        self, path: Path, *, redis_port: int, pg_url: str, shards: int, pids: Callable[[], dict[str, list[int]]]
    ) -> None:
        self.path, self.shards, self.pids = path, shards, pids
        self.redis = redis.Redis(port=redis_port, socket_timeout=1, socket_connect_timeout=1, decode_responses=True)
        self.pg_url = pg_url.replace("postgresql+psycopg://", "postgresql://")
        self.meter = ProcessMeter()
        self.samples: list[dict] = []
        self.phase = "setup"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.redis.close()

    def sample(self) -> dict:
        """One sample now (module doc)."""
        s: dict = {"t": time.time(), "phase": self.phase}
        try:
            s.update(outbox_state(self.redis, self.shards))
            s["redis_used_memory"] = self.redis.info("memory")["used_memory"]
        except redis.exceptions.RedisError:
            s.update(
                lag_s=None, pending=None, outbox_len=None, outbox_bytes=None, outbox_unread=None, redis_used_memory=None
            )
        try:
            with psycopg.connect(self.pg_url, connect_timeout=1, autocommit=True) as conn:
                s["pg_db_bytes"] = conn.execute("SELECT pg_database_size('tollgate')").fetchone()[0]
        except psycopg.Error:
            s["pg_db_bytes"] = None
        s.update(self.meter.measure(self.pids()))
        return s

    def _run(self) -> None:
        with self.path.open("a") as fh:
            next_at = time.monotonic()
            while not self._stop.is_set():
                try:
                    s = self.sample()
                except Exception as exc:  # a sample lost to a race (a process exiting, a key trimmed): note it, go on
                    s = {"t": time.time(), "phase": self.phase, "error": f"{type(exc).__name__}: {exc}"}
                self.samples.append(s)
                fh.write(json.dumps(s) + "\n")
                fh.flush()
                next_at += 1.0
                self._stop.wait(max(0.0, next_at - time.monotonic()))
