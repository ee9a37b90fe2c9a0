"""NCLUE resources of the user-understanding domain."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from userlens.jobs.models import Job
from userlens.storage.db import Base, UTCDateTime, utcnow


class Feature(Base):
    """A Feature set: one vector per user of a sequence dataset, made by one model version."""

    __tablename__ = "features"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)
    source_bucket: Mapped[str] = mapped_column(String(63))
    source_file_path: Mapped[str] = mapped_column(String(1024))
    model_name: Mapped[str] = mapped_column(String(64))
    dim: Mapped[int | None] = mapped_column(Integer, nullable=True)
    user_count: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    token_count: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    disk_usage: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Folder (in the internal bucket) of the published vectors: set only when the job completes.
    vectors_prefix: Mapped[str | None] = mapped_column(String(512), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    job: Mapped[Job] = relationship(lazy="joined", innerjoin=True)

    __table_args__ = (UniqueConstraint("account_id", "name", name="uq_features_account_name"),)
