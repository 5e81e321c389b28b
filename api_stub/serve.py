"""The web process as the Procfile runs it: ``python -m api_stub.serve`` takes uvicorn's command line
(``api_stub.main:app --host … --port … --workers N …``) and runs uvicorn with one change: with
several workers, each worker listens on a socket of its own, bound to the same address with
``SO_REUSEPORT``, so the kernel spreads new connections over the workers by a hash of each
connection's addresses.

Why: uvicorn's workers share one listening socket, and an event loop accepts every connection
waiting when it wakes (uvloop's libuv accepts until the queue is empty).  Connections opened
together — a load balancer's or a client's keep-alive pool — then mostly land on one worker: in
``benchmarks.bench_http`` 16 connections split 15/1 or 14/2 in about half the runs, that worker's
core saturated while the other idled (p50 4–7 ms against 2 ms balanced, ``benchmarks/RESULTS.md``,
HTTP).  With a socket per worker the split is the kernel's hash, not a race.

The supervisor is uvicorn's own (``uvicorn.supervisors.Multiprocess``: health checks, restarts,
signals); its parent keeps the address bound (``SO_REUSEPORT``, never listening, so it receives
no connection) for the workers it starts or restarts.  A worker that dies loses the connections
waiting in its own queue (they are reset; a client retries), as with any ``SO_REUSEPORT`` server.
With one worker, or a unix socket or ``--fd``, this is plain uvicorn.
"""

from __future__ import annotations

import socket
import sys

from uvicorn import config as uvicorn_config
from uvicorn import main as uvicorn_cli
from uvicorn.supervisors import multiprocess

_bind_socket = uvicorn_config.Config.bind_socket


def _reuseport_socket(family: int, address: tuple) -> socket.socket:
    """A TCP socket with ``SO_REUSEADDR`` and ``SO_REUSEPORT`` bound to ``address`` (not listening).
    Raises OSError when the address cannot be bound."""
    sock = socket.socket(family=family, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def bind_socket(config: uvicorn_config.Config) -> socket.socket:
    """``Config.bind_socket`` (the supervisor's socket, made in the parent before any worker) with
    ``SO_REUSEPORT`` for a TCP address; uvicorn's own for a unix socket or ``--fd``.  Exits with
    uvicorn's startup-failure status when the address cannot be bound, as uvicorn does."""
    if config.uds is not None or config.fd is not None:
        return _bind_socket(config)
    family = socket.AF_INET6 if config.host and ":" in config.host else socket.AF_INET
    try:
        sock = _reuseport_socket(family, (config.host, config.port))
    except OSError as exc:
        uvicorn_config.logger.error(exc)
        sys.exit(uvicorn_config.STARTUP_FAILURE)
    host = f"[{config.host}]" if family == socket.AF_INET6 else config.host
    uvicorn_config.logger.info(
        "Uvicorn running on %s://%s:%d (Press CTRL+C to quit)",
        "https" if config.is_ssl else "http",
        host,
        sock.getsockname()[1],
    )
    sock.set_inheritable(True)
    return sock


class Worker(multiprocess.Process):
    """uvicorn's worker process, serving on a socket of its own: for each TCP socket the supervisor
    hands it (bound with ``SO_REUSEPORT`` by :func:`bind_socket`), a new one bound to the same
    address (the worker's ``listen`` queue); other sockets are served as given."""

    def target(self, sockets: list[socket.socket] | None = None) -> None:  # pragma: no cover (a child process)
        own: list[socket.socket] | None = None
        if sockets is not None:
            own = []
            for sock in sockets:
                if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.getsockopt(
                    socket.SOL_SOCKET, socket.SO_REUSEPORT
                ):
                    own.append(_reuseport_socket(sock.family, sock.getsockname()))
                    sock.close()
                else:
                    own.append(sock)
        super().target(own)


def main(argv: list[str] | None = None) -> None:
    """Run uvicorn's command line (``argv``, default ``sys.argv[1:]``) with :class:`Worker` workers
    and :func:`bind_socket`'s socket.  Exits as uvicorn does."""
    multiprocess.Process = Worker  # type: ignore[misc]  # the class the supervisor starts its workers from
    uvicorn_config.Config.bind_socket = bind_socket  # type: ignore[method-assign,assignment]
    uvicorn_cli.main(args=argv, prog_name="python -m api_stub.serve")


if __name__ == "__main__":
    main()
