"""RemoteCreateUser: register a shopper who signs up during Digital River's checkout.

Every field is checked with the same rules as the admin API (`UserCreate`), and a failure names
the field by its path in the request. DR asks the shopper to retry after a failure it sees, so
a repeat of a registration (same login and same password, for a user that a Create request made
within `SSO_RUM_REGISTRATION_RETRY_WINDOW_SECONDS`) returns success with the same ERID.

Concurrent identical requests in one process wait for the first of them and share its result
when their password is the same, so a burst of duplicates costs one argon2id hash. Across
processes they race on the unique index of normalised logins. PostgreSQL makes the losing
INSERT wait until the winner commits and then fail, so a loser re-reads the user in a new
transaction, where the winner's row is visible, and verifies its password against it.

Error codes of `successful=false` responses:

| code | message | when |
|---|---|---|
| 5 | Email already used | the login is taken and the request is not a repeat (DR's code) |
| 30 | `<field path>: <reason>`, joined with `; ` | one or more fields are invalid |
| 31 | Invalid password: it does not decrypt with the agreed cipher and key | see the message |
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

from pydantic import ValidationError
from sqlalchemy import func, select

from app.identity.errors import ConflictError, InvalidValueError
from app.identity.identifiers import normalize_login
from app.identity.schemas import UserCreate
from app.identity.service import create_user, find_user
from app.models import User
from app.rum import xml
from app.rum.attributes import attributes_to_store, returned_attributes
from app.rum.events import record_event
from app.rum.password_cipher import decrypt_request_password

if TYPE_CHECKING:
    # Imported for annotations only: app.rum.handlers imports this module.
    from app.rum.handlers import CallbackContext

EMAIL_ALREADY_USED: Final = ("5", "Email already used")
INVALID_FIELD_CODE: Final = "30"
PASSWORD_NOT_DECRYPTED: Final = (
    "31",
    "Invalid password: it does not decrypt with the agreed cipher and key",
)

# Path in the request of each `UserCreate` field whose XML name is not its camelCase form.
_REQUEST_PATHS: Final = {
    "login": "userInfo/userKey/loginID",
    "attributes": "extendedAttributes",
    "password": "password",
}


class InvalidRegistrationError(Exception):
    """One or more invalid fields, each as (path in the request, reason)."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{path}: {reason}" for path, reason in errors))
        self.errors = errors


def _camel_case(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def request_path(location: tuple[int | str, ...]) -> str:
    """Return the request path of a `UserCreate` error location, such as
    `userInfo/shippingAddress/postalCode` for `("shipping_address", "postal_code")`."""
    if not location:
        return "userInfo"
    head = str(location[0])
    if head in _REQUEST_PATHS:
        return _REQUEST_PATHS[head]
    parts = ["userInfo", _camel_case(head)]
    parts.extend(_camel_case(str(part)) for part in location[1:])
    return "/".join(parts)


def _address(address: xml.Address | None) -> dict[str, Any] | None:
    """Return the address as `Address` input, or None when it is absent or every field is nil."""
    if address is None:
        return None
    values = {name: value for name, value in dataclasses.asdict(address).items() if value}
    return values or None


def validate_registration(
    context: CallbackContext, message: xml.CreateUserRequest, password: str
) -> UserCreate:
    """Check every field and return the new user without a password.

    Raises:
        InvalidRegistrationError: naming each invalid field once, with its first reason.
    """
    errors: dict[str, str] = {}
    try:
        normalize_login(message.login_id)
    except InvalidValueError as error:
        errors[_REQUEST_PATHS["login"]] = error.message
    try:
        context.hasher.check_policy(password)
    except InvalidValueError as error:
        errors[_REQUEST_PATHS["password"]] = error.message

    data: UserCreate | None = None
    try:
        data = UserCreate(
            login=message.login_id,
            email=message.email,
            first_name=message.first_name,
            last_name=message.last_name,
            locale=message.locale,
            home_phone=message.home_phone,
            shipping_address=_address(message.shipping_address),
            billing_address=_address(message.billing_address),
            attributes=attributes_to_store(message.extended_attributes, context.settings) or None,
        )
    except ValidationError as error:
        for detail in error.errors():
            reason = str(detail.get("msg", "invalid value")).removeprefix("Value error, ")
            errors.setdefault(request_path(tuple(detail.get("loc", ()))), reason)

    if errors or data is None:
        raise InvalidRegistrationError(list(errors.items()))
    return data


async def _is_repeat(context: CallbackContext, user: User, password: str) -> bool:
    """Return True if `user` was registered by a Create request within the retry window and
    `password` is theirs.

    Commits first, so no database connection is held during the argon2id verification.
    """
    window = timedelta(seconds=context.settings.rum_registration_retry_window_seconds)
    now = await context.session.scalar(select(func.now()))
    await context.session.commit()
    eligible = (
        user.created_via == "rum"
        and user.status == "active"
        and user.password_hash is not None
        and now is not None
        and now - user.created_at <= window
    )
    if not eligible:
        return False
    result = await context.hasher.verify(password, user.password_hash)
    return result.valid


@dataclasses.dataclass(frozen=True, slots=True)
class Registered:
    """The user a registration created or repeated, as the response and the event need it."""

    user_key: uuid.UUID
    external_reference_id: str
    login: str
    attributes: tuple[xml.ExtendedAttribute, ...]


def _registered(context: CallbackContext, user: User, login: str) -> Registered:
    return Registered(
        user_key=user.user_key,
        external_reference_id=user.external_reference_id,
        login=user.login or login,
        attributes=returned_attributes(user, context.settings),
    )


@dataclasses.dataclass(slots=True)
class _Flight:
    """A registration in progress in this process, which identical requests wait for."""

    password: str
    result: asyncio.Future[Registered | None]


# Keyed by the application object and the normalised login, so two apps in one process (as in
# tests) never share a result.
_IN_FLIGHT: dict[tuple[int, str], _Flight] = {}


async def _register_once(
    context: CallbackContext, message: xml.CreateUserRequest, password: str, data: UserCreate
) -> tuple[Registered, str | None] | None:
    """Run `_register`, or share the result of an identical registration already running here.

    A request that waits gets the other request's user only when both passwords are equal
    (compared in constant time). Otherwise, or when the other request failed, it goes through
    the database like any request.
    """
    key = (id(context.request.app), normalize_login(message.login_id))
    flight = _IN_FLIGHT.get(key)
    if flight is not None:
        shared = await asyncio.shield(flight.result)
        same_password = hmac.compare_digest(password.encode(), flight.password.encode())
        if shared is not None and same_password:
            return shared, "repeated"
        return await _register(context, message, password, data)

    flight = _Flight(password=password, result=asyncio.get_running_loop().create_future())
    _IN_FLIGHT[key] = flight
    outcome: tuple[Registered, str | None] | None = None
    try:
        outcome = await _register(context, message, password, data)
        return outcome
    finally:
        del _IN_FLIGHT[key]
        # Set even when `_register` raised or was cancelled, so waiting requests go on.
        flight.result.set_result(None if outcome is None else outcome[0])


async def _register(
    context: CallbackContext, message: xml.CreateUserRequest, password: str, data: UserCreate
) -> tuple[Registered, str | None] | None:
    """Create the user, or find the registration this request repeats.

    Returns the user and the event reason (None for a new user, "repeated" for a repeat), or
    None when the login belongs to someone else.
    """
    session = context.session
    existing = await find_user(session, login=message.login_id)
    if existing is not None:
        if await _is_repeat(context, existing, password):
            return _registered(context, existing, message.login_id), "repeated"
        return None

    # No connection is held while hashing: the look-up's transaction ends here.
    await session.commit()
    password_hash = await context.hasher.hash(password)
    try:
        user = await create_user(
            session,
            context.hasher,
            data.model_copy(update={"password_hash": password_hash}),
            created_via="rum",
        )
    except ConflictError as conflict:
        if conflict.field != "login":
            raise
        # A concurrent request committed this login first. Its row is visible to a new
        # transaction, because PostgreSQL let this INSERT fail only after that commit.
        await session.rollback()
        winner = await find_user(session, login=message.login_id)
        if winner is not None and await _is_repeat(context, winner, password):
            return _registered(context, winner, message.login_id), "repeated"
        return None
    return _registered(context, user, message.login_id), None


async def handle_create_user(context: CallbackContext, message: xml.CreateUserRequest) -> bytes:
    """Register a shopper and return the response with the new ERID, or the repeated one's."""
    site_id = context.site_id(message.site_id)
    user: Registered | None = None
    outcome = "failure"
    reason: str | None

    password = decrypt_request_password(context.settings, message.password, "CreateUserRequest")
    if password is None:
        body = xml.render_create_failure(*PASSWORD_NOT_DECRYPTED)
        reason = "decryption_failed"
    else:
        try:
            data = validate_registration(context, message, password)
        except InvalidRegistrationError as invalid:
            body = xml.render_create_failure(INVALID_FIELD_CODE, str(invalid))
            reason = "invalid_value"
        else:
            registered = await _register_once(context, message, password, data)
            if registered is None:
                body = xml.render_create_failure(*EMAIL_ALREADY_USED)
                reason = "login_taken"
            else:
                user, reason = registered
                outcome = "success"
                body = xml.render_create_success(
                    user.login, user.external_reference_id, site_id, user.attributes
                )

    record_event(
        context.session,
        context.request,
        kind="registration",
        outcome=outcome,
        reason=reason,
        user_key=user.user_key if user is not None else None,
        external_reference_id=user.external_reference_id if user is not None else None,
        site_id=site_id,
    )
    await context.session.commit()
    return body
