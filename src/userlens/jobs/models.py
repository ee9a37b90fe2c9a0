"""The Job row: the one record of every asynchronous operation's state."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import JSON, Boolean, Float, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from userlens.storage.db import Base, UTCDateTime, utcnow


class JobStatus(str, enum.Enum):
    """Engine states. API families map them to their own words (NCLUE uses these as they are)."""

    REGISTERED = "registered"  # accepted; not yet queued (deleting the resource now cancels it)
    PENDING = "pending"  # queued, waiting for a worker (or for its concurrency slot)
    IN_PROGRESS = "in_progress"  # claimed by a worker holding a live lease
    COMPLETED = "completed"  # output published
    FAILED = "failed"  # fail_message holds the reason code
    CANCELLED = "cancelled"  # cancelled before or while running


TERMINAL = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
ACTIVE = (JobStatus.REGISTERED, JobStatus.PENDING, JobStatus.IN_PROGRESS)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(128), doc="Tenant the job belongs to, e.g. 'nclue:<account>'.")
    # Jobs sharing a concurrency key run one at a time, oldest first (NCLUE: Tasks of an account).
    concurrency_key: Mapped[str | None] = mapped_column(String(160), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.REGISTERED.value)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    checkpoint: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_owner: Mapped[str | None] = mapped_column(String(80), nullable=True)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    not_before: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)

    progress: Mapped[float | None] = mapped_column(Float, nullable=True)
    progress_message: Mapped[str | None] = mapped_column(String(200), nullable=True)
    fail_message: Mapped[str | None] = mapped_column(String(64), nullable=True)
    fail_detail: Mapped[str | None] = mapped_column(Text, nullable=True)

    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        Index("ix_jobs_status_created", "status", "created_at"),
        Index("ix_jobs_concurrency", "concurrency_key", "status"),
        Index("ix_jobs_scope_kind", "scope", "kind"),
    )

    @property
    def terminal(self) -> bool:
        return self.status in {s.value for s in TERMINAL}
