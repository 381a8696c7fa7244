"""Validated input and output shapes of a user, shared by the admin API, the CLI and imports."""

from __future__ import annotations

import functools
import re
import uuid
from datetime import datetime
from typing import Annotated, Literal

import pycountry
from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)
from pydantic.config import JsonDict

from app.identity.identifiers import ERID_RE

LOCALE_RE = re.compile(r"[a-z]{2}_[A-Z]{2}")
ATTRIBUTE_NAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


# The common address shape: an ASCII dot-atom local part and an ASCII host name of two or more
# labels. email_validator spends most of its time on the domain, so for this shape the domain's
# verdict is cached and the local part is checked here; every other address, and every address
# whose domain fails, goes through the full email_validator check.
_SIMPLE_ADDRESS_RE = re.compile(
    r"(?P<local>[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*)"
    r"@(?P<domain>[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+)"
)
_LOCAL_PART_MAX_LENGTH = 64
_ADDRESS_MAX_LENGTH = 254


@functools.lru_cache(maxsize=4096)
def _domain_is_valid(domain: str) -> bool:
    try:
        validate_email(f"a@{domain}", check_deliverability=False)
    except EmailNotValidError:
        return False
    return True


def _check_email(value: str | None) -> str | None:
    if value is None:
        return None
    simple = _SIMPLE_ADDRESS_RE.fullmatch(value)
    if (
        simple is not None
        and len(simple["local"]) <= _LOCAL_PART_MAX_LENGTH
        and len(value) <= _ADDRESS_MAX_LENGTH
        and _domain_is_valid(simple["domain"].lower())
    ):
        return value
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
    # pycountry matches codes case-insensitively, but the column's check constraint and
    # ISO 3166-1 want upper case, so "us" is rejected here rather than by the database.
    if value is not None and (
        not value.isascii() or not value.isupper() or pycountry.countries.get(alpha_2=value) is None
    ):
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
        if "\x00" in item:
            raise ValueError(f"attribute {name!r} contains the NUL character U+0000")
    return value


def _reject_nul(value: str | None) -> str | None:
    # PostgreSQL text cannot hold U+0000, so the database would fail on it with a 500.
    if value is not None and "\x00" in value:
        raise ValueError("must not contain the NUL character U+0000")
    return value


def _text(max_length: int) -> type[str]:
    return Annotated[  # type: ignore[return-value]
        str, StringConstraints(min_length=1, max_length=max_length), AfterValidator(_reject_nul)
    ]


Name = Annotated[
    str, StringConstraints(min_length=1, max_length=200), AfterValidator(_reject_nul)
]
Email = Annotated[str, StringConstraints(max_length=254), AfterValidator(_check_email)]
Locale = Annotated[str, AfterValidator(_check_locale)]
Country = Annotated[str, AfterValidator(_check_country)]
Erid = Annotated[str, AfterValidator(_check_erid)]
Attributes = Annotated[dict[str, str], AfterValidator(_check_attributes)]
UserStatus = Literal["active", "disabled"]


ADDRESS_EXAMPLE: JsonDict = {
    "name1": "Jane Doe",
    "line1": "10380 Bren Road West",
    "city": "Minnetonka",
    "state": "MN",
    "postal_code": "55343",
    "country": "US",
    "phone_number": "+1 952 253 1234",
}

USER_CREATE_EXAMPLE: JsonDict = {
    "login": "jane.doe@example.com",
    "email": "jane.doe@example.com",
    "first_name": "Jane",
    "last_name": "Doe",
    "locale": "en_US",
    "shipping_address": ADDRESS_EXAMPLE,
    "billing_address": ADDRESS_EXAMPLE,
    "attributes": {"loyaltyTier": "gold"},
    "password": "correct horse battery staple",
}

USER_READ_EXAMPLE: JsonDict = {
    "user_key": "3f0e9c55-4b7a-4d39-a2a4-9d1f3c8e5b21",
    "external_reference_id": "D05B4D68-F49D-11DA-8019-88F835DA4C6C",
    "login": "jane.doe@example.com",
    "status": "active",
    "email": "jane.doe@example.com",
    "first_name": "Jane",
    "last_name": "Doe",
    "locale": "en_US",
    "home_phone": None,
    "shipping_address": ADDRESS_EXAMPLE,
    "billing_address": None,
    "attributes": {"loyaltyTier": "gold"},
    "has_password": True,
    "created_at": "2026-12-04T20:00:00.123456Z",
    "updated_at": "2026-12-04T20:05:00.654321Z",
    "erased_at": None,
    "version": 2,
}


class Address(BaseModel):
    """A postal address in the fields of Digital River's `AddressInfo`."""

    model_config = ConfigDict(
        extra="forbid", from_attributes=True, json_schema_extra={"examples": [ADDRESS_EXAMPLE]}
    )

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

    model_config = ConfigDict(json_schema_extra={"examples": [USER_CREATE_EXAMPLE]})

    login: _text(256)  # type: ignore[valid-type]
    external_reference_id: Erid | None = Field(
        default=None,
        description="Keep an ERID that Digital River already knows; omitted, one is generated.",
    )
    status: UserStatus = "active"
    password: str | None = Field(default=None, repr=False)
    password_hash: str | None = Field(default=None, repr=False)


class UserRead(BaseModel):
    model_config = ConfigDict(
        from_attributes=True, json_schema_extra={"examples": [USER_READ_EXAMPLE]}
    )

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


def _check_attribute_patch(value: dict[str, str | None] | None) -> dict[str, str | None] | None:
    if value is None:
        return None
    _check_attributes({name: item for name, item in value.items() if item is not None})
    for name in value:
        if not ATTRIBUTE_NAME_RE.fullmatch(name):
            raise ValueError(
                f"attribute name {name!r} must be 1 to 128 characters of A-Z, a-z, 0-9 and _ . : -"
            )
    return value


AttributePatch = Annotated[dict[str, str | None], AfterValidator(_check_attribute_patch)]


class ProfilePatch(BaseModel):
    """Changes to a user's profile with JSON merge patch (RFC 7396) meaning.

    A field left out stays as it is and a field sent as null is cleared. An address object is
    merged field by field into the stored address (null removes the whole address), and in
    `attributes` a null value removes that attribute. `login` can change but not be removed.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "email": "jane.roe@example.com",
                    "last_name": "Roe",
                    "shipping_address": {"line1": "1 Main Street", "postal_code": "55344"},
                    "billing_address": None,
                    "attributes": {"loyaltyTier": "platinum", "legacyId": None},
                }
            ]
        },
    )

    login: _text(256) | None = None  # type: ignore[valid-type]
    email: Email | None = None
    first_name: Name | None = None
    last_name: Name | None = None
    locale: Locale | None = None
    home_phone: _text(64) | None = None  # type: ignore[valid-type]
    shipping_address: Address | None = None
    billing_address: Address | None = None
    attributes: AttributePatch | None = None

    @field_validator("login")
    @classmethod
    def _login_not_removed(cls, value: str | None) -> str | None:
        if value is None:
            raise ValueError("login cannot be removed: send a new login or leave the field out")
        return value
