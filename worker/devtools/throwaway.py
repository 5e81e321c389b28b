"""Throwaway Redis and PostgreSQL servers on free loopback ports, for the fault suite
(``tests/faults``) and the soak benchmark (``benchmarks/soak``), which both import them from here.

Never the shared development services (6379 / 5432): each server here lives in its own temporary
directory, on a port found by binding port 0, and is stopped (its process group killed) by its owner.

- :class:`RedisServer`: ``redis-server`` with or without AOF (``appendonly yes``, ``appendfsync
  everysec`` as in ``docker-compose.yml``); ``kill()`` is SIGKILL, ``restart()`` starts it again on
  the same port and directory (so an AOF is replayed).
- :class:`PostgresServer`: a cluster made by ``initdb`` in a temp dir owned by the ``postgres`` OS
  user (``nobody`` where there is none) and run with ``pg_ctl`` as that user (``runuser``; we run
  as root).  ``restart(mode)``
  is ``pg_ctl restart -m fast|immediate`` (immediate = crash, recovery from WAL).  Made for
  speed by default (``fsync=off``); ``durable=True`` keeps PostgreSQL's durable defaults (fsync,
  full-page writes), as a soak that measures PostgreSQL needs.

Binaries: the system's (``redis-server``; ``TOLLGATE_PG_BIN`` or ``/usr/lib/postgresql/<n>/bin``), else
the ``embedded`` extra's Valkey and PostgreSQL (:mod:`worker.devtools.services`).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from worker.devtools.services import embedded_pg_bin, pg_bin_dir, redis_binaries
from worker.errors import Unavailable

try:
    PG_BIN = pg_bin_dir()
except Unavailable:  # no PostgreSQL at all: the tests that need one fail naming the path
    PG_BIN = Path("/usr/lib/postgresql/15/bin")
try:
    REDIS_SERVER = redis_binaries()[0]
except Unavailable:
    REDIS_SERVER = "/usr/bin/redis-server"
#: the OS user PostgreSQL runs as (initdb and postgres refuse root)
PG_USER = "postgres" if any(p.pw_name == "postgres" for p in pwd.getpwall()) else "nobody"
#: initdb without an installed locale (the embedded binaries' machine may have none)
PG_LOCALE = ["--locale=C"] if PG_BIN == embedded_pg_bin() else []


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout_s: float, proc: subprocess.Popen | None = None, what: str = "server") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} on port {port} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what} on port {port} not up after {timeout_s} s")


class RedisServer:
    """A ``redis-server`` of our own.  ``aof=True``: ``appendonly yes``, ``appendfsync everysec``."""

    def __init__(self, *, aof: bool = False, port: int | None = None) -> None:
        self.aof = aof
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="tollgate-redis-"))
        self.proc: subprocess.Popen | None = None
        self.log = self.dir / "redis.log"
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (or start again, replaying the AOF if any) on the same port and directory."""
        cmd = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(self.log),
            "--protected-mode",
            "no",
        ]
        if self.aof:
            cmd += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            cmd += ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        _wait_port(self.port, 20, self.proc, "redis-server")
        # the port accepts before the AOF is loaded: wait until Redis answers PING (not LOADING)
        client = redis.Redis(port=self.port, socket_timeout=2)
        deadline = time.monotonic() + 30
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.exceptions.BusyLoadingError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL the server (no AOF fsync, no shutdown save)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def shutdown(self) -> None:
        """SIGTERM: a graceful shutdown (Redis fsyncs its AOF before exiting)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self, *, hard: bool = False) -> None:
        """Stop (SIGKILL if ``hard``, else graceful) and start again on the same port and dir."""
        self.kill() if hard else self.shutdown()
        self.start()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class PostgresServer:
    """A throwaway PostgreSQL cluster run by the ``postgres`` OS user (trust auth, loopback only)."""

    def __init__(self, *, port: int | None = None, durable: bool = False, max_connections: int = 60) -> None:
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="tollgate-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "pg.log"
        pw = pwd.getpwnam(PG_USER)
        os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self._run(
            PG_BIN / "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            *PG_LOCALE,
            "--no-sync",
            "--no-instructions",
        )
        opts = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir} "
            f"-c max_connections={max_connections} -c shared_buffers=64MB"
        )
        if not durable:
            opts += " -c fsync=off -c full_page_writes=off"
        (self.data / "tollgate.opts").write_text(opts)  # kept for restarts
        self._opts = opts
        self.start()

    @property
    def url(self) -> str:
        """SQLAlchemy URL of database ``tollgate`` on this cluster."""
        return self.url_for("tollgate")

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *cmd, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            ["runuser", "-u", PG_USER, "--", *map(str, cmd)],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            cwd=self.dir,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stdout[-1500:]} {proc.stderr[-1500:]}")
        return proc

    def postmaster_pid(self) -> int | None:
        """The postmaster's process id (first line of ``postmaster.pid``), None when it is stopped."""
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return None

    def start(self) -> None:
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-l", self.log, "-o", self._opts, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "fast") -> None:
        """``pg_ctl restart -m <mode>``: ``immediate`` aborts every backend (crash recovery on start)."""
        self._run(
            PG_BIN / "pg_ctl",
            "-D",
            self.data,
            "-l",
            self.log,
            "-o",
            self._opts,
            "-m",
            mode,
            "-w",
            "-t",
            "60",
            "restart",
        )

    def close(self) -> None:
        """Stop the cluster (immediately) and remove its directory."""
        try:
            if (self.data / "postmaster.pid").exists():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
