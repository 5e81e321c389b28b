"""compact usage rows: a 16-byte turn key, token counts as INTEGER, deduplicated indexes

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05 22:00:00

Issue 16 (target 4): PostgreSQL ≤ 400 B per persisted turn.  After the drain benchmark's 50,000
rows a turn cost 783 B: ``usage_event`` heap 373, its five indexes 220, ``usage_turn_key`` 186.

``usage_turn_key``
    keyed by ``turn_key``, a UUID holding the first 16 bytes of SHA-256 of the length-prefixed
    scope and turn_id (``<n>:<enterprise_id>:<m>:<wallet_id>:<turn_id>``, UTF-8, ``n`` and ``m``
    the ids' lengths in characters: the gate's fingerprint input), computed by the SQL function
    ``usage_turn_key_of(enterprise_id, wallet_id, turn_id)`` created here (and by
    ``models.turn.turn_key_digest`` in Python) instead of three text columns and their index;
    ``recorded_at`` becomes ``recorded_on`` (its UTC date: retention compares it with the first
    day of a month, so nothing changes).  Each key keeps its ``outbox_id`` and ``occurred_at``.
``usage_event``
    ``ix_usage_event_turn_id`` dropped (a turn is found through its key's ``occurred_at``, or by
    wallet); ``(wallet_id, occurred_at)`` and ``(enterprise_id, workflow, occurred_at)`` become
    ``(wallet_id)`` and ``(enterprise_id, workflow)``, whose equal keys B-tree deduplication stores
    once per page (a month is a partition, so ``occurred_at`` mostly prunes partitions), with a
    BRIN index on ``occurred_at`` for ranges inside a month; ``recorded_at`` (never read) dropped;
    token counts (≤ 10^9 by ``TurnIn``) become INTEGER; the columns are ordered 8-byte first, then
    4-byte, then the rest, so rows carry no alignment padding.  The table is rebuilt with the same
    partitions (months, DEFAULT, isolated apps' sub-partitions in their schemas, same names and
    bounds) and every row copied into it, in the migration's one transaction.

Downgrade restores the previous schema with every row: a key's three text columns come back from
its usage event (a key whose event is gone, e.g. a late turn's after retention, comes back as
``('', '', <turn_key>)``, a key that matches no turn, as migration 0012 did for its orphans);
``recorded_at`` comes back as the key's date at midnight UTC, and ``usage_event.recorded_at`` as
the time of the downgrade (it was never read).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None

#: the token counts that become INTEGER (each ≤ 10^9, see models.turn.Tokens)
_TOKENS = (
    "prompt_tokens",
    "completion_tokens",
    "cached_prompt_tokens",
    "duration_ms",
    "trial_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
)

#: models.turn.turn_key_digest in SQL: STABLE (convert_to is), so PostgreSQL inlines it
_FUNCTION = """
CREATE OR REPLACE FUNCTION usage_turn_key_of(enterprise_id text, wallet_id text, turn_id text) RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE AS $$
  SELECT CAST(encode(substr(sha256(convert_to(
    length($1) || ':' || $1 || ':' || length($2) || ':' || $2 || ':' || $3, 'UTF8')), 1, 16), 'hex') AS uuid)
$$"""


def upgrade() -> None:
    op.execute(_FUNCTION)
    # usage_turn_key: a new table filled from the old one (the key is computed, nothing is lost)
    op.execute("ALTER TABLE usage_turn_key RENAME TO usage_turn_key_0016")
    op.execute("ALTER TABLE usage_turn_key_0016 RENAME CONSTRAINT usage_turn_key_pkey TO usage_turn_key_0016_pkey")
    op.execute(
        "CREATE TABLE usage_turn_key (turn_key uuid NOT NULL, occurred_at timestamp with time zone NOT NULL, "
        "recorded_on date DEFAULT (now() AT TIME ZONE 'UTC')::date NOT NULL, outbox_id varchar(60) NOT NULL, "
        "CONSTRAINT usage_turn_key_pkey PRIMARY KEY (turn_key))"
    )
    # a collision of two keys (never expected: see models.turn.turn_key_digest) fails the upgrade
    op.execute(
        "INSERT INTO usage_turn_key (turn_key, occurred_at, recorded_on, outbox_id) "
        "SELECT usage_turn_key_of(enterprise_id, wallet_id, turn_id), occurred_at, "
        "(recorded_at AT TIME ZONE 'UTC')::date, outbox_id FROM usage_turn_key_0016"
    )
    op.execute("DROP TABLE usage_turn_key_0016")
    _rebuild_usage_event()


#: usage_event's columns, 8-byte ones first, then 4-byte, then the boolean and the texts: no
#: alignment padding between them (22 B a row less than 0016's order in the drain benchmark)
_COLUMNS = """
    id bigint DEFAULT nextval('usage_event_id_seq'::regclass) NOT NULL,
    occurred_at timestamp with time zone NOT NULL,
    input_nanos_per_mtok bigint NOT NULL,
    cached_input_nanos_per_mtok bigint NOT NULL,
    output_nanos_per_mtok bigint NOT NULL,
    cache_write_nanos_per_mtok bigint DEFAULT 0 NOT NULL,
    cache_write_1h_nanos_per_mtok bigint DEFAULT 0 NOT NULL,
    cost_nanos bigint NOT NULL,
    billed_nanos bigint NOT NULL,
    balance_after_nanos bigint,
    creator_share_nanos bigint DEFAULT 0 NOT NULL,
    platform_fee_nanos bigint DEFAULT 0 NOT NULL,
    debt_nanos bigint DEFAULT 0 NOT NULL,
    quantity bigint DEFAULT 0 NOT NULL,
    prompt_tokens integer NOT NULL,
    completion_tokens integer NOT NULL,
    cached_prompt_tokens integer NOT NULL,
    duration_ms integer NOT NULL,
    trial_tokens integer DEFAULT 0 NOT NULL,
    cache_write_tokens integer DEFAULT 0 NOT NULL,
    cache_write_1h_tokens integer DEFAULT 0 NOT NULL,
    billable boolean DEFAULT true NOT NULL,
    turn_id varchar(300) NOT NULL,
    outbox_id varchar(60) NOT NULL,
    wallet_id varchar(200) NOT NULL,
    enterprise_id varchar(200) NOT NULL,
    chat_id varchar(200) NOT NULL,
    workflow varchar(200) NOT NULL,
    agent varchar(200) NOT NULL,
    model varchar(200) NOT NULL,
    provider varchar(100) NOT NULL,
    mode varchar(20) NOT NULL,
    action varchar(10) NOT NULL,
    level varchar(20) DEFAULT 'app_usage' NOT NULL,
    billing_target varchar(200) DEFAULT 'platform' NOT NULL,
    meter varchar(50) DEFAULT 'llm' NOT NULL,
    service_tier varchar(32)"""

_NEW_INDEXES = {
    "ix_usage_event_wallet": "(wallet_id)",
    "ix_usage_event_enterprise_workflow": "(enterprise_id, workflow)",
    "ix_usage_event_enterprise_chat": "(enterprise_id, chat_id)",
    "ix_usage_event_occurred_brin": "USING brin (occurred_at)",
}


def _children(bind, parent: str) -> list[tuple[str, str, str, str]]:
    """``(schema, name, bound, relkind)`` of each partition of ``parent`` (a regclass text)."""
    return [
        tuple(r)
        for r in bind.execute(
            sa.text(
                "SELECT n.nspname, c.relname, pg_get_expr(c.relpartbound, c.oid), c.relkind FROM pg_inherits i "
                "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE i.inhparent = CAST(:p AS regclass) ORDER BY n.nspname, c.relname"
            ),
            {"p": parent},
        )
    ]


def _rebuild_usage_event() -> None:
    """usage_event again, its columns in :data:`_COLUMNS` order: the same partitions (months, DEFAULT,
    isolated apps' LIST sub-partitions in their schemas, same names and bounds) created under
    ``*_0017`` names, the rows copied (PostgreSQL routes each to the same partition), the old tree
    dropped, the new one renamed, then its primary key and indexes built."""
    bind = op.get_bind()
    tree = []  # (schema, name, bound, parent) in creation order
    for schema, name, bound, kind in _children(bind, "public.usage_event"):
        tree.append((schema, name, bound, "usage_event", kind))
        if kind == "p":
            for sub_schema, sub, sub_bound, _k in _children(bind, f'"{schema}"."{name}"'):
                tree.append((sub_schema, sub, sub_bound, name, "r"))
    op.execute(f"CREATE TABLE usage_event_0017 ({_COLUMNS}) PARTITION BY RANGE (occurred_at)")
    for schema, name, bound, parent, kind in tree:
        split = " PARTITION BY LIST (enterprise_id)" if kind == "p" else ""
        op.execute(f'CREATE TABLE "{schema}"."{name}_0017" PARTITION OF "public"."{parent}_0017" {bound}{split}')
    names = [c.split()[0] for c in _COLUMNS.strip().split(",\n")]
    cols = ", ".join(names)
    op.execute(f"INSERT INTO usage_event_0017 ({cols}) SELECT {cols} FROM usage_event")
    op.execute("ALTER SEQUENCE usage_event_id_seq OWNED BY NONE")
    op.execute("DROP TABLE usage_event")
    op.execute("ALTER TABLE usage_event_0017 RENAME TO usage_event")
    for schema, name, _bound, _parent, _kind in tree:
        op.execute(f'ALTER TABLE "{schema}"."{name}_0017" RENAME TO "{name}"')
    op.execute("ALTER SEQUENCE usage_event_id_seq OWNED BY usage_event.id")
    op.execute("ALTER TABLE usage_event ADD CONSTRAINT usage_event_pkey PRIMARY KEY (id, occurred_at, enterprise_id)")
    for index, spec in _NEW_INDEXES.items():
        op.execute(f"CREATE INDEX {index} ON usage_event {spec}")


def downgrade() -> None:
    for name in ("ix_usage_event_wallet", "ix_usage_event_enterprise_workflow", "ix_usage_event_occurred_brin"):
        op.execute(f"DROP INDEX {name}")
    op.execute(
        "ALTER TABLE usage_event ADD COLUMN recorded_at timestamp with time zone DEFAULT now() NOT NULL, "
        + ", ".join(f"ALTER COLUMN {c} TYPE bigint" for c in _TOKENS)
    )  # the columns stay in 0017's order: readers name them
    op.execute("CREATE INDEX ix_usage_event_wallet_occurred ON usage_event (wallet_id, occurred_at)")
    op.execute(
        "CREATE INDEX ix_usage_event_enterprise_workflow_occurred ON usage_event (enterprise_id, workflow, occurred_at)"
    )
    op.execute("CREATE INDEX ix_usage_event_turn_id ON usage_event (turn_id)")
    op.execute("ALTER TABLE usage_turn_key RENAME TO usage_turn_key_0017")
    op.execute("ALTER TABLE usage_turn_key_0017 RENAME CONSTRAINT usage_turn_key_pkey TO usage_turn_key_0017_pkey")
    op.execute(
        "CREATE TABLE usage_turn_key (turn_id varchar(300) NOT NULL, outbox_id varchar(60) NOT NULL, "
        "occurred_at timestamp with time zone NOT NULL, "
        "recorded_at timestamp with time zone DEFAULT now() NOT NULL, "
        "enterprise_id varchar(200) NOT NULL, wallet_id varchar(200) NOT NULL, "
        "CONSTRAINT usage_turn_key_pkey PRIMARY KEY (enterprise_id, wallet_id, turn_id))"
    )
    # each key's ids from its usage event (same key, same occurred_at: the row the drain wrote with
    # it; one hash join over usage_event)
    op.execute(
        "INSERT INTO usage_turn_key (enterprise_id, wallet_id, turn_id, outbox_id, occurred_at, recorded_at) "
        "SELECT coalesce(e.enterprise_id, ''), coalesce(e.wallet_id, ''), coalesce(e.turn_id, k.turn_key::text), "
        "k.outbox_id, k.occurred_at, k.recorded_on::timestamp AT TIME ZONE 'UTC' "
        "FROM usage_turn_key_0017 k LEFT JOIN usage_event e ON e.occurred_at = k.occurred_at "
        "AND usage_turn_key_of(e.enterprise_id, e.wallet_id, e.turn_id) = k.turn_key"
    )
    op.execute("DROP TABLE usage_turn_key_0017")
    op.execute("DROP FUNCTION usage_turn_key_of(text, text, text)")
