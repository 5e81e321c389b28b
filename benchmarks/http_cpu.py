"""The API's own CPU per ``POST /v1/turns``, in process: a figure that holds on a shared machine.

Run from the repository root::

    .venv/bin/python -m benchmarks.http_cpu [--requests 3000] [--concurrency 16] [--rounds 5] [--profile]

``api_stub.app.create_app()`` is called directly with ASGI messages on a uvloop event loop (no
uvicorn, no sockets, no HTTP parsing), ``--concurrency`` requests at once against real Redis and
PostgreSQL (the bench namespaces of :mod:`benchmarks.namespaces`, set up as ``bench_http`` does:
8 wallets, an owner key, the rate limit raised out of the way).  Each round sends ``--requests`` new
turns and reports this process's CPU time per request (``time.process_time``: the app, redis-py,
the event loop; not the Redis server's) and the garbage collector's pauses in the round (count,
total and longest, from ``gc.callbacks``).  The figure printed first is the minimum over the rounds
(the least disturbed by other processes); compare two versions of the code by alternating runs.
"""

from __future__ import annotations

import os

from benchmarks.namespaces import use_bench_namespaces

use_bench_namespaces()
os.environ["TOLLGATE_RATE_LIMIT"] = "100000000/minute"

import argparse  # noqa: E402
import asyncio  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import uvloop  # noqa: E402

from benchmarks.bench_http import setup, turn  # noqa: E402


class GcPauses:
    """Wall-clock pauses of the garbage collector (``gc.callbacks``), per generation."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self._started))


async def one_round(app, key: str, prefix: str, n: int, concurrency: int) -> float:
    """``n`` POST /v1/turns through the ASGI app, ``concurrency`` at once; every answer must be
    200 and accepted.  Returns the process's CPU seconds spent."""
    headers = [
        (b"host", b"bench"),
        (b"authorization", f"Bearer {key}".encode()),
        (b"content-type", b"application/json"),
    ]
    bodies = [json.dumps(turn(prefix, i), separators=(",", ":")).encode() for i in range(n)]
    counter = iter(range(n))
    failures: list[bytes] = []

    async def worker() -> None:
        for i in counter:
            body = bodies[i]
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": "/v1/turns",
                "raw_path": b"/v1/turns",
                "root_path": "",
                "query_string": b"",
                "headers": [*headers, (b"content-length", str(len(body)).encode())],
                "client": ("127.0.0.1", 5000),
                "server": ("127.0.0.1", 8000),
            }
            sent = False

            async def receive() -> dict:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                await asyncio.sleep(3600)
                return {"type": "http.disconnect"}

            answer: list[dict] = []

            async def send(message: dict) -> None:
                answer.append(message)

            await app(scope, receive, send)
            status = answer[0]["status"]
            content = b"".join(m.get("body", b"") for m in answer[1:])
            if status != 200 or b'"accepted":true' not in content:
                failures.append(content[:200])

    started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    spent = time.process_time() - started
    if failures:
        raise RuntimeError(f"{len(failures)} of {n} requests failed, e.g. {failures[0]!r}")
    return spent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.http_cpu", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per round (default 3000)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds after one warm-up round (default 5)")
    parser.add_argument("--profile", action="store_true", help="cProfile one more round, print the top functions")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")
    args = parser.parse_args(argv)

    key = setup()
    from api_stub.app import create_app

    app = create_app()
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    stamp = int(time.time())

    async def run() -> dict[str, Any]:
        await one_round(app, key, f"warm{stamp}", 300, args.concurrency)
        rounds = []
        for r in range(args.rounds):
            pauses.pauses.clear()
            spent = await one_round(app, key, f"r{stamp}:{r}", args.requests, args.concurrency)
            gen2 = [s for g, s in pauses.pauses if g == 2]
            rounds.append(
                {
                    "cpu_us": spent / args.requests * 1e6,
                    "gc_collections": len(pauses.pauses),
                    "gc_total_ms": sum(s for _, s in pauses.pauses) * 1e3,
                    "gc_max_ms": max((s for _, s in pauses.pauses), default=0.0) * 1e3,
                    "gc_gen2": len(gen2),
                }
            )
        if args.profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile(time.process_time)
            profiler.enable()
            await one_round(app, key, f"prof{stamp}", args.requests, args.concurrency)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(35)
        return {"rounds": rounds}

    result = uvloop.run(run())
    cpu = [r["cpu_us"] for r in result["rounds"]]
    for r in result["rounds"]:
        print(
            f"CPU {r['cpu_us']:7.1f} µs/request  gc {r['gc_collections']:4d} collections "
            f"({r['gc_gen2']} gen2), {r['gc_total_ms']:6.1f} ms total, longest {r['gc_max_ms']:5.2f} ms"
        )
    print(
        f"POST /v1/turns in process, {args.concurrency} at once: min {min(cpu):.1f} µs, median "
        f"{statistics.median(cpu):.1f} µs CPU per request ({args.rounds} rounds of {args.requests}; "
        f"1-min load {os.getloadavg()[0]:.2f})"
    )
    if args.json:
        print(json.dumps(result | {"min_cpu_us": min(cpu), "median_cpu_us": statistics.median(cpu)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
