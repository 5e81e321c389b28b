"""turn_id idempotency in Redis: the fingerprint of a turn_id in its scope, and the layout the
scripts keep it in (``worker/gate/lua/lib_seen.lua``, whose header is the reference).

A turn_id is remembered by a 13-character fingerprint (78 bits, base64: text, so any client or
``redis-cli`` can read the hashes), the keyed BLAKE2b (``settings.dedupe_key``) of
its scoped id (:func:`worker.gate.keys.scoped_key` of enterprise_id, wallet_id, turn_id), with the
first answer packed beside it (``A<balance>:<cost>[:<billed>]``, about 20-30 bytes) in small
listpack-encoded hashes per shard, time bucket (width ``dedupe_ttl_s``) and address (linear hashing
on the fingerprint's first 30 bits, about 40-80 fingerprints per hash).  Whole buckets expire
(EXPIREAT, no per-field TTL); a lookup reads the current bucket and the previous one, so a turn_id
is remembered for ``dedupe_ttl_s`` to twice that.  Measured: about 50 B of Redis per remembered
turn_id (``benchmarks.bench_pipeline``, ``redis_bytes_per_remembered_turn``, 100,000 turns) against
168 B for the string key per turn it replaces.

Collision odds: two different scoped turn_ids of one shard collide when their 78-bit fingerprints
are equal; a new turn then gets the other turn's answer and is neither billed nor queued.  With N
turn_ids remembered in a shard's two buckets the chance for one new turn is about N / 2^78: at
10,000 turns/s and a 48 h window read twice over (N ≤ 3.5 × 10^9, all shards counted), about
1.2 × 10^-14 per turn, one such turn in about 250 years at that rate.  The key keeps clients from
choosing colliding ids on purpose.
"""

from __future__ import annotations

import functools
from binascii import b2a_base64
from hashlib import blake2b

#: characters of a fingerprint (a hash field of lib_seen.lua): 13 base64 characters, 78 bits
FINGERPRINT_CHARS = 13


@functools.lru_cache(maxsize=8)
def _keyed(key: bytes):
    """A BLAKE2b state (10-byte digest) keyed with ``key``, copied per fingerprint: keying costs a
    block compression, a copy does not."""
    return blake2b(digest_size=10, key=key)


def fingerprint(key: bytes, enterprise_id: str, wallet_id: str, turn_id: str) -> bytes:
    """The 13-character (ASCII, base64) fingerprint of a turn_id in its (enterprise_id, wallet_id)
    scope, keyed with ``key`` (``settings.dedupe_key`` encoded): the first 78 bits of the keyed
    BLAKE2b of ``worker.gate.keys.scoped_key(enterprise_id, wallet_id, turn_id)`` (written out here:
    this runs once per turn).  Every gate (sync and asyncio) passes it as the scripts' fingerprint
    argument."""
    h = _keyed(key).copy()
    h.update(
        f"{len(enterprise_id)}:{enterprise_id}:{len(wallet_id)}:{wallet_id}:{turn_id}".encode("utf-8", "surrogatepass")
    )
    return b2a_base64(h.digest(), newline=False)[:FINGERPRINT_CHARS]
