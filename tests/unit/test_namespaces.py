"""Tests touch only their own namespaces (issue 14, item 9): no test FLUSHALLs a Redis server it did
not start (FLUSHALL clears every logical database of the server, other people's included)."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO, TEST_REDIS_URL

#: test code that starts its own Redis servers, where FLUSHALL only clears what the test owns
OWN_SERVERS = ("tests/faults/", "tests/integration/test_redis_cluster.py")
FLUSHALL_CALL = re.compile(r"\.flushall\s*\(|[\"']flushall[\"']", re.IGNORECASE)


def test_no_test_flushes_all_of_a_server_it_did_not_start():
    offenders = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith(OWN_SERVERS) or rel == "tests/unit/test_namespaces.py":  # this file tests the guard
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if FLUSHALL_CALL.search(line):
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert offenders == []


def test_flushall_of_the_shared_server_is_refused_and_changes_nothing(redis_client):
    import redis

    # checked first: without the guard the call below would really clear the shared server
    assert getattr(redis.Redis.flushall, "tollgate_guard", False)
    redis_client.set("tollgate:test:namespace-marker", "1")
    other = redis.Redis.from_url(TEST_REDIS_URL, decode_responses=True)
    with pytest.raises(RuntimeError, match="^FLUSHALL of the shared Redis server"):
        other.flushall()
    assert redis_client.get("tollgate:test:namespace-marker") == "1"
    other.close()


def test_flushall_of_a_server_the_test_started_is_allowed():
    import redis

    from worker.devtools.throwaway import RedisServer

    server = RedisServer(aof=False)
    try:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        client.set("k", "v")
        assert client.flushall() is True
        assert client.dbsize() == 0
        client.close()
    finally:
        server.close()
