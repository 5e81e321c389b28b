"""A throwaway Redis Cluster on loopback (``redis-server --cluster-enabled yes``, ``redis-cli --cluster
create``), for the cluster tests and the scale benchmark: masters only, no persistence, each in a
directory of its own under ``root``."""

from __future__ import annotations

import random
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import redis

from worker.devtools.services import redis_binaries


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_ports(n: int) -> list[int]:
    """``n`` free ports whose cluster bus ports (port + 10000) are free too (so both stay < 65536)."""
    rng = random.Random()
    ports: list[int] = []
    while len(ports) < n:
        port = rng.randrange(20000, 50000)
        if port not in ports and _free(port) and _free(port + 10000):
            ports.append(port)
    return ports


@contextmanager
def redis_cluster(root: Path, masters: int = 3) -> Iterator[tuple[str, list[int], list[subprocess.Popen]]]:
    """Start ``masters`` cluster-enabled ``redis-server`` processes on free loopback ports, join them
    into one cluster (slots split evenly, no replicas) and wait until it answers ``cluster_state:ok``.

    Yields ``(url of the first node, ports, processes)`` (``processes[i]`` serves ``ports[i]``);
    every process is terminated on exit.  Raises subprocess.CalledProcessError (``redis-cli --cluster
    create`` failed), redis.ConnectionError (a node never answered within 10 s), TimeoutError (the
    cluster was not ok within 20 s)."""
    ports = free_cluster_ports(masters)
    procs: list[subprocess.Popen] = []
    try:
        for port in ports:
            d = root / str(port)
            d.mkdir(parents=True)
            procs.append(
                subprocess.Popen(
                    [redis_binaries()[0], "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes"]
                    + ["--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no", "--dir", str(d)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.STDOUT,
                )
            )
        for port in ports:
            deadline = time.monotonic() + 10
            while True:
                try:
                    redis.Redis(host="127.0.0.1", port=port).ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        subprocess.run(
            [redis_binaries()[1], "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports]]
            + ["--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 20
        while redis.Redis(host="127.0.0.1", port=ports[0]).cluster("info").get("cluster_state") != "ok":
            if time.monotonic() > deadline:
                raise TimeoutError("the cluster never became ok")
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{ports[0]}/0", ports, procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
