"""NCLUE resources of the user-understanding domain."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, declared_attr, mapped_column, relationship

from userlens.jobs.models import Job
from userlens.storage.db import Base, UTCDateTime, utcnow


class NclueResource:
    """Columns every NCLUE resource has: a name unique in its account and the job that makes it."""

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    @declared_attr
    def account_id(cls) -> Mapped[str]:
        return mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)

    @declared_attr
    def job_id(cls) -> Mapped[str]:
        return mapped_column(ForeignKey("jobs.id"), unique=True)

    @declared_attr
    def job(cls) -> Mapped[Job]:
        return relationship(Job, lazy="joined", innerjoin=True)

    @declared_attr.directive
    def __table_args__(cls):
        return (UniqueConstraint("account_id", "name", name=f"uq_{cls.__tablename__}_account_name"),)


class Feature(NclueResource, Base):
    """A Feature set: one vector per user of a sequence dataset, made by one model version."""

    __tablename__ = "features"

    source_bucket: Mapped[str] = mapped_column(String(63))
    source_file_path: Mapped[str] = mapped_column(String(1024))
    model_name: Mapped[str] = mapped_column(String(64))
    dim: Mapped[int | None] = mapped_column(Integer, nullable=True)
    user_count: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    token_count: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    disk_usage: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Folder (in the internal bucket) of the published vectors: set only when the job completes.
    vectors_prefix: Mapped[str | None] = mapped_column(String(512), nullable=True)


class Task(NclueResource, Base):
    """A Task model: a binary classifier trained on a Feature's vectors and 0/1 answers."""

    __tablename__ = "tasks"

    # Inputs are referenced by id and name as they were at creation: a Feature may be deleted
    # once the Task is done with it, and the Task keeps reporting where it came from.
    train_feature_id: Mapped[str] = mapped_column(String(36), index=True)
    train_feature_name: Mapped[str] = mapped_column(String(100))
    train_bucket: Mapped[str] = mapped_column(String(63))
    train_file_path: Mapped[str] = mapped_column(String(1024))
    test_feature_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    test_feature_name: Mapped[str | None] = mapped_column(String(100), nullable=True)
    test_bucket: Mapped[str | None] = mapped_column(String(63), nullable=True)
    test_file_path: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    model_name: Mapped[str] = mapped_column(String(64))
    disk_usage: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    performance: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # The published classifier (in the internal bucket): set only when the job completes.
    artifact_key: Mapped[str | None] = mapped_column(String(512), nullable=True)


class TaskRun(NclueResource, Base):
    """A Run: every user of a Feature scored by a Task, written as a TSV to the customer's bucket."""

    __tablename__ = "task_runs"

    task_id: Mapped[str] = mapped_column(String(36), index=True)
    task_name: Mapped[str] = mapped_column(String(100))
    feature_id: Mapped[str] = mapped_column(String(36), index=True)
    feature_name: Mapped[str] = mapped_column(String(100))
    result_bucket: Mapped[str] = mapped_column(String(63))
    result_file_path: Mapped[str] = mapped_column(String(1024), doc="The final object key (naming rule applied).")
    line_count: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class CustomAttributes(NclueResource, Base):
    """A Custom Attributes profile: every user of a Feature scored against keywords (AND)."""

    __tablename__ = "custom_attributes"

    feature_id: Mapped[str] = mapped_column(String(36), index=True)
    feature_name: Mapped[str] = mapped_column(String(100))
    keywords: Mapped[list] = mapped_column(JSON)
    result_bucket: Mapped[str] = mapped_column(String(63))
    result_file_path: Mapped[str] = mapped_column(String(1024))
    line_count: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class ShoppingIntent(NclueResource, Base):
    """A Shopping Intent profile: who in the reference panel resembles a Task's target group."""

    __tablename__ = "shopping_intents"

    task_id: Mapped[str] = mapped_column(String(36), index=True)
    task_name: Mapped[str] = mapped_column(String(100))
    model_name: Mapped[str] = mapped_column(String(64))
    # The panel chosen at creation (the newest of the Task's model then), kept by id and name.
    panel_id: Mapped[str] = mapped_column(String(36), index=True)
    panel_name: Mapped[str] = mapped_column(String(100))
    line_count: Mapped[int | None] = mapped_column(BigInteger, nullable=True, doc="Panel users scored.")
    disk_usage: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # The report as JSON (for GET and the console) and the TSV's key in the internal bucket:
    # both set only when the job completes.
    result: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    result_key: Mapped[str | None] = mapped_column(String(512), nullable=True)


class ReferencePanel(Base):
    """A reference panel: users with vectors of one model, demographics and shopping interests.

    Global (operator-provided, not per account) and immutable once imported; the newest panel of
    a model is the one new Shopping Intent profiles use."""

    __tablename__ = "nclue_panels"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    model_name: Mapped[str] = mapped_column(String(64))
    builtin: Mapped[bool] = mapped_column(Boolean, default=False)
    source_bucket: Mapped[str] = mapped_column(String(63))
    sequences_path: Mapped[str] = mapped_column(String(1024))
    attributes_path: Mapped[str] = mapped_column(String(1024))
    dim: Mapped[int] = mapped_column(Integer)
    user_count: Mapped[int] = mapped_column(BigInteger)
    part_count: Mapped[int] = mapped_column(Integer)
    # The value lists the stored attribute codes index: {"gender": [...], "age_group": [...], "interest": [...]}.
    categories: Mapped[dict] = mapped_column(JSON)
    prefix: Mapped[str] = mapped_column(String(512), doc="Folder of the panel's data in the internal bucket.")
    disk_usage: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_nclue_panels_model_created", "model_name", "created_at"),)


# Resources whose data counts against the account's internal storage quota (disk_usage).
STORED_MODELS = [Feature, Task, ShoppingIntent]
