"""Tenancy tables. Every AEP resource row carries (org_id, sandbox_id); nothing crosses them."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from userlens.storage.db import Base, UTCDateTime, utcnow


class Org(Base):
    __tablename__ = "aep_orgs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, doc="e.g. 1BD6382559DF0C130A49422D@AdobeOrg")
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Sandbox(Base):
    __tablename__ = "aep_sandboxes"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64), ForeignKey("aep_orgs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(16), default="production")  # production | development
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("org_id", "name", name="uq_aep_sandbox_name"),)


class ApiClient(Base):
    """Client credentials: client_id doubles as the x-api-key; only a hash of the secret is kept."""

    __tablename__ = "aep_clients"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64), ForeignKey("aep_orgs.id", ondelete="CASCADE"))
    secret_hash: Mapped[str] = mapped_column(String(64))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class AccessToken(Base):
    """An issued bearer token (only its SHA-256 is stored) and when it expires."""

    __tablename__ = "aep_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64), ForeignKey("aep_clients.client_id", ondelete="CASCADE"))
    org_id: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_aep_tokens_expires", "expires_at"),)
