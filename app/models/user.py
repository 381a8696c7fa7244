"""Users, their addresses and extended attributes, and the ledger of issued identifiers."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    FetchedValue,
    ForeignKey,
    Identity,
    Index,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.models.base import Base, created_at_column

UserStatus = Literal["active", "disabled", "erased"]
AddressKind = Literal["shipping", "billing"]

ERID_PATTERN = r"^[A-Za-z0-9._:@-]{1,64}$"

# Columns cleared when a user is erased; a check constraint keeps an erased row empty of them.
PERSONAL_COLUMNS = (
    "login",
    "login_normalized",
    "email",
    "first_name",
    "last_name",
    "locale",
    "home_phone",
    "password_hash",
)

ADDRESS_FIELDS = (
    "name1",
    "name2",
    "company_name",
    "line1",
    "line2",
    "line3",
    "city",
    "state",
    "postal_code",
    "country",
    "country_name",
    "email",
    "phone_number",
)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(f"external_reference_id ~ '{ERID_PATTERN}'", name="erid_format"),
        CheckConstraint("status IN ('active', 'disabled', 'erased')", name="status_known"),
        CheckConstraint(
            "(status = 'erased') = (erased_at IS NOT NULL)", name="erased_at_matches_status"
        ),
        CheckConstraint(
            "status = 'erased' OR (login IS NOT NULL AND login_normalized IS NOT NULL)",
            name="login_present",
        ),
        CheckConstraint(
            "status <> 'erased' OR ("
            + " AND ".join(f"{column} IS NULL" for column in PERSONAL_COLUMNS)
            + ")",
            name="erased_has_no_personal_data",
        ),
        Index(
            "uq_users_external_reference_id_lower",
            func.lower(text("external_reference_id")),
            unique=True,
        ),
        Index("ix_users_created_at_id", "created_at", "id"),
        Index("ix_users_email_lower", func.lower(text("email"))),
        Index("ix_users_last_name_lower", func.lower(text("last_name"))),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    user_key: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), nullable=False, unique=True, server_default=func.gen_random_uuid()
    )
    # Unique through `uq_users_external_reference_id_lower`, which also covers letter case.
    external_reference_id: Mapped[str] = mapped_column(Text, nullable=False)
    login: Mapped[str | None] = mapped_column(Text)
    login_normalized: Mapped[str | None] = mapped_column(Text, unique=True)
    email: Mapped[str | None] = mapped_column(Text)
    first_name: Mapped[str | None] = mapped_column(Text)
    last_name: Mapped[str | None] = mapped_column(Text)
    locale: Mapped[str | None] = mapped_column(Text)
    home_phone: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, nullable=False, server_default="active")
    password_hash: Mapped[str | None] = mapped_column(Text)
    password_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_via: Mapped[str] = mapped_column(Text, nullable=False, server_default="admin")
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True),
        nullable=False,
        server_default=func.now(),
        server_onupdate=FetchedValue(),
    )
    erased_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Bumped by a trigger on every update; the admin API's ETag.
    version: Mapped[int] = mapped_column(
        BigInteger, nullable=False, server_default="1", server_onupdate=FetchedValue()
    )

    addresses: Mapped[list[UserAddress]] = relationship(
        back_populates="user", lazy="raise", cascade="all, delete-orphan", passive_deletes=True
    )
    attributes: Mapped[list[UserAttribute]] = relationship(
        back_populates="user", lazy="raise", cascade="all, delete-orphan", passive_deletes=True
    )

    __mapper_args__ = {"eager_defaults": True}  # noqa: RUF012 (SQLAlchemy's declarative hook)


class UserAddress(Base):
    __tablename__ = "user_addresses"
    __table_args__ = (
        CheckConstraint("kind IN ('shipping', 'billing')", name="kind_known"),
        CheckConstraint("country IS NULL OR country ~ '^[A-Z]{2}$'", name="country_alpha2"),
    )

    user_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(Text, primary_key=True)
    name1: Mapped[str | None] = mapped_column(Text)
    name2: Mapped[str | None] = mapped_column(Text)
    company_name: Mapped[str | None] = mapped_column(Text)
    line1: Mapped[str | None] = mapped_column(Text)
    line2: Mapped[str | None] = mapped_column(Text)
    line3: Mapped[str | None] = mapped_column(Text)
    city: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str | None] = mapped_column(Text)
    postal_code: Mapped[str | None] = mapped_column(Text)
    country: Mapped[str | None] = mapped_column(Text)
    country_name: Mapped[str | None] = mapped_column(Text)
    email: Mapped[str | None] = mapped_column(Text)
    phone_number: Mapped[str | None] = mapped_column(Text)

    user: Mapped[User] = relationship(back_populates="addresses", lazy="raise")


class UserAttribute(Base):
    """A named string attribute, exchanged with Digital River as an `extendedAttributes` item."""

    __tablename__ = "user_attributes"
    __table_args__ = (
        CheckConstraint("char_length(name) BETWEEN 1 AND 128", name="name_length"),
    )

    user_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)

    user: Mapped[User] = relationship(back_populates="attributes", lazy="raise")


class IssuedIdentifier(Base):
    """Append-only ledger of every `userKey` and ERID ever issued.

    A trigger on `users` writes a row here for each new user, and triggers reject any update,
    delete or truncate of this table, so an identifier is never issued twice, even after its
    user is erased or its row removed.
    """

    __tablename__ = "issued_identifiers"
    __table_args__ = (
        Index(
            "uq_issued_identifiers_external_reference_id_lower",
            func.lower(text("external_reference_id")),
            unique=True,
        ),
    )

    user_key: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    external_reference_id: Mapped[str] = mapped_column(Text, nullable=False)
    issued_at: Mapped[datetime] = created_at_column()
