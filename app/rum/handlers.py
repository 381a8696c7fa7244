"""Handle each Digital River callback from the user store.

Error codes in `successful=false` answers (DR publishes only code 5; the others are this
service's, documented in docs/callbacks.md):

| code | message | when |
|---|---|---|
| 5 | Invalid login | unknown login, wrong password, locked account (one body for all) |
| 6 | User not active | a disabled user, told only after the correct password |
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.identity.errors import InvalidValueError
from app.identity.identifiers import ERID_RE, normalize_login
from app.identity.passwords import PasswordHasher
from app.identity.service import LoginOutcome, authenticate, replace_outdated_hash
from app.ops.metrics import record_login
from app.rum import xml
from app.rum.attributes import returned_attributes
from app.rum.events import record_event, request_id_of, source_address_of
from app.rum.login_check import LoginStart, begin_login, finish_login
from app.rum.password_cipher import decrypt_request_password
from app.rum.profile_fetch import fetch_profile
from app.rum.registration import handle_create_user
from app.rum.session_validation import handle_session_validation
from app.security.login_guard import (
    SourceThrottledError,
    account_locked,
    close_login_gate,
    open_login_gate,
    verify_rejected_login,
)
from app.security.throttle import account_subject, address_policy
from app.settings import Settings

INVALID_LOGIN = ("5", "Invalid login")
USER_NOT_ACTIVE = ("6", "User not active")
PROFILE_NOT_FOUND = "User not found"
PROFILE_NOT_ACTIVE = "User not active"


class CallbackContext:
    """The request, settings, password hasher and database session that a handler works with.

    The session is created on first use and closed by `close`, so a handler that works on the
    driver connection alone (the profile fetch) pays for no session.
    """

    __slots__ = ("_session", "_sessionmaker", "hasher", "request", "settings")

    def __init__(
        self,
        request: Request,
        settings: Settings,
        hasher: PasswordHasher,
        sessionmaker: Callable[[], AsyncSession],
    ) -> None:
        self.request = request
        self.settings = settings
        self.hasher = hasher
        self._sessionmaker = sessionmaker
        self._session: AsyncSession | None = None

    @property
    def session(self) -> AsyncSession:
        if self._session is None:
            self._session = self._sessionmaker()
        return self._session

    async def rollback(self) -> None:
        if self._session is not None:
            await self._session.rollback()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def site_id(self, requested: str | None) -> str | None:
        """Echo the request's siteID, or the configured one when DR sent none."""
        return requested or self.settings.dr_site_id


Handler = Callable[[CallbackContext, Any], Awaitable[bytes]]


async def handle_login(context: CallbackContext, message: xml.LoginRequest) -> bytes:
    """Authenticate a shopper; unknown login and wrong password get one identical answer.

    With source-address throttling on, the ORM path in `_handle_login_in_session` runs. Without
    it (the default) the login makes two statements on the driver connection, one before and
    one after the password check, and keeps no connection while argon2id runs.
    """
    if address_policy(context.settings).enabled:
        return await _handle_login_in_session(context, message)
    return await _handle_login_on_driver(context, message)


async def _handle_login_on_driver(context: CallbackContext, message: xml.LoginRequest) -> bytes:
    """Run RemoteLogin with `begin_login` and `finish_login`, as `_handle_login_in_session` does.

    Unknown logins, wrong passwords, disabled users and locked accounts run the same
    statements and one argon2id verification each, so their times match.
    """
    settings = context.settings
    request = context.request
    site_id = context.site_id(message.site_id)
    subject = account_subject(message.login_id)
    try:
        login_normalized: str | None = normalize_login(message.login_id)
    except InvalidValueError:
        login_normalized = None
    database = request.app.state.database
    async with database.driver_connection() as connection:
        start = await begin_login(connection, settings, subject, login_normalized)

    password = decrypt_request_password(settings, message.password, "LoginRequest")
    reason, new_hash = await _check_password(context, start, message.password, password)
    # As on the ORM path, a password that does not decrypt is recorded without a user.
    user = None if reason == "decryption_failed" else start.user

    new_lockout = start.counted if start.counted and start.counted.locked_until else None
    if reason is not None and new_lockout is not None:
        # Rare: this failure started a lockout, so the session also writes its audit event.
        account_locked(context.session, request, new_lockout, user.user_key if user else None)
        if new_hash is not None and user is not None:
            # A disabled user's correct password, as `finish_login` would store it.
            await replace_outdated_hash(context.session, user.id, user.password_hash, new_hash)
        record_event(
            context.session, request, kind="login", outcome="failure", reason=reason,
            user_key=user.user_key if user is not None else None,
            external_reference_id=user.external_reference_id if user is not None else None,
            site_id=site_id,
        )
        await context.session.commit()
    else:
        async with database.driver_connection() as connection:
            await finish_login(
                connection,
                settings,
                subject=subject,
                succeeded=reason is None,
                reason=reason,
                user=user,
                new_hash=new_hash,
                source_address=source_address_of(request),
                site_id=site_id,
                request_id=request_id_of(request),
            )

    if reason is None and user is not None:
        return xml.render_login_success(
            user.login or message.login_id, user.external_reference_id, site_id, user.attributes
        )
    if reason == LoginOutcome.DISABLED.value:
        return xml.render_login_failure(*USER_NOT_ACTIVE)
    return xml.render_login_failure(*INVALID_LOGIN)


async def _check_password(
    context: CallbackContext, start: LoginStart, sent: str, password: str | None
) -> tuple[str | None, str | None]:
    """Verify the password and return the failure reason (None on success) and any new hash.

    `sent` is the password element as sent and `password` its decrypted form, None when it
    did not decrypt. Every branch spends one argon2id verification.
    """
    user = start.user
    if start.counted is None:
        record_login("failure", "locked_out")
        await context.hasher.verify(sent if password is None else password, None)
        return "locked", None
    if password is None:
        # The same argon2id work as a wrong password, so the time does not reveal the failure.
        await context.hasher.verify(sent, None)
        return "decryption_failed", None

    result = await context.hasher.verify(password, user.password_hash if user else None)
    if user is None:
        reason = LoginOutcome.UNKNOWN_LOGIN.value
    elif not result.valid:
        reason = LoginOutcome.WRONG_PASSWORD.value
    elif user.status != "active":
        # As `authenticate` does, the correct password still upgrades an outdated hash.
        record_login("failure", LoginOutcome.DISABLED.value)
        return LoginOutcome.DISABLED.value, result.replacement_hash
    else:
        record_login("success", "ok")
        return None, result.replacement_hash
    record_login("failure", reason)
    return reason, None


async def _handle_login_in_session(
    context: CallbackContext, message: xml.LoginRequest
) -> bytes:
    """Authenticate a shopper through the ORM, with source-address throttling.

    Unknown logins, wrong passwords and locked accounts get one identical response. A locked
    account gets it after the same lookup and argon2id work, so neither the body nor the time
    shows the lockout. A blocked source address gets
    SourceThrottledError, which the callback layer answers with 429.
    """
    site_id = context.site_id(message.site_id)
    gate = await open_login_gate(
        context.session, context.settings, message.login_id, source_address_of(context.request)
    )
    if gate.throttled_for_seconds is not None:
        record_event(
            context.session, context.request, kind="login", outcome="failure",
            reason="throttled", site_id=site_id,
        )
        await context.session.commit()
        raise SourceThrottledError(gate.throttled_for_seconds)

    password = decrypt_request_password(context.settings, message.password, "LoginRequest")
    if gate.account_locked:
        user = await verify_rejected_login(
            context.session,
            context.hasher,
            message.login_id,
            message.password if password is None else password,
        )
        body = xml.render_login_failure(*INVALID_LOGIN)
        outcome, reason = "failure", "locked"
    elif password is None:
        # The same argon2id work as a wrong password, so the time does not reveal the failure.
        await context.hasher.verify(message.password, None)
        user = None
        body = xml.render_login_failure(*INVALID_LOGIN)
        outcome, reason = "failure", "decryption_failed"
    else:
        result = await authenticate(context.session, context.hasher, message.login_id, password)
        user = result.user
        if result.outcome is LoginOutcome.SUCCESS and user is not None:
            body = xml.render_login_success(
                user.login or message.login_id,
                user.external_reference_id,
                site_id,
                returned_attributes(user, context.settings),
            )
            outcome, reason = "success", None
        elif result.outcome is LoginOutcome.DISABLED:
            body = xml.render_login_failure(*USER_NOT_ACTIVE)
            outcome, reason = "failure", "disabled"
        else:
            body = xml.render_login_failure(*INVALID_LOGIN)
            outcome, reason = "failure", result.outcome.value
    await close_login_gate(
        context.session, context.request, context.settings, gate,
        succeeded=outcome == "success", user=user,
    )
    record_event(
        context.session,
        context.request,
        kind="login",
        outcome=outcome,
        reason=reason,
        user_key=user.user_key if user is not None else None,
        external_reference_id=user.external_reference_id if user is not None else None,
        site_id=site_id,
    )
    await context.session.commit()
    return body


async def handle_profile(context: CallbackContext, message: xml.ProfileRequest) -> bytes:
    """Return the profile of the user with the requested ERID, looked up by ERID alone."""
    site_id = context.site_id(message.site_id)
    erid = message.external_reference_id
    database = context.request.app.state.database
    async with database.driver_connection() as connection:
        found = await fetch_profile(
            connection,
            erid if ERID_RE.fullmatch(erid) else None,
            recorded_erid=erid[:64],
            source_address=source_address_of(context.request),
            site_id=site_id,
            request_id=request_id_of(context.request),
            returned_attributes=tuple(context.settings.rum_returned_attributes),
        )
    if found is None or found.status == "erased":
        return xml.render_profile(None, PROFILE_NOT_FOUND)
    if found.status != "active":
        return xml.render_profile(None, PROFILE_NOT_ACTIVE)
    return xml.render_profile(found.info, "", found.attributes)


HANDLERS: dict[type[Any], Handler] = {
    xml.LoginRequest: handle_login,
    xml.ProfileRequest: handle_profile,
    xml.SessionValidationRequest: handle_session_validation,
    xml.CreateUserRequest: handle_create_user,
}
