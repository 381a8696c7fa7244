"""Create, find, authenticate, change and erase users.

Functions here flush but never commit: the caller (a request handler or a command) owns the
transaction, so a change and its audit event commit together or not at all.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from app.identity.errors import ConflictError, InvalidValueError
from app.identity.identifiers import generate_erid, normalize_login, validate_erid
from app.identity.passwords import PasswordHasher
from app.identity.schemas import Address, UserCreate, UserRead
from app.models import IssuedIdentifier, User, UserAddress, UserAttribute
from app.models.user import ADDRESS_FIELDS, PERSONAL_COLUMNS

# Constraint names from the migrations, mapped to the API field they protect.
_UNIQUE_FIELDS = {
    "uq_users_login_normalized": "login",
    "uq_users_external_reference_id": "external_reference_id",
    "uq_users_external_reference_id_lower": "external_reference_id",
    "uq_issued_identifiers_external_reference_id_lower": "external_reference_id",
    "uq_users_user_key": "user_key",
    "pk_issued_identifiers": "user_key",
}


def constraint_name(exc: IntegrityError) -> str | None:
    """Return the name of the PostgreSQL constraint behind `exc`, from asyncpg's error."""
    cause = getattr(exc.orig, "__cause__", None)
    return getattr(cause, "constraint_name", None)


def user_query() -> Any:
    return select(User).options(selectinload(User.addresses), selectinload(User.attributes))


async def find_user(
    session: AsyncSession,
    *,
    user_key: uuid.UUID | None = None,
    external_reference_id: str | None = None,
    login: str | None = None,
    for_update: bool = False,
) -> User | None:
    """Return the user matching exactly one of the given identifiers, or None.

    ERIDs match case-insensitively, as the unique index does, and logins match after
    normalisation. An invalid login or ERID matches no user.
    """
    query = user_query()
    if user_key is not None:
        query = query.where(User.user_key == user_key)
    elif external_reference_id is not None:
        query = query.where(
            func.lower(User.external_reference_id) == external_reference_id.lower()
        )
    elif login is not None:
        try:
            normalized = normalize_login(login)
        except InvalidValueError:
            return None
        query = query.where(User.login_normalized == normalized)
    else:
        raise ValueError("find_user needs user_key, external_reference_id or login")
    if for_update:
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


def address_of(user: User, kind: str) -> UserAddress | None:
    return next((address for address in user.addresses if address.kind == kind), None)


def to_read_model(user: User) -> UserRead:
    shipping = address_of(user, "shipping")
    billing = address_of(user, "billing")
    return UserRead(
        user_key=user.user_key,
        external_reference_id=user.external_reference_id,
        login=user.login,
        status=user.status,
        email=user.email,
        first_name=user.first_name,
        last_name=user.last_name,
        locale=user.locale,
        home_phone=user.home_phone,
        shipping_address=Address.model_validate(shipping) if shipping else None,
        billing_address=Address.model_validate(billing) if billing else None,
        attributes={attribute.name: attribute.value for attribute in user.attributes},
        has_password=user.password_hash is not None,
        created_at=user.created_at,
        updated_at=user.updated_at,
        erased_at=user.erased_at,
        version=user.version,
    )


def _address_row(kind: str, address: Address) -> UserAddress:
    return UserAddress(kind=kind, **address.model_dump(include=set(ADDRESS_FIELDS)))


async def create_user(
    session: AsyncSession,
    hasher: PasswordHasher,
    data: UserCreate,
    *,
    created_via: str,
) -> User:
    """Insert a user and return it with its addresses and attributes loaded.

    Raises InvalidValueError for a bad login, ERID, password or hash, and ConflictError naming
    the field when the login or ERID is taken, or the ERID was issued before and is reserved.
    """
    normalized = normalize_login(data.login)
    erid = validate_erid(data.external_reference_id) if data.external_reference_id else None
    if data.password is not None and data.password_hash is not None:
        raise InvalidValueError(
            "give either password or password_hash, not both", field="password_hash"
        )
    password_hash: str | None = None
    if data.password is not None:
        hasher.check_policy(data.password)
        password_hash = await hasher.hash(data.password)
    elif data.password_hash is not None:
        if not hasher.is_supported_hash(data.password_hash):
            raise InvalidValueError(
                "password_hash is not in a supported scheme: use argon2, bcrypt, PBKDF2 "
                "(passlib or Django format), sha256-crypt or sha512-crypt",
                field="password_hash",
            )
        password_hash = data.password_hash

    user = User(
        external_reference_id=erid or generate_erid(),
        login=data.login,
        login_normalized=normalized,
        email=data.email,
        first_name=data.first_name,
        last_name=data.last_name,
        locale=data.locale,
        home_phone=data.home_phone,
        status=data.status,
        password_hash=password_hash,
        password_changed_at=func.now() if password_hash else None,
        created_via=created_via,
        addresses=[],
        attributes=[],
    )
    if data.shipping_address is not None:
        user.addresses.append(_address_row("shipping", data.shipping_address))
    if data.billing_address is not None:
        user.addresses.append(_address_row("billing", data.billing_address))
    for name, value in (data.attributes or {}).items():
        user.attributes.append(UserAttribute(name=name, value=value))

    try:
        async with session.begin_nested():
            session.add(user)
            await session.flush()
    except IntegrityError as exc:
        raise await _conflict_from(session, exc, user.external_reference_id) from None
    await session.refresh(user, ["password_changed_at"])
    return user


async def _conflict_from(session: AsyncSession, exc: IntegrityError, erid: str) -> Exception:
    name = constraint_name(exc)
    field = _UNIQUE_FIELDS.get(name or "")
    if field is None:
        return exc
    if field == "login":
        return ConflictError("login is already taken by another user", field="login")
    if field == "external_reference_id" and await is_identifier_reserved(session, erid):
        return ConflictError(
            "external_reference_id was issued to a user who has been erased and stays "
            "reserved: choose another",
            field="external_reference_id",
            code="identifier_reserved",
        )
    return ConflictError(
        f"{field} is already used by another user (ERIDs are compared case-insensitively)",
        field=field,
    )


async def is_identifier_reserved(session: AsyncSession, erid: str) -> bool:
    """Return True if `erid` was issued but no longer belongs to a live user."""
    issued = await session.scalar(
        select(IssuedIdentifier.user_key).where(
            func.lower(IssuedIdentifier.external_reference_id) == erid.lower()
        )
    )
    if issued is None:
        return False
    status = await session.scalar(select(User.status).where(User.user_key == issued))
    return status in (None, "erased")


class LoginOutcome(enum.Enum):
    SUCCESS = "success"
    INVALID = "invalid_credentials"
    DISABLED = "disabled"


@dataclass(frozen=True, slots=True)
class LoginResult:
    outcome: LoginOutcome
    user: User | None = None


async def authenticate(
    session: AsyncSession, hasher: PasswordHasher, login: str, password: str
) -> LoginResult:
    """Check a login and password.

    An unknown login costs the same argon2id work as a wrong password, and a disabled user is
    reported as disabled only after the correct password. A correct password stored in an old
    scheme is re-hashed to argon2id in the caller's transaction.
    """
    user = await find_user(session, login=login)
    stored_hash = user.password_hash if user is not None else None
    result = await hasher.verify(password, stored_hash)
    if user is None or not result.valid:
        return LoginResult(LoginOutcome.INVALID)
    if result.replacement_hash is not None:
        await session.execute(
            update(User)
            .where(User.id == user.id, User.password_hash == stored_hash)
            .values(password_hash=result.replacement_hash)
        )
    if user.status != "active":
        return LoginResult(LoginOutcome.DISABLED, user)
    return LoginResult(LoginOutcome.SUCCESS, user)


async def erase_user(session: AsyncSession, user: User) -> None:
    """Remove a user's personal data; `user_key` and ERID stay, reserved for ever."""
    values: dict[str, Any] = dict.fromkeys(PERSONAL_COLUMNS)
    values.update(status="erased", erased_at=func.now(), password_changed_at=None)
    await session.execute(
        UserAddress.__table__.delete().where(UserAddress.user_id == user.id)
    )
    await session.execute(
        UserAttribute.__table__.delete().where(UserAttribute.user_id == user.id)
    )
    await session.execute(update(User).where(User.id == user.id).values(**values))
    session.expire(user)
