"""aep: compact profile store. Loads (one attempt of one batch, the unit of visibility and deletion),
record fragments keyed by load, and event groups (one per primary identity and load) that point
into the lake's sorted event parts instead of one SQL row per event (see profiles/store.py).

Data of the a001 layout is carried over: every published (batch, attempt) becomes a visible load,
its record fragments keep their documents, and its events become groups that hold them inline
(`body`), since a migration cannot write the lake. Rows of unpublished attempts are dropped (they
were invisible). The downgrade restores the a001 tables with the record fragments and the inline
events; events that live in the lake are not copied back (re-ingest those batches).

Revision ID: a002
Revises: a001
Create Date: 2026-11-22 11:00:00
"""
import json

import sqlalchemy as sa
from alembic import op

revision = "a002"
down_revision = "a001"
branch_labels = None
depends_on = None

BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _create_new_fragments(name: str) -> None:
    op.create_table(
        name,
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("load_id", sa.BigInteger(), nullable=False),
        sa.Column("pkey", sa.String(length=1100), nullable=False),
        sa.Column("identities", sa.Text(), nullable=False),
        sa.Column("doc", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def upgrade() -> None:
    op.create_table(
        "aep_store_loads",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("sandbox_id", sa.String(length=36), nullable=False),
        sa.Column("dataset_id", sa.String(length=24), nullable=False),
        sa.Column("batch_id", sa.String(length=32), nullable=False),
        sa.Column("attempt", sa.String(length=40), nullable=False),
        sa.Column("behaviour", sa.String(length=16), nullable=False),
        sa.Column("ingest_ms", sa.BigInteger(), nullable=False),
        sa.Column("lake_prefix", sa.String(length=1400), nullable=True),
        sa.Column("visible", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("aep_store_loads", schema=None) as batch_op:
        batch_op.create_index("ix_aep_store_loads_batch", ["batch_id"], unique=False)
        batch_op.create_index("ix_aep_store_loads_scope", ["sandbox_id", "dataset_id"], unique=False)
    op.create_table(
        "aep_event_groups",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("load_id", sa.BigInteger(), nullable=False),
        sa.Column("pkey", sa.String(length=1100), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("ts_min", sa.BigInteger(), nullable=False),
        sa.Column("ts_max", sa.BigInteger(), nullable=False),
        sa.Column("part", sa.Integer(), nullable=True),
        sa.Column("row0", sa.BigInteger(), nullable=False),
        sa.Column("identities", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("aep_event_groups", schema=None) as batch_op:
        batch_op.create_index("ix_aep_event_groups_load", ["load_id"], unique=False)
        batch_op.create_index("ix_aep_event_groups_pkey", ["pkey"], unique=False)

    # The a001 fragments table makes way for the new one (index names are global in SQLite).
    with op.batch_alter_table("aep_fragments", schema=None) as batch_op:
        batch_op.drop_index("ix_aep_fragments_pkey")
        batch_op.drop_index("ix_aep_fragments_dataset")
        batch_op.drop_index("ix_aep_fragments_batch")
    op.rename_table("aep_fragments", "aep_fragments_a001")
    _create_new_fragments("aep_fragments")

    bind = op.get_bind()
    published = (
        " JOIN aep_batches b ON b.id = x.batch_id AND b.store_attempt = x.attempt AND b.status = 'success'"
    )
    for table, behaviour in (("aep_fragments_a001", "record"), ("aep_events", "time-series")):
        loads = bind.execute(sa.text(f"SELECT x.sandbox_id, x.dataset_id, x.batch_id, x.attempt, MAX(x.ingest_ms) FROM {table} x{published} GROUP BY x.sandbox_id, x.dataset_id, x.batch_id, x.attempt")).fetchall()
        for sandbox_id, dataset_id, batch_id, attempt, ingest_ms in loads:
            bind.execute(
                sa.text("INSERT INTO aep_store_loads (sandbox_id, dataset_id, batch_id, attempt, behaviour, ingest_ms, lake_prefix, visible) VALUES (:s, :d, :b, :a, :k, :t, NULL, :v)"),
                {"s": sandbox_id, "d": dataset_id, "b": batch_id, "a": attempt, "k": behaviour, "t": ingest_ms, "v": True},
            )
    bind.execute(sa.text(
        "INSERT INTO aep_fragments (load_id, pkey, identities, doc) SELECT l.id, x.pkey, x.identities, x.doc FROM aep_fragments_a001 x"
        " JOIN aep_store_loads l ON l.batch_id = x.batch_id AND l.attempt = x.attempt AND l.behaviour = 'record' ORDER BY x.id"
    ))
    rows = bind.execute(sa.text(
        "SELECT l.id, x.pkey, x.event_id, x.ts_ms, x.doc, x.identities FROM aep_events x"
        " JOIN aep_store_loads l ON l.batch_id = x.batch_id AND l.attempt = x.attempt AND l.behaviour = 'time-series'"
        " ORDER BY l.id, x.pkey, x.ts_ms, x.id"
    )).yield_per(5000)
    group: list = []

    def flush() -> None:
        if not group:
            return
        ids: dict[tuple, list] = {}
        for r in group:
            for item in json.loads(r[5]):
                ids.setdefault((item[0], item[1]), item)
        body = json.dumps([[r[2], r[3], json.loads(r[4])] for r in group])
        bind.execute(
            sa.text("INSERT INTO aep_event_groups (load_id, pkey, n, ts_min, ts_max, part, row0, identities, body) VALUES (:l, :p, :n, :t0, :t1, NULL, 0, :i, :b)"),
            {"l": group[0][0], "p": group[0][1], "n": len(group), "t0": group[0][3], "t1": group[-1][3], "i": json.dumps(list(ids.values())), "b": body},
        )
        group.clear()

    for r in rows:
        if group and (group[0][0], group[0][1]) != (r[0], r[1]):
            flush()
        group.append(tuple(r))
    flush()

    with op.batch_alter_table("aep_fragments", schema=None) as batch_op:
        batch_op.create_index("ix_aep_fragments_load", ["load_id"], unique=False)
        batch_op.create_index("ix_aep_fragments_pkey", ["pkey"], unique=False)
    op.drop_table("aep_fragments_a001")
    with op.batch_alter_table("aep_events", schema=None) as batch_op:
        batch_op.drop_index("ix_aep_events_pkey")
        batch_op.drop_index("ix_aep_events_batch")
    op.drop_table("aep_events")


def downgrade() -> None:
    op.create_table(
        "aep_events",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("sandbox_id", sa.String(length=36), nullable=False),
        sa.Column("dataset_id", sa.String(length=24), nullable=False),
        sa.Column("batch_id", sa.String(length=32), nullable=False),
        sa.Column("attempt", sa.String(length=40), nullable=False),
        sa.Column("event_id", sa.String(length=1024), nullable=False),
        sa.Column("pkey", sa.String(length=1100), nullable=False),
        sa.Column("identities", sa.Text(), nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("doc", sa.Text(), nullable=False),
        sa.Column("ingest_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id", "dataset_id", "sandbox_id", name="uq_aep_events_id"),
    )
    with op.batch_alter_table("aep_events", schema=None) as batch_op:
        batch_op.create_index("ix_aep_events_batch", ["batch_id"], unique=False)
        batch_op.create_index("ix_aep_events_pkey", ["sandbox_id", "pkey", "ts_ms"], unique=False)
    with op.batch_alter_table("aep_fragments", schema=None) as batch_op:
        batch_op.drop_index("ix_aep_fragments_pkey")
        batch_op.drop_index("ix_aep_fragments_load")
    op.rename_table("aep_fragments", "aep_fragments_a002")
    op.create_table(
        "aep_fragments",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("sandbox_id", sa.String(length=36), nullable=False),
        sa.Column("dataset_id", sa.String(length=24), nullable=False),
        sa.Column("batch_id", sa.String(length=32), nullable=False),
        sa.Column("attempt", sa.String(length=40), nullable=False),
        sa.Column("pkey", sa.String(length=1100), nullable=False),
        sa.Column("identities", sa.Text(), nullable=False),
        sa.Column("doc", sa.Text(), nullable=False),
        sa.Column("ingest_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    bind = op.get_bind()
    bind.execute(sa.text(
        "INSERT INTO aep_fragments (sandbox_id, dataset_id, batch_id, attempt, pkey, identities, doc, ingest_ms)"
        " SELECT l.sandbox_id, l.dataset_id, l.batch_id, l.attempt, x.pkey, x.identities, x.doc, l.ingest_ms FROM aep_fragments_a002 x"
        " JOIN aep_store_loads l ON l.id = x.load_id WHERE l.visible ORDER BY x.id"
    ))
    rows = bind.execute(sa.text(
        "SELECT l.sandbox_id, l.dataset_id, l.batch_id, l.attempt, l.ingest_ms, g.pkey, g.identities, g.body FROM aep_event_groups g"
        " JOIN aep_store_loads l ON l.id = g.load_id WHERE l.visible AND g.body IS NOT NULL ORDER BY g.id"
    )).fetchall()
    for sandbox_id, dataset_id, batch_id, attempt, ingest_ms, pkey, identities, body in rows:
        for eid, ts, doc in json.loads(body):
            bind.execute(
                sa.text("INSERT INTO aep_events (sandbox_id, dataset_id, batch_id, attempt, event_id, pkey, identities, ts_ms, doc, ingest_ms) VALUES (:s, :d, :b, :a, :e, :p, :i, :t, :doc, :m)"),
                {"s": sandbox_id, "d": dataset_id, "b": batch_id, "a": attempt, "e": eid, "p": pkey, "i": identities, "t": ts, "doc": json.dumps(doc), "m": ingest_ms},
            )
    op.drop_table("aep_fragments_a002")
    with op.batch_alter_table("aep_fragments", schema=None) as batch_op:
        batch_op.create_index("ix_aep_fragments_batch", ["batch_id"], unique=False)
        batch_op.create_index("ix_aep_fragments_dataset", ["dataset_id"], unique=False)
        batch_op.create_index("ix_aep_fragments_pkey", ["sandbox_id", "pkey"], unique=False)
    with op.batch_alter_table("aep_event_groups", schema=None) as batch_op:
        batch_op.drop_index("ix_aep_event_groups_pkey")
        batch_op.drop_index("ix_aep_event_groups_load")
    op.drop_table("aep_event_groups")
    with op.batch_alter_table("aep_store_loads", schema=None) as batch_op:
        batch_op.drop_index("ix_aep_store_loads_scope")
        batch_op.drop_index("ix_aep_store_loads_batch")
    op.drop_table("aep_store_loads")
