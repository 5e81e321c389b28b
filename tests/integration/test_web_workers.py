"""The web process as the Procfile runs it (``uvicorn --workers 2``) against real Redis and
PostgreSQL: every turn is recorded once whichever worker takes it, and ``/metrics`` counts the
decisions and the gate latency (``tollgate_gate_seconds``) of both workers, whichever answers the
scrape; the latency histogram of another process is added as the decisions are."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, _env, auth, free_port, wait_healthy
from tests.integration.test_api import COST, TURN, api  # noqa: F401  (the fixture)
from worker.gate.keys import DECISION_METRICS_KEY, GATE_LATENCY_METRICS_KEY
from worker.metrics import gate_seconds

pytestmark = pytest.mark.integration


def _procfile_web(port: int) -> list[str]:
    line = next(row for row in (REPO / "Procfile").read_text().splitlines() if row.startswith("web:"))
    args = line.removeprefix("web:").split()
    return [a.replace("${PORT:-8000}", str(port)).replace("0.0.0.0", "127.0.0.1") for a in args]


def _command(args: list[str]) -> list[str]:
    """The Procfile's ``python -m …`` command run with this interpreter."""
    assert args[:2] == ["python", "-m"], args
    return [sys.executable, *args[1:]]


def _scraped(text: str) -> dict[str, float]:
    """The samples of a Prometheus text page: ``name{labels}`` → value."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


def test_two_workers_record_each_turn_once_and_metrics_count_both(api, gate, redis_client):  # noqa: F811
    args = _procfile_web(port := free_port())
    # uvicorn's command line through api_stub.serve: a listening socket per worker (SO_REUSEPORT)
    assert args[2] == "api_stub.serve" and args[args.index("--workers") + 1] == "2"
    redis_client.delete(DECISION_METRICS_KEY, GATE_LATENCY_METRICS_KEY)
    proc = subprocess.Popen(
        [*_command(args), "--log-level", "warning"],
        cwd=REPO,
        env=_env() | {"TOLLGATE_DECISION_METRICS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, base)
        n = 40
        for i in range(n):  # a new connection each: the kernel hands them to either worker
            r = httpx.post(f"{base}/v1/turns", json={**TURN, "turn_id": f"w-{i}"}, headers=auth(api.keys["owner"]))
            assert r.status_code == 200 and r.json()["accepted"], r.text
        again = httpx.post(f"{base}/v1/turns", json={**TURN, "turn_id": "w-0"}, headers=auth(api.keys["owner"]))
        assert again.json()["duplicate"] is True
        assert gate.balance("w1") == 1_000_000_000 - n * COST
        # each scrape flushes the answering worker's counts; the other's are flushed by its timer (1 s)
        deadline = time.monotonic() + 10
        while True:
            page = httpx.get(f"{base}/metrics", headers=auth(api.keys["admin"]))
            assert page.status_code == 200, page.text
            samples = _scraped(page.text)
            if samples.get("tollgate_gate_seconds_count") == n + 1 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert samples['tollgate_decisions_total{outcome="accepted"}'] == n
        assert samples['tollgate_decisions_total{outcome="duplicate"}'] == 1
        assert samples["tollgate_gate_seconds_count"] == n + 1
        assert samples['tollgate_gate_seconds_bucket{le="+Inf"}'] == n + 1
        assert samples["tollgate_gate_seconds_sum"] > 0
    finally:
        proc.terminate()
        proc.wait(timeout=15)


OTHER_PROCESS = """
import redis
from worker.metrics import gate_seconds
client = redis.Redis.from_url({url!r})
for seconds in (0.0001, 0.0003, 0.0003, 0.004, 2.0):
    gate_seconds.observe(client, seconds)
"""  # flushed at exit


def test_the_gate_latency_of_another_process_is_added_exactly(redis_client, settings, monkeypatch):
    monkeypatch.setattr(gate_seconds, "enabled", True)
    redis_client.delete(GATE_LATENCY_METRICS_KEY)
    done = subprocess.run(
        [sys.executable, "-c", OTHER_PROCESS.format(url=settings.redis_url)],
        cwd=REPO,
        env=_env() | {"TOLLGATE_DECISION_METRICS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    gate_seconds.observe(redis_client, 0.0007)  # this process's own, flushed by figures()
    buckets, total = gate_seconds.figures(redis_client)
    assert buckets == [
        ("0.0002", 1),
        ("0.0005", 3),
        ("0.001", 4),
        ("0.002", 4),
        ("0.005", 5),
        ("0.01", 5),
        ("0.025", 5),
        ("0.05", 5),
        ("0.1", 5),
        ("0.25", 5),
        ("1", 5),
        ("+Inf", 6),
    ]
    assert total == pytest.approx(0.0001 + 0.0003 + 0.0003 + 0.004 + 2.0 + 0.0007, abs=1e-6)
    assert redis_client.hget(GATE_LATENCY_METRICS_KEY, "sum_us") in (b"2005400", "2005400")


def _socket_inodes(pid: int) -> set[int]:
    """The inodes of process ``pid``'s open sockets (``/proc/<pid>/fd``)."""
    found = set()
    for fd in (Path("/proc") / str(pid) / "fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            found.add(int(target[8:-1]))
    return found


def _tcp_sockets(port: int) -> list[tuple[str, int]]:
    """``(state, inode)`` of every IPv4 TCP socket whose local port is ``port`` (``/proc/net/tcp``;
    state ``0A`` listening, ``01`` established)."""
    rows = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port:
            rows.append((fields[3], int(fields[9])))
    return rows


def _children(pid: int) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(p) == pid]


def _ppid(proc_dir: Path) -> int | None:
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def test_each_worker_listens_on_its_own_socket_and_connections_opened_together_reach_both(api):  # noqa: F811
    # uvicorn's workers share one listening socket and an event loop accepts every waiting connection
    # when it wakes: 16 connections opened together mostly landed on one worker.  The Procfile's command
    # gives each worker a socket of its own (SO_REUSEPORT): the kernel spreads them by a hash.
    args = _procfile_web(port := free_port())
    proc = subprocess.Popen(
        [*_command(args), "--log-level", "warning"],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    opened: list[socket.socket] = []
    try:
        wait_healthy(proc, base)
        deadline = time.monotonic() + 20  # /healthz answered by the first worker up; wait for the second
        while True:
            listening = [inode for state, inode in _tcp_sockets(port) if state == "0A"]
            if len(listening) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        workers = {pid: _socket_inodes(pid) for pid in _children(proc.pid)}
        owners = [[pid for pid, inodes in workers.items() if inode in inodes] for inode in listening]
        assert len(listening) == 2 and sorted(len(o) for o in owners) == [1, 1], (listening, owners)
        assert len({o[0] for o in owners}) == 2  # two workers, each its own listening socket
        assert not (_socket_inodes(proc.pid) & set(listening))  # the supervisor only holds the address

        opened = [socket.create_connection(("127.0.0.1", port)) for _ in range(16)]
        for sock in opened:  # every connection answered: accepted and served
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        for sock in opened:
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        established = {inode for state, inode in _tcp_sockets(port) if state == "01"}
        workers = {pid: _socket_inodes(pid) for pid in workers}  # now with the accepted connections
        per_worker = {o[0]: len(workers[o[0]] & established) for o in owners}
        assert sum(per_worker.values()) == 16
        # by the kernel's hash both get some (all 16 on one worker: probability 2**-15)
        assert all(n > 0 for n in per_worker.values()), per_worker
    finally:
        for sock in opened:
            sock.close()
        proc.terminate()
        proc.wait(timeout=15)
