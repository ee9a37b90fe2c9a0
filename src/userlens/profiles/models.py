"""Catalog, ingestion and profile-store tables. Every row is scoped by (org, sandbox) or by a
sandbox id (sandboxes belong to exactly one org). Times that the AEP API shows in epoch
milliseconds are stored as BigInteger ms, so they round-trip exactly."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from userlens.storage.db import Base


class Dataset(Base):
    __tablename__ = "aep_datasets"

    id: Mapped[str] = mapped_column(String(24), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64))
    sandbox_id: Mapped[str] = mapped_column(String(36))
    name: Mapped[str] = mapped_column(String(512))
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    schema_ref: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    file_description: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    tags: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, doc="other request fields, echoed back")
    behaviour: Mapped[str] = mapped_column(String(16), doc="record | time-series | union")
    profile_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    upsert: Mapped[bool] = mapped_column(Boolean, default=False)
    created_client: Mapped[str] = mapped_column(String(64))
    created_ms: Mapped[int] = mapped_column(BigInteger)
    updated_ms: Mapped[int] = mapped_column(BigInteger)
    version: Mapped[int] = mapped_column(Integer, default=0)
    last_batch_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    last_batch_status: Mapped[str | None] = mapped_column(String(16), nullable=True)

    __table_args__ = (Index("ix_aep_datasets_scope", "sandbox_id", "created_ms"),)


class Batch(Base):
    """A Catalog batch. `status` holds the Catalog word; the ingest job moves it on (see ingest.py)."""

    __tablename__ = "aep_batches"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64))
    sandbox_id: Mapped[str] = mapped_column(String(36))
    dataset_id: Mapped[str] = mapped_column(String(24))
    status: Mapped[str] = mapped_column(String(16), default="loading")
    input_format: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    external_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    tags: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    failure_threshold_pct: Mapped[int] = mapped_column(Integer, default=10)
    job_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    created_client: Mapped[str] = mapped_column(String(64))
    created_ms: Mapped[int] = mapped_column(BigInteger)
    updated_ms: Mapped[int] = mapped_column(BigInteger)
    started_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    completed_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    record_count: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    failed_record_count: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    errors: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Published output: lake part files [{name, key, size, records}] and the attempt whose
    # profile-store rows are visible (rows of any other attempt of this batch are ignored).
    lake_files: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    store_attempt: Mapped[str | None] = mapped_column(String(40), nullable=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    __table_args__ = (Index("ix_aep_batches_scope", "sandbox_id", "created_ms"), Index("ix_aep_batches_dataset", "dataset_id"))


class BatchFile(Base):
    """An uploaded input file, streamed to the internal bucket under the batch's upload prefix."""

    __tablename__ = "aep_batch_files"

    batch_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    key: Mapped[str] = mapped_column(String(1400))
    size: Mapped[int] = mapped_column(BigInteger)
    created_ms: Mapped[int] = mapped_column(BigInteger)


class MergePolicy(Base):
    __tablename__ = "aep_merge_policies"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64))
    sandbox_id: Mapped[str] = mapped_column(String(36))
    name: Mapped[str] = mapped_column(String(256))
    schema_name: Mapped[str] = mapped_column(String(64), default="_xdm.context.profile")
    identity_graph: Mapped[str] = mapped_column(String(16))
    attribute_merge: Mapped[str] = mapped_column(String(32))
    order: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    is_active_on_edge: Mapped[bool] = mapped_column(Boolean, default=False)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    version: Mapped[int] = mapped_column(Integer, default=1)
    update_epoch: Mapped[int] = mapped_column(BigInteger)
    created_ms: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_aep_mp_scope", "sandbox_id", "name"),)


# -- the profile store (design: profiles/store.py) -----------------------------------------------
class Identity(Base):
    """Identity graph: one row per identity ("NS:id") of a sandbox and the XID of its graph."""

    __tablename__ = "aep_identities"

    sandbox_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    ikey: Mapped[str] = mapped_column(String(1100), primary_key=True)
    xid: Mapped[str] = mapped_column(String(40))

    __table_args__ = (Index("ix_aep_identities_xid", "sandbox_id", "xid", "ikey"),)  # covering (migration a003): scans and graph reads by xid


class LakePlanState(Base):
    """Per sandbox: the identity graph's version and the lake export plan built for it
    (``profiles/lakeplan.py``). Every transaction that rewrites the graph (``ProfileStore.graph_lock``)
    adds one to `graph_version`; a plan whose version and load fingerprint are the current ones
    serves exports without reading the graph."""

    __tablename__ = "aep_lake_plans"

    sandbox_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    graph_version: Mapped[int] = mapped_column(BigInteger, default=0)
    current: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True, doc="{prefix, version, loads}: the plan exports use")
    retired: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True, doc="[{prefix, at_ms}]: replaced plans, kept a while for exports still reading them")


class StoreLoad(Base):
    """One attempt of one batch at feeding the profile store (the unit of visibility and deletion).

    Every fragment and event group points at its load by a small integer instead of repeating the
    sandbox, dataset, batch and attempt strings: rows and indexes stay narrow. A load becomes visible
    in the transaction that publishes its batch; rows of a load that is not visible are ignored."""

    __tablename__ = "aep_store_loads"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    sandbox_id: Mapped[str] = mapped_column(String(36))
    dataset_id: Mapped[str] = mapped_column(String(24))
    batch_id: Mapped[str] = mapped_column(String(32))
    attempt: Mapped[str] = mapped_column(String(40))
    behaviour: Mapped[str] = mapped_column(String(16), doc="record | time-series")
    ingest_ms: Mapped[int] = mapped_column(BigInteger)
    lake_prefix: Mapped[str | None] = mapped_column(String(1400), nullable=True, doc="folder of the load's sorted event parts")
    visible: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (Index("ix_aep_store_loads_batch", "batch_id"), Index("ix_aep_store_loads_scope", "sandbox_id", "dataset_id"))


class ProfileFragment(Base):
    """One ingested profile record (append-only; the newest per dataset and identity wins)."""

    __tablename__ = "aep_fragments"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    load_id: Mapped[int] = mapped_column(BigInteger, doc="aep_store_loads.id: sandbox, dataset, batch, attempt")
    pkey: Mapped[str] = mapped_column(String(1100), doc="primary identity NS:id (the fragment key)")
    identities: Mapped[str] = mapped_column(Text, doc="JSON [[ns, id, primary], ...]")
    doc: Mapped[str] = mapped_column(Text, doc="the XDM record as JSON")

    __table_args__ = (Index("ix_aep_fragments_pkey", "pkey"), Index("ix_aep_fragments_load", "load_id"))


class EventGroup(Base):
    """The ExperienceEvents of one primary identity in one load: a run of consecutive rows of one
    Parquet part of the load, sorted by (primary identity, timestamp). The events themselves stay in
    the data lake; `body` holds them inline only for data migrated from the a001 layout."""

    __tablename__ = "aep_event_groups"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    load_id: Mapped[int] = mapped_column(BigInteger)
    pkey: Mapped[str] = mapped_column(String(1100))
    n: Mapped[int] = mapped_column(Integer, doc="number of rows")
    ts_min: Mapped[int] = mapped_column(BigInteger)
    ts_max: Mapped[int] = mapped_column(BigInteger)
    part: Mapped[int | None] = mapped_column(Integer, nullable=True, doc="part number in the load's lake folder")
    row0: Mapped[int] = mapped_column(BigInteger, default=0, doc="first row in the part")
    identities: Mapped[str] = mapped_column(Text, doc="JSON [[ns, id, primary], ...]: every identity of these events")
    body: Mapped[str | None] = mapped_column(Text, nullable=True, doc="JSON [[_id, ts_ms, doc], ...] when not in the lake")

    __table_args__ = (Index("ix_aep_event_groups_pkey", "pkey"), Index("ix_aep_event_groups_load", "load_id"))
