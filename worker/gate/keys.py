"""The one key map: every ``tollgate:`` Redis key and prefix of the project is built here.

The gate's own keys (per outbox shard, hash-tagged so one script's keys share a Redis Cluster slot)
are listed in :mod:`worker.gate.gate`.  Ids may contain ':', so every part of a composed key but the
last is written with its length first (:func:`scoped_key`).  This module imports nothing of ours, so
any layer may name a key through it.
"""

from __future__ import annotations

import zlib

PREFIX = "tollgate"


SHARDS_KEY = f"{PREFIX}:config:outbox_shards"


def scoped_key(*parts: str) -> str:
    """Parts of a key joined without ambiguity: every part but the last as ``<len>:<part>:``, the
    last as it is (so a key is still a prefix of the keys whose last part extends it).  Ids may
    contain ':'; ``scoped_key('app:x:u1', 't') != scoped_key('app:x', 'u1:t')``."""
    return "".join(f"{len(p)}:{p}:" for p in parts[:-1]) + parts[-1]


def turn_key(tag: str, enterprise_id: str, wallet_id: str, turn_id: str) -> str:
    """The key of a turn_id's first answer in shard ``tag`` as gates before ``worker.gate.dedupe``
    wrote it (still read, never written).  The idempotency scope is the
    (enterprise_id, wallet_id) pair: a turn_id is unique per payer wallet within an app, the same
    scope as PostgreSQL's ``usage_turn_key``.  ``<tag>:turn:`` then :func:`scoped_key` of the three
    ids, written out here (the gate builds one per turn; a generator join costs five times more)."""
    return f"{tag}:turn:{len(enterprise_id)}:{enterprise_id}:{len(wallet_id)}:{wallet_id}:{turn_id}"


def reservation_key(tag: str, reservation_id: str) -> str:
    """The hash of a reservation in shard ``tag`` (wallet, amount, expires_ms).  Stored as
    ``<tag>:hold:<reservation_id>``: the name Redis and the Lua scripts have always used, kept so
    live reservations stay readable."""
    return f"{tag}:hold:{reservation_id}"


def reservation_expiry_key(tag: str) -> str:
    """The sorted set of shard ``tag``'s reservation ids by expiry (Unix ms), which the beat job
    sweeps; a wallet's ``held`` field sums their amounts.  Stored as ``<tag>:holds`` (see
    :func:`reservation_key`)."""
    return f"{tag}:holds"


def shard_of(wallet_id: str, shards: int) -> int:
    """The outbox shard of a wallet: ``crc32(wallet_id) % shards``."""
    return zlib.crc32(wallet_id.encode()) % shards


def shard_tag(shard: int) -> str:
    """Key prefix of one shard, hash tag included: ``tollgate:{s3}``."""
    return f"{PREFIX}:{{s{shard}}}"


def outbox_key(shard: int) -> str:
    """The outbox stream of one shard."""
    return f"{shard_tag(shard)}:outbox"


def transitions_key(shard: int) -> str:
    """The count of chat transitions (pauses, resumes) decided on one shard: orders those that no
    turn separates (``worker.ledger.turns.transition_position``)."""
    return f"{shard_tag(shard)}:transitions"


def kick_key(shard: int) -> str:
    """The drain-kick flag of one shard."""
    return f"{shard_tag(shard)}:kick"


def deadletter_key(shard: int) -> str:
    """The Redis copy of one shard's dead letters (a stream): ``tollgate:{sN}:deadletter``."""
    return f"{shard_tag(shard)}:deadletter"


# --- keys outside the shards (not hash-tagged) ---

#: set while any drain loop runs (``SET … PX``, renewed with the kick flags by
#: :meth:`worker.ledger.drain.DrainLoop.hold_kicks`): a drain task stands aside while it is there
DRAIN_LOOP_KEY = f"{PREFIX}:drain-loop"
#: drain counters (hash; :mod:`worker.metrics`)
DRAIN_METRICS_KEY = f"{PREFIX}:metrics:drain"
#: gate decisions by outcome (accepted, denied, duplicate), counted by every process that decides
DECISION_METRICS_KEY = f"{PREFIX}:metrics:decisions"
#: the API's gate latency histogram (tollgate_gate_seconds), added to by every web process
GATE_LATENCY_METRICS_KEY = f"{PREFIX}:metrics:gate_seconds"
#: celery-redbeat's schedule and lock (:mod:`worker.celery_app`)
REDBEAT_PREFIX = f"{PREFIX}:redbeat:"
#: app events pub/sub: ``tollgate:events:<enterprise_id>`` (:mod:`worker.events`)
EVENTS_CHANNEL_PREFIX = f"{PREFIX}:events:"
#: web sessions of the /billing page: ``tollgate:websession:<sha256 of id>`` (:mod:`worker.access.web_sessions`)
WEB_SESSION_PREFIX = f"{PREFIX}:websession:"
#: the session digests of one API key: ``tollgate:websessions:key:<prefix>``
KEY_SESSIONS_PREFIX = f"{PREFIX}:websessions:key:"
#: per-key API rate-limit windows (``limits`` storage prefix; :mod:`api_stub.deps`)
RATE_LIMIT_PREFIX = f"{PREFIX}:ratelimit"


def revoked_marker(prefix: str) -> str:
    """The key that says API key ``prefix`` was revoked: ``tollgate:apikey:revoked:<prefix>``."""
    return f"{PREFIX}:apikey:revoked:{prefix}"


def pausing_key(enterprise_id: str, chat_id: str) -> str:
    """The flag that one pause of a chat is already on its way:
    ``tollgate:pausing:<len>:<enterprise>:<chat>`` (:func:`scoped_key`: ids may contain ':', and
    app ``a:b``'s chat ``c`` is not app ``a``'s chat ``b:c``, whose flag would have held back its
    pause for a minute)."""
    return f"{PREFIX}:pausing:{scoped_key(enterprise_id, chat_id)}"


# --- ledger idempotency keys (``wallet_transaction.idempotency_key``), mirrored by the gate as its
# credit/adjust markers; no client key may start with RESERVED_KEY_PREFIX ---

RESERVED_KEY_PREFIX = f"{PREFIX}:"
#: a Stripe payment's credit: ``stripe:<Checkout session id>`` or ``stripe:<invoice id>``
STRIPE_KEY_PREFIX = "stripe:"
#: every prefix of a key tollgate writes itself: a credit from an API or CLI caller may not start with
#: one (it would pose as that source on statements, or take the key of a payment still to come)
SYSTEM_KEY_PREFIXES = (RESERVED_KEY_PREFIX, STRIPE_KEY_PREFIX)
ALLOWANCE_PREFIX = f"{PREFIX}:allowance:"
ALLOWANCE_EXPIRY_PREFIX = f"{PREFIX}:allowance-expiry:"
ALLOWANCE_RESTORE_PREFIX = f"{PREFIX}:allowance-restore:"
FLAT_FEE_PREFIX = f"{PREFIX}:flat-fee:"
DEADLETTER_CHARGE_PREFIX = f"{PREFIX}:deadletter:"
DEADLETTER_SETTLED_PREFIX = f"{PREFIX}:deadletter-retried:"
DEADLETTER_REFUND_PREFIX = f"{PREFIX}:deadletter-refund:"
#: the refund of a turn the gate accepted twice: ``tollgate:refund:<outbox id>``
REFUND_PREFIX = f"{PREFIX}:refund:"
#: ledger entries named after the first outbox entry of a usage batch: ``tollgate:usage:<first entry>``
USAGE_PREFIX = f"{PREFIX}:usage:"
