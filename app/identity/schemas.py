"""Validated input and output shapes of a user, shared by the admin API, the CLI and imports."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Literal

import pycountry
from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from app.identity.identifiers import ERID_RE

LOCALE_RE = re.compile(r"[a-z]{2}_[A-Z]{2}")
ATTRIBUTE_NAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def _check_email(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        # Syntax only: a user store must not depend on DNS answers to accept an address.
        validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"invalid email address: {exc}") from None
    return value


def _check_locale(value: str | None) -> str | None:
    if value is not None and not LOCALE_RE.fullmatch(value):
        raise ValueError("locale must look like en_US: two lower-case letters, _, two upper-case")
    return value


def _check_country(value: str | None) -> str | None:
    if value is not None and pycountry.countries.get(alpha_2=value) is None:
        raise ValueError("country must be an ISO 3166-1 alpha-2 code such as US or DE")
    return value


def _check_erid(value: str | None) -> str | None:
    if value is not None and not ERID_RE.fullmatch(value):
        raise ValueError("must be 1 to 64 characters of A-Z, a-z, 0-9 and . _ : @ -")
    return value


def _check_attributes(value: dict[str, str] | None) -> dict[str, str] | None:
    if value is None:
        return None
    for name, item in value.items():
        if not ATTRIBUTE_NAME_RE.fullmatch(name):
            raise ValueError(
                f"attribute name {name!r} must be 1 to 128 characters of A-Z, a-z, 0-9 and _ . : -"
            )
        if len(item) > 4096:
            raise ValueError(f"attribute {name!r} is longer than 4096 characters")
    return value


def _text(max_length: int) -> type[str]:
    return Annotated[str, StringConstraints(min_length=1, max_length=max_length)]  # type: ignore[return-value]


Name = _text(200)
Email = Annotated[str, StringConstraints(max_length=254), AfterValidator(_check_email)]
Locale = Annotated[str, AfterValidator(_check_locale)]
Country = Annotated[str, AfterValidator(_check_country)]
Erid = Annotated[str, AfterValidator(_check_erid)]
Attributes = Annotated[dict[str, str], AfterValidator(_check_attributes)]
UserStatus = Literal["active", "disabled"]


class Address(BaseModel):
    """A postal address in the fields of Digital River's `AddressInfo`."""

    model_config = ConfigDict(extra="forbid", from_attributes=True)

    name1: Name | None = None
    name2: Name | None = None
    company_name: Name | None = None
    line1: Name | None = None
    line2: Name | None = None
    line3: Name | None = None
    city: _text(100) | None = None  # type: ignore[valid-type]
    state: _text(100) | None = None  # type: ignore[valid-type]
    postal_code: _text(32) | None = None  # type: ignore[valid-type]
    country: Country | None = None
    country_name: _text(100) | None = None  # type: ignore[valid-type]
    email: Email | None = None
    phone_number: _text(64) | None = None  # type: ignore[valid-type]


class ProfileFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: Email | None = None
    first_name: Name | None = None
    last_name: Name | None = None
    locale: Locale | None = None
    home_phone: _text(64) | None = None  # type: ignore[valid-type]
    shipping_address: Address | None = None
    billing_address: Address | None = None
    attributes: Attributes | None = None


class UserCreate(ProfileFields):
    """A new user. Give at most one of `password` and `password_hash`."""

    login: _text(256)  # type: ignore[valid-type]
    external_reference_id: Erid | None = Field(
        default=None,
        description="Keep an ERID that Digital River already knows; omitted, one is generated.",
    )
    status: UserStatus = "active"
    password: str | None = Field(default=None, repr=False)
    password_hash: str | None = Field(default=None, repr=False)


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    user_key: uuid.UUID
    external_reference_id: str
    login: str | None
    status: str
    email: str | None
    first_name: str | None
    last_name: str | None
    locale: str | None
    home_phone: str | None
    shipping_address: Address | None
    billing_address: Address | None
    attributes: dict[str, str]
    has_password: bool
    created_at: datetime
    updated_at: datetime
    erased_at: datetime | None
    version: int
