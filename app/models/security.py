"""Shared state for brute-force protection and the audit log of callback outcomes."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, DateTime, Identity, Index, Integer, Text, func
from sqlalchemy.dialects.postgresql import INET, UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base


class ThrottleCounter(Base):
    """Failure count and lockout of one account or one source address.

    Kept in PostgreSQL so that every replica of the service sees the same counts.
    """

    __tablename__ = "throttle_counters"
    __table_args__ = (CheckConstraint("scope IN ('account', 'address')", name="scope_known"),)

    scope: Mapped[str] = mapped_column(Text, primary_key=True)
    subject: Mapped[str] = mapped_column(Text, primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    window_started_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    lockouts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )


class LoginEvent(Base):
    """The outcome of one Digital River callback; never holds a password or token."""

    __tablename__ = "login_events"
    __table_args__ = (
        Index("ix_login_events_occurred_at", "occurred_at"),
        Index("ix_login_events_user_key_id", "user_key", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    kind: Mapped[str] = mapped_column(Text, nullable=False)
    outcome: Mapped[str] = mapped_column(Text, nullable=False)
    reason: Mapped[str | None] = mapped_column(Text)
    user_key: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    external_reference_id: Mapped[str | None] = mapped_column(Text)
    source_address: Mapped[str | None] = mapped_column(INET)
    site_id: Mapped[str | None] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(Text)
