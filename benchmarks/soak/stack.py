"""The soak's own services and processes: PostgreSQL and Redis on free ports, the Procfile's worker
and beat, the faults, and the one clean-up that stops them all.

- PostgreSQL: :class:`worker.devtools.throwaway.PostgresServer` with durable settings (fsync on;
  ``pg_durable=False``: fsync off, to tell disk latency apart), its ``tollgate`` database migrated
  with Alembic.
- Redis: :class:`worker.devtools.throwaway.RedisServer` with ``appendonly yes``, ``appendfsync everysec``.
- ``worker`` and ``beat``: the command lines of the repository's ``Procfile`` (``${VAR:-default}``
  expanded from the environment, ``celery`` run as ``<this python> -m celery``), each in its own
  process group, logging to the run directory.  A supervisor thread starts the worker again when it
  exits, as a process manager would.
- :meth:`Stack.close` stops every process group and server and removes their directories; it is safe
  to call twice and runs from ``finally`` (also on Ctrl-C, SIGTERM and exceptions).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis

from worker.devtools.throwaway import PostgresServer, RedisServer
from worker.devtools.workers import kill_process_group, stop_process_group

REPO = Path(__file__).resolve().parents[2]
_VAR = re.compile(r"\$\{(\w+):-([^}]*)\}")

#: a leading ``NAME=value`` of a Procfile line
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*")


def procfile_command(name: str, procfile: Path = REPO / "Procfile") -> list[str]:
    """The argv of process ``name`` of the Procfile, variables expanded, ``celery`` as this Python's module;
    leading ``NAME=value`` assignments (as a shell runs them) are kept through ``env``.

    Raises KeyError when the Procfile has no such process."""
    for line in procfile.read_text().splitlines():
        key, sep, cmd = line.partition(":")
        if sep and key.strip() == name:
            cmd = _VAR.sub(lambda m: os.environ.get(m.group(1), m.group(2)), cmd)
            argv = shlex.split(cmd)
            n = 0
            while n < len(argv) and _ASSIGNMENT.fullmatch(argv[n]):
                n += 1
            assignments, argv = argv[:n], argv[n:]
            if argv[0] == "celery":
                argv = [sys.executable, "-m", "celery", *argv[1:]]
            return ["env", *assignments, *argv] if assignments else argv
    raise KeyError(f"Procfile has no process {name!r}")


class Stack:
    """PostgreSQL, Redis (AOF), a supervised worker and beat, started in ``run_dir`` (module doc).

    ``redis_port`` / ``pg_port``: the free ports the caller already put into ``TOLLGATE_*``."""

    def __init__(self, run_dir: Path, *, redis_port: int, pg_port: int, pg_durable: bool = True) -> None:
        self.run_dir = run_dir
        self.pg_durable = pg_durable
        self.redis_port, self.pg_port = redis_port, pg_port
        self.pg: PostgresServer | None = None
        self.redis: RedisServer | None = None
        self.worker: subprocess.Popen | None = None
        self.beat: subprocess.Popen | None = None
        self.extra: list[subprocess.Popen] = []  # drivers, registered by the caller for clean-up
        self.worker_starts = 0
        #: pid of the last worker that reached ``ready.``
        self.ready_pid: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._closed = False

    # -- start ---------------------------------------------------------------------------------

    def start_servers(self) -> None:
        """Start PostgreSQL and Redis.  The caller migrates the database (it needs the settings)."""
        self.pg = PostgresServer(port=self.pg_port, durable=self.pg_durable, max_connections=100)
        self.redis = RedisServer(aof=True, port=self.redis_port)

    def env(self) -> dict[str, str]:
        """The environment of a child process: this one's (``TOLLGATE_*`` already set) plus the repo on the path."""
        return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def _spawn(self, argv: list[str], name: str) -> subprocess.Popen:
        with (self.run_dir / f"{name}.log").open("ab") as log:
            return subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.run_dir,
                env=self.env(),
                start_new_session=True,
            )

    def start_worker(self, timeout_s: float = 120) -> float:
        """Start the Procfile's worker and wait for its ``ready.`` line; returns the seconds waited."""
        log = self.run_dir / "worker.log"
        offset = log.stat().st_size if log.exists() else 0
        started = time.monotonic()
        with self._lock:
            self.worker = self._spawn(procfile_command("worker"), "worker")
            self.worker_starts += 1
            proc = self.worker
        while time.monotonic() - started < timeout_s:
            with log.open("rb") as fh:
                fh.seek(offset)
                if b"ready." in fh.read():
                    self.ready_pid = proc.pid
                    return time.monotonic() - started
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode}; see {log}")
            if self._stop.is_set():  # closing: close() stops this worker too
                raise RuntimeError("the stack is closing")
            time.sleep(0.05)
        raise RuntimeError(f"worker not ready after {timeout_s:.0f} s; see {log}")

    def start_beat(self) -> None:
        """Start the Procfile's beat."""
        self.beat = self._spawn(procfile_command("beat"), "beat")

    def supervise(self) -> None:
        """Start the thread that starts the worker again whenever it has exited."""

        def loop() -> None:
            while not self._stop.wait(0.2):
                proc = self.worker
                if proc is not None and proc.poll() is not None:
                    try:
                        self.start_worker()
                    except RuntimeError:  # e.g. Redis still down: try again
                        time.sleep(0.5)

        self._supervisor = threading.Thread(target=loop, name="soak-supervisor", daemon=True)
        self._supervisor.start()

    # -- faults --------------------------------------------------------------------------------

    def kill_worker(self, timeout_s: float = 180) -> float:
        """SIGKILL the worker's process group; the supervisor starts a new one.  Returns the Unix
        time its successor was ready (the service answering again).  Raises RuntimeError if none is
        ready within ``timeout_s``."""
        with self._lock:
            old = self.worker
            assert old is not None
            kill_process_group(old)
        deadline = time.monotonic() + timeout_s
        while self.ready_pid in (None, old.pid):
            if time.monotonic() > deadline:
                raise RuntimeError("no worker ready after the kill")
            time.sleep(0.05)
        return time.time()

    def restart_redis(self) -> float:
        """SIGKILL Redis and start it again on the same port and AOF; returns the Unix time it answers PING."""
        assert self.redis is not None
        self.redis.kill()
        self.redis.start()  # waits until PING answers (AOF loaded)
        return time.time()

    def restart_pg(self) -> float:
        """``pg_ctl restart -m immediate`` (crash recovery from WAL); returns the Unix time it accepts again."""
        assert self.pg is not None
        self.pg.restart("immediate")
        return time.time()

    # -- process ids for the sampler -------------------------------------------------------------

    def pids(self) -> dict[str, list[int]]:
        """Top-level pid of each process family: worker, beat, postgres (postmaster), redis, drivers."""
        out: dict[str, list[int]] = {}
        for name, proc in (("worker", self.worker), ("beat", self.beat)):
            if proc is not None and proc.poll() is None:
                out[name] = [proc.pid]
        if self.pg is not None and (pid := self.pg.postmaster_pid()):
            out["postgres"] = [pid]
        if self.redis is not None and self.redis.proc is not None and self.redis.proc.poll() is None:
            out["redis"] = [self.redis.proc.pid]
        out["driver"] = [p.pid for p in self.extra if p.poll() is None]
        return out

    def redis_client(self) -> redis.Redis:
        """A client of the soak's Redis (1 s socket timeout, so a sampler never hangs on it)."""
        return redis.Redis(port=self.redis_port, socket_timeout=1, socket_connect_timeout=1, decode_responses=True)

    # -- stop ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop everything this stack started (drivers, supervisor, worker, beat, Redis, PostgreSQL)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=10)
        for proc in [*self.extra, self.beat, self.worker]:
            if proc is not None:
                try:
                    stop_process_group(proc, timeout_s=10)
                except ProcessLookupError:
                    pass
        if self.redis is not None:
            self.redis.close()
        if self.pg is not None:
            self.pg.close()


def raise_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so ``finally`` clean-up runs as on Ctrl-C."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
