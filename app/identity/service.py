"""Create, find, authenticate, change and erase users.

Functions here flush but never commit: the caller (a request handler or a command) owns the
transaction, so a change and its audit event commit together or not at all.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from app.identity.errors import ConflictError, InvalidValueError
from app.identity.identifiers import generate_erid, normalize_login, validate_erid
from app.identity.passwords import PasswordHasher
from app.identity.schemas import Address, ProfilePatch, UserCreate, UserRead
from app.models import IssuedIdentifier, User, UserAddress, UserAttribute
from app.models.user import ADDRESS_FIELDS, PERSONAL_COLUMNS
from app.ops.metrics import count_login_outcomes

# Constraint names from the migrations, mapped to the API field they protect.
_UNIQUE_FIELDS = {
    "uq_users_login_normalized": "login",
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
                "(passlib or Django format), sha256-crypt, sha512-crypt or salted SHA-1/SHA-256 "
                "({SSHA}, {SSHA256}, sha1$salt$hex, sha256$salt$hex)",
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
    """Internal result of a login check; callers give unknown logins and wrong passwords
    one identical answer, and keep the distinction for audit records only."""

    SUCCESS = "success"
    UNKNOWN_LOGIN = "unknown_login"
    WRONG_PASSWORD = "wrong_password"  # noqa: S105 (a login outcome, not a password)
    DISABLED = "disabled"


@dataclass(frozen=True, slots=True)
class LoginResult:
    outcome: LoginOutcome
    user: User | None = None


@count_login_outcomes
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
    # Ends the read, so the pooled connection is free while argon2id runs. The caller has
    # nothing pending here, and the session keeps the loaded user after a commit.
    await session.commit()
    result = await hasher.verify(password, stored_hash)
    if user is None:
        return LoginResult(LoginOutcome.UNKNOWN_LOGIN)
    if not result.valid:
        return LoginResult(LoginOutcome.WRONG_PASSWORD, user)
    if result.replacement_hash is not None:
        await replace_outdated_hash(session, user.id, stored_hash, result.replacement_hash)
    if user.status != "active":
        return LoginResult(LoginOutcome.DISABLED, user)
    return LoginResult(LoginOutcome.SUCCESS, user)


async def replace_outdated_hash(
    session: AsyncSession, user_id: int, old_hash: str | None, new_hash: str
) -> None:
    """Store `new_hash` in place of `old_hash`, unless the hash changed since it was read."""
    await session.execute(
        update(User)
        .where(User.id == user_id, User.password_hash == old_hash)
        .values(password_hash=new_hash)
    )


async def erase_user(session: AsyncSession, user: User) -> None:
    """Remove a user's personal data; `user_key` and ERID stay, reserved for ever."""
    values: dict[str, Any] = dict.fromkeys(PERSONAL_COLUMNS)
    values.update(status="erased", erased_at=func.now(), password_changed_at=None)
    # `session.expire(user)` below reloads the collections, so the session need not track which
    # loaded rows these statements remove.
    for model in (UserAddress, UserAttribute):
        await session.execute(
            delete(model)
            .where(model.user_id == user.id)
            .execution_options(synchronize_session=False)
        )
    await session.execute(update(User).where(User.id == user.id).values(**values))
    session.expire(user)


# Changes made by admins and by Digital River callbacks. Each function takes a user locked with
# `lock_user`, so that concurrent changes to one user run one after the other. Each one flushes
# and leaves the commit to the caller.


async def lock_user(session: AsyncSession, user_key: uuid.UUID) -> User | None:
    """Return the user with `user_key`, read fresh and locked FOR UPDATE, or None."""
    query = (
        user_query()
        .where(User.user_key == user_key)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.execute(query)).scalar_one_or_none()


async def reload_user(session: AsyncSession, user_key: uuid.UUID) -> User:
    """Return the user read again from the database, replacing any state the session holds."""
    query = user_query().where(User.user_key == user_key).execution_options(populate_existing=True)
    user: User = (await session.execute(query)).scalar_one()
    return user


def ensure_not_erased(user: User) -> None:
    """Raise ConflictError (`user_erased`) if the user is erased; erased users never change."""
    if user.status == "erased":
        raise ConflictError(
            f"user {user.user_key} has been erased and cannot change", code="user_erased"
        )


_PROFILE_COLUMNS = ("email", "first_name", "last_name", "locale", "home_phone")


def _patch_address(user: User, kind: str, patch: Address | None) -> list[str]:
    """Merge `patch` into the user's address of `kind`; return the changed field names."""
    field = f"{kind}_address"
    current = address_of(user, kind)
    if patch is None:
        if current is None:
            return []
        user.addresses.remove(current)
        return [field]
    sent = patch.model_dump(include=patch.model_fields_set)
    if current is None:
        if all(value is None for value in sent.values()):
            return []
        user.addresses.append(_address_row(kind, patch))
        return [f"{field}.{name}" for name in ADDRESS_FIELDS if sent.get(name) is not None]
    changed = []
    for name, value in sent.items():
        if getattr(current, name) != value:
            setattr(current, name, value)
            changed.append(f"{field}.{name}")
    return changed


def _patch_attributes(user: User, patch: dict[str, str | None]) -> list[str]:
    current = {attribute.name: attribute for attribute in user.attributes}
    changed = []
    for name, value in patch.items():
        existing = current.get(name)
        if value is None:
            if existing is not None:
                user.attributes.remove(existing)
                changed.append(f"attributes.{name}")
        elif existing is None:
            user.attributes.append(UserAttribute(name=name, value=value))
            changed.append(f"attributes.{name}")
        elif existing.value != value:
            existing.value = value
            changed.append(f"attributes.{name}")
    return changed


def _apply_profile_patch(user: User, patch: ProfilePatch) -> list[str]:
    sent = patch.model_fields_set
    changed: list[str] = []
    if "login" in sent and patch.login is not None and patch.login != user.login:
        user.login_normalized = normalize_login(patch.login)
        user.login = patch.login
        changed.append("login")
    for name in _PROFILE_COLUMNS:
        value = getattr(patch, name)
        if name in sent and getattr(user, name) != value:
            setattr(user, name, value)
            changed.append(name)
    for kind in ("shipping", "billing"):
        if f"{kind}_address" in sent:
            changed.extend(_patch_address(user, kind, getattr(patch, f"{kind}_address")))
    if "attributes" in sent and patch.attributes:
        changed.extend(_patch_attributes(user, patch.attributes))
    return changed


async def update_profile(session: AsyncSession, user: User, patch: ProfilePatch) -> list[str]:
    """Apply `patch` (JSON merge patch meaning) to a locked user; return the changed fields.

    Returns an empty list, and writes nothing, when the patch changes no value. Otherwise the
    users row is updated too, so its `version` (the ETag) changes even when only an address
    or attribute did. Raises ConflictError (`user_erased`) for an erased user and
    ConflictError naming `login` when the new login belongs to another user.
    """
    ensure_not_erased(user)
    erid = user.external_reference_id  # read now: a rolled-back savepoint expires `user`
    try:
        # The savepoint opens before any attribute changes: `begin_nested` flushes pending
        # changes first, and a conflict must roll back only this change.
        async with session.begin_nested():
            changed = _apply_profile_patch(user, patch)
            if changed:
                # Touch the row even when only addresses or attributes changed: the update
                # trigger then bumps `version` and `updated_at`.
                user.updated_at = func.now()
                await session.flush()
    except IntegrityError as exc:
        raise await _conflict_from(session, exc, erid) from None
    return changed


async def set_status(session: AsyncSession, user: User, status: str) -> bool:
    """Set a locked user's status to `active` or `disabled`; return False if it already was."""
    if status not in ("active", "disabled"):
        raise InvalidValueError("status must be active or disabled", field="status")
    ensure_not_erased(user)
    if user.status == status:
        return False
    user.status = status
    await session.flush()
    return True


async def set_password(
    session: AsyncSession, hasher: PasswordHasher, user: User, password: str
) -> None:
    """Check `password` against the length policy, then store its argon2id hash."""
    ensure_not_erased(user)
    hasher.check_policy(password)
    user.password_hash = await hasher.hash(password)
    user.password_changed_at = func.now()
    await session.flush()

