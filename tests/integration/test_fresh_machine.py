"""A fresh machine (issue 17): nothing answers at the configured URLs, so ``make demo`` starts the
embedded PostgreSQL and Valkey (the ``embedded`` extra) on exactly those ports, replays the bundled
Azure trace (2,000 turns, all persisted), and stops them: no process and no listening port is left,
and the data is kept for the next run.  Also: the embedded servers end with their parent even when it
is killed (SIGKILL), and a server that answers is used as it is.

The URLs point at free loopback ports, so this runs beside the system's own PostgreSQL and Redis.
``make`` is given this interpreter's venv and a fresh install stamp, so it installs nothing (``.ci/run``
has installed the checkout already) and runs this checkout's code (``PYTHONPATH``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from worker.devtools.services import answers, embedded_pg_bin, embedded_valkey_bin

pytestmark = [
    pytest.mark.fresh,
    pytest.mark.skipif(
        embedded_pg_bin() is None or embedded_valkey_bin() is None,
        reason="the `embedded` extra is not installed (make test installs it)",
    ),
]

REPO = Path(__file__).resolve().parents[2]
#: the table the README's Quick start says `make demo` ends with
README_DEMO_TABLE = re.search(
    r"`make demo` ends with this table.*?```\n(.*?)```", (REPO / "README.md").read_text(), re.S
).group(1)


def _table_rows(text: str) -> dict[str, str]:
    """``{figure: value}`` of the rows of a rich table in ``text`` (``│ name │ value │``)."""
    return dict(re.findall(r"│ (\w+)\s*│\s*(\S+) │", text))


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture
def fresh_env():
    """Environment of a fresh machine: the three URLs on free loopback ports where nothing listens
    (broker unset: it follows the Redis URL), a new ``TOLLGATE_HOME`` under the checkout's ignored
    ``.tollgate/`` (readable by the unprivileged user PostgreSQL runs as).  Yields ``(env, pg_port,
    redis_port)``; afterwards removes the folder."""
    pg_port, redis_port = _free_ports(2)
    (REPO / ".tollgate").mkdir(exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="fresh-", dir=REPO / ".tollgate"))
    home.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    env.update(
        TOLLGATE_HOME=str(home),
        TOLLGATE_DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:{pg_port}/tollgate",
        TOLLGATE_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        PYTHONPATH=str(REPO),
    )
    assert not answers("127.0.0.1", pg_port) and not answers("127.0.0.1", redis_port)
    yield env, pg_port, redis_port
    shutil.rmtree(home, ignore_errors=True)


def _processes_with(env_item: str) -> list[str]:
    """``pid cmdline`` of every live process whose environment holds ``env_item`` (descendants of a
    run inherit its unique ``TOLLGATE_HOME``)."""
    found, needle = [], env_item.encode() + b"\0"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "environ").read_bytes():
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if cmd and "(zombie)" not in (proc / "stat").read_text():
                    found.append(f"{proc.name} {cmd}")
        except OSError:
            continue
    return found


def _assert_nothing_left(env: dict, *ports: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = _processes_with(f"TOLLGATE_HOME={env['TOLLGATE_HOME']}")
        listening = [p for p in ports if answers("127.0.0.1", p, 0.2)]
        if not left and not listening:
            return
        time.sleep(0.2)
    raise AssertionError(f"left behind: processes {left}, listening ports {listening}")


def test_make_demo_on_a_fresh_machine_persists_2000_turns_and_leaves_nothing(fresh_env, tmp_path):
    env, pg_port, redis_port = fresh_env
    stamp = tmp_path / "install.stamp"
    stamp.touch()  # newer than pyproject.toml: make installs nothing
    venv = Path(sys.executable).parent.parent
    done = subprocess.run(
        ["make", "-C", str(REPO), "demo", f"VENV={venv}", f"STAMP={stamp}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"started embedded postgres-{pg_port} at 127.0.0.1:{pg_port}" in done.stdout
    assert f"started embedded valkey-{redis_port} at 127.0.0.1:{redis_port}" in done.stdout
    figures = dict(re.findall(r"(turns_\w+)\s*│\s*([\d,]+)", done.stdout))
    wanted = ("turns_read", "turns_accepted", "turns_persisted", "turns_denied")
    assert {k: figures.get(k) for k in wanted} == {
        "turns_read": "2,000",
        "turns_accepted": "2,000",
        "turns_persisted": "2,000",
        "turns_denied": "0",
    }, done.stdout
    assert "pip install" not in done.stdout
    # it prints the README's table: every figure but the run's id and timings
    shown, readme = _table_rows(done.stdout), _table_rows(README_DEMO_TABLE)
    varying = {"run_id", "wallet_id", "wall_s", "turns_per_s"}
    assert len(readme) == 18 and set(readme) == set(shown), (readme, shown)
    assert {k: v for k, v in shown.items() if k not in varying} == {k: v for k, v in readme.items() if k not in varying}
    _assert_nothing_left(env, pg_port, redis_port)

    # the data was kept: started again, the database holds the 2,000 usage events
    count = (
        "import psycopg, os; u = os.environ['TOLLGATE_DATABASE_URL'].replace('+psycopg', ''); "
        "print('usage_events', psycopg.connect(u).execute('select count(*) from usage_event').fetchone()[0])"
    )
    again = subprocess.run(
        [sys.executable, "-m", "worker.cli", "services", "run", "--", sys.executable, "-c", count],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "usage_events 2000" in again.stdout
    _assert_nothing_left(env, pg_port, redis_port)


def test_embedded_servers_end_with_their_parent_even_when_it_is_killed(fresh_env):
    env, pg_port, redis_port = fresh_env
    runner = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "services", "run", "--", "sleep", "600"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (answers("127.0.0.1", pg_port) and answers("127.0.0.1", redis_port)):
            assert runner.poll() is None, runner.stdout.read()
            assert time.monotonic() < deadline, "embedded servers did not come up"
            time.sleep(0.1)
        time.sleep(0.5)  # past pg_isready: the runner has started its command
        runner.send_signal(signal.SIGKILL)
        runner.wait()
        # `sleep` (the command) is the runner's child and does not get the death signal; it is ours to end
        for line in _processes_with(f"TOLLGATE_HOME={env['TOLLGATE_HOME']}"):
            if line.split()[1] == "sleep":
                os.kill(int(line.split()[0]), signal.SIGKILL)
        _assert_nothing_left(env, pg_port, redis_port)
    finally:
        if runner.poll() is None:
            runner.kill()


def test_a_server_that_answers_is_used_as_it_is(fresh_env):
    env, pg_port, redis_port = fresh_env
    server = subprocess.Popen(
        [str(embedded_valkey_bin() / "valkey-server"), "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
        cwd=env["TOLLGATE_HOME"],
    )
    try:
        while not answers("127.0.0.1", redis_port):
            assert server.poll() is None
            time.sleep(0.05)
        done = subprocess.run(
            [sys.executable, "-m", "worker.cli", "services", "run", "--", "true"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"redis answers at 127.0.0.1:{redis_port}, used as it is" in done.stdout
        assert f"started embedded postgres-{pg_port}" in done.stdout
        assert "valkey-" not in done.stdout.split("used as it is")[1]
        assert server.poll() is None and answers("127.0.0.1", redis_port)  # not stopped by the run
        url = env["TOLLGATE_DATABASE_URL"].replace("+psycopg", "")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=2)
    finally:
        server.terminate()
        server.wait()


def test_services_up_status_down_for_a_long_running_setup(fresh_env):
    env, pg_port, redis_port = fresh_env

    def tollgate(*args: str):
        done = subprocess.run(
            [sys.executable, "-m", "worker.cli", "services", *args, "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout)

    try:
        started = tollgate("up")
        assert [s["name"] for s in started] == [f"postgres-{pg_port}", f"valkey-{redis_port}"]
        # detached: they outlive the command that started them
        assert answers("127.0.0.1", pg_port) and answers("127.0.0.1", redis_port)
        status = tollgate("status")
        assert [(r["kind"], r["answers"], r["embedded_pid"]) for r in status] == [
            ("postgres", True, started[0]["pid"]),
            ("redis", True, started[1]["pid"]),
        ]
        assert tollgate("up") == []  # they answer: nothing more is started
    finally:
        stopped = tollgate("down")
    assert stopped == [f"postgres-{pg_port}", f"valkey-{redis_port}"]
    _assert_nothing_left(env, pg_port, redis_port)
    assert [(r["answers"], r["embedded_pid"]) for r in tollgate("status")] == [(False, None), (False, None)]
