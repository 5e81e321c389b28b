"""usage rows of about 200 B: a price dictionary, one-byte codes, the outbox id only in the turn key

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06 01:00:00

Issue 16 (target 4): PostgreSQL ≤ 400 B per persisted turn.  After 0017 a turn of the drain
benchmark cost 525 B: ``usage_event`` heap 315, its indexes 80, ``usage_turn_key`` 122, ledger 8.

``usage_price``
    one row per distinct (model, provider, service_tier, the five per-Mtok prices) a turn was
    charged at, ``id`` an INTEGER; ``service_tier`` is ``''`` for the standard tier (NULL in
    ``usage_event``), so the tuple is unique with a plain UNIQUE constraint.  Rows are only added
    (get-or-create: ``INSERT … ON CONFLICT DO NOTHING``), never changed: history keeps its prices.
``usage_row``
    the table the turns are stored in, partitioned as ``usage_event`` was (months, DEFAULT, isolated
    apps' LIST sub-partitions in their schemas, same partition names and bounds): ``price_id``
    instead of the eight price columns, ``mode``, ``action``, ``level`` and ``meter`` as ``"char"``
    codes (``models.usage_codes.CODES``), no ``outbox_id`` (``usage_turn_key`` keeps it: the entry
    the turn was persisted from), and no primary key (PostgreSQL can only have one containing every
    partition key, here ``(id, occurred_at, enterprise_id)``: 50 B a row); ``id`` (from
    ``usage_event_id_seq``, unique by construction, never written otherwise) gets a plain B-tree
    index for the page cursor instead.  Other indexes as 0017's.
``usage_event``
    a view with every column and name it had (same types but varchar lengths, same order), so every
    reader is unchanged: ``usage_row`` LEFT JOIN ``usage_price`` on its id and LEFT JOIN
    ``usage_turn_key`` on the turn's key (both unique, so PostgreSQL removes a join whose columns a
    query does not read), the codes decoded.  INSTEAD OF INSERT / DELETE triggers make it writable
    as a table was (tests, seeds, tools; the drain writes ``usage_row`` directly): an insert
    gets-or-creates its price row, takes an id from the sequence unless given one, and adds the
    turn's key with its ``outbox_id`` unless the key exists (``ON CONFLICT DO NOTHING``: then the
    key's outbox id is the one shown); a delete removes the row and leaves the key (the turn stays
    known, as after retention).

The upgrade adds the turn key of any event without one (none is expected: the drain writes both in
one statement), so no outbox id is lost.  Downgrade restores 0018's table with every row (outbox
ids from the turn keys, ``''`` for an event without a key) and 0017's primary key and indexes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

#: frozen copy of models.usage_codes.CODES at this revision (a test checks they agree)
CODES = {
    "mode": {"production": "p", "development": "d", "trial": "t", "track_only": "o"},
    "action": {"continue": "c", "pause": "p"},
    "level": {"platform": "p", "app_usage": "a"},
    "meter": {"llm": "l", "emails": "e", "storage_gb_month": "s", "function_calls": "f"},
}
#: the price tuple, in usage_price's column order
PRICE = (
    "model",
    "provider",
    "service_tier",
    "input_nanos_per_mtok",
    "cached_input_nanos_per_mtok",
    "output_nanos_per_mtok",
    "cache_write_nanos_per_mtok",
    "cache_write_1h_nanos_per_mtok",
)

#: usage_row's columns: 8-byte, 4-byte, 1-byte, then texts (no alignment padding)
_ROW_COLUMNS = """
    id bigint DEFAULT nextval('usage_event_id_seq'::regclass) NOT NULL,
    occurred_at timestamp with time zone NOT NULL,
    cost_nanos bigint NOT NULL,
    billed_nanos bigint NOT NULL,
    balance_after_nanos bigint,
    creator_share_nanos bigint NOT NULL,
    platform_fee_nanos bigint NOT NULL,
    debt_nanos bigint NOT NULL,
    quantity bigint NOT NULL,
    prompt_tokens integer NOT NULL,
    completion_tokens integer NOT NULL,
    cached_prompt_tokens integer NOT NULL,
    duration_ms integer NOT NULL,
    trial_tokens integer NOT NULL,
    cache_write_tokens integer NOT NULL,
    cache_write_1h_tokens integer NOT NULL,
    price_id integer NOT NULL,
    mode "char" NOT NULL,
    action "char" NOT NULL,
    level "char" NOT NULL,
    meter "char" NOT NULL,
    billable boolean NOT NULL,
    turn_id varchar(300) NOT NULL,
    wallet_id varchar(200) NOT NULL,
    enterprise_id varchar(200) NOT NULL,
    chat_id varchar(200) NOT NULL,
    workflow varchar(200) NOT NULL,
    agent varchar(200) NOT NULL,
    billing_target varchar(200) NOT NULL"""
ROW = tuple(c.split()[0] for c in _ROW_COLUMNS.strip().split(",\n"))

#: usage_event's columns in 0017's order (the view's), with their 0018 types and defaults
_EVENT_COLUMNS = """
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
EVENT = tuple(c.split()[0] for c in _EVENT_COLUMNS.strip().split(",\n"))
#: the view's column defaults (what the table had), for inserts through it
_VIEW_DEFAULTS = {
    c.split()[0]: c.split(" DEFAULT ")[1].split(" NOT NULL")[0]
    for c in _EVENT_COLUMNS.strip().split(",\n")
    if " DEFAULT " in c
}

_INDEXES = {
    "ix_usage_row_id": "(id)",
    "ix_usage_event_wallet": "(wallet_id)",
    "ix_usage_event_enterprise_workflow": "(enterprise_id, workflow)",
    "ix_usage_event_enterprise_chat": "(enterprise_id, chat_id)",
    "ix_usage_event_occurred_brin": "USING brin (occurred_at)",
}


def encode(column: str, expr: str) -> str:
    cases = " ".join(f"WHEN '{v}' THEN '{c}'" for v, c in CODES[column].items())
    return f'CAST(CASE {expr} {cases} END AS "char")'


def decode(column: str, expr: str, length: int) -> str:
    cases = " ".join(f"WHEN '{c}' THEN '{v}'" for v, c in CODES[column].items())
    return f"CAST(CASE {expr} {cases} END AS varchar({length}))"


#: a usage_event row (``src`` a relation or NEW with its columns, ``price`` an id expression) as
#: usage_row's values, in ROW order
def _row_values(src: str, price: str) -> str:
    out = []
    for c in ROW:
        if c == "price_id":
            out.append(price)
        elif c in CODES:
            out.append(encode(c, f"{src}.{c}"))
        else:
            out.append(f"{src}.{c}")
    return ", ".join(out)


_LENGTHS = {"mode": 20, "action": 10, "level": 20, "meter": 50}


def _view_sql() -> str:
    cols = []
    for c in EVENT:
        if c == "outbox_id":
            cols.append("CAST(k.outbox_id AS varchar(60)) AS outbox_id")
        elif c == "service_tier":
            cols.append("CAST(NULLIF(p.service_tier, '') AS varchar(32)) AS service_tier")
        elif c in PRICE:
            cols.append(f"p.{c}")
        elif c in CODES:
            cols.append(f"{decode(c, 'r.' + c, _LENGTHS[c])} AS {c}")
        else:
            cols.append(f"r.{c}")
    return (
        f"CREATE VIEW usage_event AS SELECT {', '.join(cols)} FROM usage_row r "
        "LEFT JOIN usage_price p ON p.id = r.price_id "
        "LEFT JOIN usage_turn_key k ON k.turn_key = usage_turn_key_of(r.enterprise_id, r.wallet_id, r.turn_id)"
    )


_PRICE_OF = """
CREATE FUNCTION usage_price_of(p_model text, p_provider text, p_tier text, p_i bigint, p_c bigint,
    p_o bigint, p_cw bigint, p_cw1h bigint) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE found integer;
BEGIN
  SELECT id INTO found FROM usage_price p WHERE p.model = $1 AND p.provider = $2
    AND p.service_tier = coalesce($3, '') AND p.input_nanos_per_mtok = $4 AND p.cached_input_nanos_per_mtok = $5
    AND p.output_nanos_per_mtok = $6 AND p.cache_write_nanos_per_mtok = $7 AND p.cache_write_1h_nanos_per_mtok = $8;
  IF found IS NULL THEN
    INSERT INTO usage_price (model, provider, service_tier, input_nanos_per_mtok, cached_input_nanos_per_mtok,
      output_nanos_per_mtok, cache_write_nanos_per_mtok, cache_write_1h_nanos_per_mtok)
      VALUES ($1, $2, coalesce($3, ''), $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING RETURNING id INTO found;
  END IF;
  IF found IS NULL THEN  -- inserted meanwhile by another transaction, now committed
    SELECT id INTO found FROM usage_price p WHERE p.model = $1 AND p.provider = $2
      AND p.service_tier = coalesce($3, '') AND p.input_nanos_per_mtok = $4 AND p.cached_input_nanos_per_mtok = $5
      AND p.output_nanos_per_mtok = $6 AND p.cache_write_nanos_per_mtok = $7 AND p.cache_write_1h_nanos_per_mtok = $8;
  END IF;
  RETURN found;
END $$"""


def _trigger_sql() -> str:
    price = "usage_price_of(" + ", ".join(f"NEW.{c}" for c in PRICE) + ")"
    return f"""
CREATE FUNCTION usage_event_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    DELETE FROM usage_row WHERE id = OLD.id AND occurred_at = OLD.occurred_at;
    RETURN OLD;
  END IF;
  IF NEW.id IS NULL THEN NEW.id := nextval('usage_event_id_seq'); END IF;
  INSERT INTO usage_row ({", ".join(ROW)}) VALUES ({_row_values("NEW", price)});
  IF NEW.outbox_id IS NOT NULL THEN  -- the turn's key, as the drain writes it, unless it has one
    INSERT INTO usage_turn_key (turn_key, occurred_at, outbox_id)
      VALUES (usage_turn_key_of(NEW.enterprise_id, NEW.wallet_id, NEW.turn_id), NEW.occurred_at, NEW.outbox_id)
      ON CONFLICT (turn_key) DO NOTHING;
  END IF;
  RETURN NEW;
END $$"""


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


def _tree(bind, parent: str) -> list[tuple[str, str, str, str, str]]:
    """``(schema, name, bound, parent, relkind)`` of every partition under ``parent``, parents first."""
    tree = []
    for schema, name, bound, kind in _children(bind, f"public.{parent}"):
        tree.append((schema, name, bound, parent, kind))
        if kind == "p":
            for sub_schema, sub, sub_bound, _k in _children(bind, f'"{schema}"."{name}"'):
                tree.append((sub_schema, sub, sub_bound, name, "r"))
    return tree


def _build(new: str, columns: str, tree, suffix: str) -> None:
    """``new`` partitioned like ``tree`` (partitions named ``<name><suffix>``; parents of
    sub-partitions named by the tree's parent names)."""
    op.execute(f"CREATE TABLE {new} ({columns}) PARTITION BY RANGE (occurred_at)")
    for schema, name, bound, parent, kind in tree:
        split = " PARTITION BY LIST (enterprise_id)" if kind == "p" else ""
        owner = new if parent in ("usage_event", "usage_row") else f'"public"."{parent}{suffix}"'
        op.execute(f'CREATE TABLE "{schema}"."{name}{suffix}" PARTITION OF {owner} {bound}{split}')


def _rename(tree, suffix: str) -> None:
    for schema, name, _bound, _parent, _kind in tree:
        op.execute(f'ALTER TABLE "{schema}"."{name}{suffix}" RENAME TO "{name}"')


def upgrade() -> None:
    bind = op.get_bind()
    op.execute(
        "CREATE TABLE usage_price (id serial NOT NULL, model varchar(200) NOT NULL, provider varchar(100) NOT NULL, "
        "service_tier varchar(32) NOT NULL, input_nanos_per_mtok bigint NOT NULL, "
        "cached_input_nanos_per_mtok bigint NOT NULL, output_nanos_per_mtok bigint NOT NULL, "
        "cache_write_nanos_per_mtok bigint NOT NULL, cache_write_1h_nanos_per_mtok bigint NOT NULL, "
        "CONSTRAINT usage_price_pkey PRIMARY KEY (id), "
        f"CONSTRAINT uq_usage_price UNIQUE ({', '.join(PRICE)}))"
    )
    tier = "coalesce(service_tier, '')"
    cols = ", ".join(tier if c == "service_tier" else c for c in PRICE)
    op.execute(f"INSERT INTO usage_price ({', '.join(PRICE)}) SELECT DISTINCT {cols} FROM usage_event ORDER BY 1, 2, 3")
    # every event's outbox id is kept by its turn key (the drain writes both; a key missing is added)
    op.execute(
        "INSERT INTO usage_turn_key (turn_key, occurred_at, outbox_id) "
        "SELECT usage_turn_key_of(enterprise_id, wallet_id, turn_id), occurred_at, outbox_id FROM usage_event "
        "ON CONFLICT (turn_key) DO NOTHING"
    )
    tree = _tree(bind, "usage_event")
    _build("usage_row", _ROW_COLUMNS, tree, "_0019")
    match = " AND ".join(f"p.{c} = e.{c}" if c != "service_tier" else "p.service_tier = coalesce(e.service_tier, '')" for c in PRICE)
    op.execute(
        f"INSERT INTO usage_row ({', '.join(ROW)}) SELECT {_row_values('e', 'p.id')} "
        f"FROM usage_event e JOIN usage_price p ON {match}"
    )
    op.execute("ALTER SEQUENCE usage_event_id_seq OWNED BY NONE")
    op.execute("DROP TABLE usage_event")
    _rename(tree, "_0019")
    op.execute("ALTER SEQUENCE usage_event_id_seq OWNED BY usage_row.id")
    for index, spec in _INDEXES.items():
        op.execute(f"CREATE INDEX {index} ON usage_row {spec}")
    op.execute(_view_sql())
    for column, default in _VIEW_DEFAULTS.items():
        op.execute(f"ALTER VIEW usage_event ALTER COLUMN {column} SET DEFAULT {default}")
    op.execute(_PRICE_OF)
    op.execute(_trigger_sql())
    op.execute(
        "CREATE TRIGGER usage_event_write INSTEAD OF INSERT OR DELETE ON usage_event "
        "FOR EACH ROW EXECUTE FUNCTION usage_event_write()"
    )


def downgrade() -> None:
    bind = op.get_bind()
    tree = _tree(bind, "usage_row")
    _build("usage_event_0018", _EVENT_COLUMNS, [(s, n, b, "usage_event" if p == "usage_row" else p, k) for s, n, b, p, k in tree], "_0018")
    cols = ", ".join(EVENT)
    values = ", ".join("coalesce(outbox_id, '')" if c == "outbox_id" else c for c in EVENT)
    op.execute(f"INSERT INTO usage_event_0018 ({cols}) SELECT {values} FROM usage_event")
    op.execute("DROP VIEW usage_event")
    op.execute("DROP FUNCTION usage_event_write()")
    op.execute("DROP FUNCTION usage_price_of(text, text, text, bigint, bigint, bigint, bigint, bigint)")
    op.execute("ALTER SEQUENCE usage_event_id_seq OWNED BY NONE")
    op.execute("DROP TABLE usage_row")
    op.execute("DROP TABLE usage_price")
    op.execute("ALTER TABLE usage_event_0018 RENAME TO usage_event")
    _rename(tree, "_0018")
    op.execute("ALTER SEQUENCE usage_event_id_seq OWNED BY usage_event.id")
    op.execute("ALTER TABLE usage_event ADD CONSTRAINT usage_event_pkey PRIMARY KEY (id, occurred_at, enterprise_id)")
    for index, spec in _INDEXES.items():
        if index != "ix_usage_row_id":
            op.execute(f"CREATE INDEX {index} ON usage_event {spec}")
