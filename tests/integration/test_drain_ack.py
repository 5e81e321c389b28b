"""The drain's acknowledgement: XACK packed by hiredis below redis-py (one C call for a batch's
ids), redis-py's XACK and its retries after a connection error, errors raised as XACK raises them."""

from __future__ import annotations

import pytest
import redis as redis_lib

from tests.integration.test_drain import _assert_exactly_once, _fill
from worker.gate.keys import outbox_key
from worker.ledger import drain as drain_module
from worker.ledger.drain import GROUP, OutboxDrain

pytestmark = pytest.mark.integration


def _read(drain: OutboxDrain, shard: int) -> list[str]:
    entries, _reclaimed = drain.read_batch(shard)
    return [entry_id for entry_id, _fields in entries]


def test_a_batch_is_acknowledged_without_redis_py_packing_its_ids(db, redis_client, gate, settings, monkeypatch):
    """The drain's XACK of a batch does not go through redis-py's per-argument packer: with the
    client's ``xack`` refusing, a whole drain still persists, acknowledges and trims every entry."""
    turns, billed = _fill(gate, 700)
    shard = gate.shard("w1")
    drain = OutboxDrain(redis_client, settings=settings, consumer="packed")

    def no_py_xack(*args, **kwargs):
        raise AssertionError("XACK went through redis-py's packer")

    monkeypatch.setattr(redis_client, "xack", no_py_xack)
    stats = drain.drain([shard])
    assert (stats.read, stats.inserted) == (700, 700)
    assert redis_client.xpending(outbox_key(shard), GROUP)["pending"] == 0
    assert redis_client.xlen(outbox_key(shard)) == 0
    _assert_exactly_once(db, gate, turns, billed)


def test_xack_returns_the_count_acknowledged_and_twice_acknowledges_nothing(redis_client, gate, settings):
    _fill(gate, 30)
    shard = gate.shard("w1")
    drain = OutboxDrain(redis_client, settings=settings, consumer="count")
    ids = _read(drain, shard)
    assert len(ids) == 30
    stream = outbox_key(shard)
    assert drain._xack(stream, ids[:12]) == 12
    assert redis_client.xpending(stream, GROUP)["pending"] == 18
    assert drain._xack(stream, ids) == 18  # idempotent: the first 12 are not counted again
    assert redis_client.xpending(stream, GROUP)["pending"] == 0


def test_xack_after_a_connection_error_goes_again_through_redis_py(redis_client, gate, settings, monkeypatch):
    """A connection lost under the packed XACK (nothing, or everything, acknowledged): the same
    XACK again through redis-py, which acknowledges what is left and nothing twice."""
    _fill(gate, 20)
    shard = gate.shard("w1")
    drain = OutboxDrain(redis_client, settings=settings, consumer="lost")
    ids = _read(drain, shard)
    sent = []

    def lost(client, commands, sent_list, on_reply):
        sent.extend(commands)
        raise redis_lib.ConnectionError("Connection reset by peer")

    monkeypatch.setattr(drain_module, "send_packed", lost)
    assert drain._xack(outbox_key(shard), ids) == 20
    assert len(sent) == 1 and sent[0][0].startswith(b"*23\r\n$4\r\nXACK\r\n")  # XACK stream group + 20 ids
    assert redis_client.xpending(outbox_key(shard), GROUP)["pending"] == 0


def test_xack_refused_by_redis_raises_its_error(redis_client, settings):
    """A refused XACK (here the key holds no stream) raises redis-py's ResponseError, as
    ``redis.xack`` does, so the batch is not taken as acknowledged."""
    drain = OutboxDrain(redis_client, settings=settings, consumer="refused")
    redis_client.set(outbox_key(0), "not a stream")
    with pytest.raises(redis_lib.ResponseError, match="WRONGTYPE"):
        drain._xack(outbox_key(0), ["0-1"])
