"""The session-token API under `/api/v1/sessions`, for the merchant's own website.

The site signs a shopper in, requests a token here, and hands the token to Digital River (DR) in
the agreed cookie or URL parameter; DR later sends it back in RemoteSessionValidation. Every
endpoint needs an API key with the `sessions` scope. The token itself is in the body of the
creation answer only, which is marked `Cache-Control: no-store`.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from app.admin.keys import SessionsKey
from app.deps import HasherDep, SessionDep, SettingsDep
from app.identity.errors import ConflictError, DomainError, InvalidValueError, NotFoundError
from app.identity.schemas import Erid
from app.identity.service import LoginOutcome, authenticate, find_user
from app.models import User
from app.problems import PROBLEM_TYPE_PREFIX, PROBLEM_TYPES, ProblemType, problem_responses
from app.rum.events import source_address_of
from app.security.login_guard import close_login_gate, open_login_gate, verify_rejected_login
from app.sessions.service import create_session, revoke_session, revoke_user_sessions

logger = logging.getLogger(__name__)

SESSIONS_TAG = "SSO sessions"

router = APIRouter(prefix="/api/v1/sessions", tags=[SESSIONS_TAG])


class InvalidCredentialsError(DomainError):
    """A login and password that match no account, with one response for both causes."""

    code = "invalid_credentials"
    status_code = 400


class TooManyAttemptsError(DomainError):
    """A source address blocked after too many failed logins; retry after `Retry-After`."""

    code = "too_many_attempts"
    status_code = 429

    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__(
            f"too many failed logins from this address: retry after {retry_after_seconds} seconds"
        )
        self.headers = {"Retry-After": str(retry_after_seconds)}


PROBLEM_TYPES.setdefault(
    "too_many_attempts",
    ProblemType(
        type=PROBLEM_TYPE_PREFIX + "too_many_attempts",
        code="too_many_attempts",
        title="Too many attempts",
        status=429,
        description="The source address failed too many logins and is blocked for a while; "
        "retry after the `Retry-After` delay.",
    ),
)


class UserNotActiveError(ConflictError):
    code = "user_not_active"


class UserLookup(BaseModel):
    """Exactly one way of naming the user."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"external_reference_id": "D05B4D68-F49D-11DA-8019-88F835DA4C6C"}]
        },
    )

    user_key: uuid.UUID | None = Field(default=None, description="The user's `user_key`.")
    external_reference_id: Erid | None = Field(default=None, description="The user's ERID.")
    login: Annotated[str, Field(min_length=1, max_length=256)] | None = Field(
        default=None, description="The user's login, matched after normalisation."
    )


class SessionCreate(UserLookup):
    """The shopper the token is for: by `user_key`, by ERID, or by login with password."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"user_key": "3f0e9c55-4b7a-4d39-a2a4-9d1f3c8e5b21"},
                {"login": "jane.doe@example.com", "password": "correct horse battery staple"},
            ]
        },
    )

    password: SecretStr | None = Field(
        default=None, description="Required with `login` and not allowed otherwise."
    )


class SessionCreated(BaseModel):
    """A new session. `token` is shown only here: store it in the shopper's cookie."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "0b6f1d3c-2a9e-4c57-8f0e-5d4b3a2c1e0f",
                    "token": "q3Jv0kYdQ2m8Wl4Zt9XbN1cRfHs7Ue5Ga6Pi0OjLwEy",
                    "expires_at": "2026-12-05T04:00:00.000000Z",
                }
            ]
        }
    )

    id: uuid.UUID = Field(description="Session id, used to revoke this token.")
    token: str = Field(description="43 URL-safe characters (256 random bits).")
    expires_at: datetime


class SessionsRevoked(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"revoked": 2}]})

    revoked: int = Field(description="How many live sessions this request revoked.")


def _single_identifier(lookup: UserLookup) -> str:
    """Return the name of the one identifier given, or raise naming the problem."""
    given = [
        name
        for name in ("user_key", "external_reference_id", "login")
        if getattr(lookup, name) is not None
    ]
    if len(given) != 1:
        raise InvalidValueError(
            "give exactly one of user_key, external_reference_id and login"
            + (f" (got {', '.join(given)})" if given else ""),
            field=given[1] if len(given) > 1 else "user_key",
        )
    return given[0]


async def _user_by_identifier(session: SessionDep, lookup: UserLookup, name: str) -> User:
    if name == "user_key":
        user = await find_user(session, user_key=lookup.user_key)
    elif name == "external_reference_id":
        user = await find_user(session, external_reference_id=lookup.external_reference_id)
    else:
        user = await find_user(session, login=lookup.login)
    if user is None:
        raise NotFoundError(f"no user with this {name}", field=name)
    return user


def _ensure_active(user: User) -> None:
    if user.status == "erased":
        raise ConflictError(
            "the user has been erased: no session can be issued", code="user_erased"
        )
    if user.status != "active":
        raise UserNotActiveError("the user is disabled: enable it before issuing a session")


@router.post(
    "",
    status_code=201,
    response_model=SessionCreated,
    operation_id="createSession",
    summary="Issue a session token for a signed-in shopper",
    responses={
        201: {"description": "The new session with its token."},
        **problem_responses(400, 401, 403, 404, 409, 422, 429),
    },
)
async def create_session_endpoint(
    request: Request,
    data: SessionCreate,
    key: SessionsKey,
    session: SessionDep,
    settings: SettingsDep,
    hasher: HasherDep,
    response: Response,
) -> SessionCreated:
    """Issue an opaque token that Digital River sends back in RemoteSessionValidation.

    Name the shopper by `user_key` or `external_reference_id` when the site has signed them in
    itself, or send `login` with `password` to have the password checked here. An unknown login
    and a wrong password get the same 400 `invalid_credentials`, after the same argon2id work.
    A disabled user is a 409 `user_not_active` (reported only after the correct password), an
    erased one a 409 `user_erased`. The token expires after SSO_SESSION_LIFETIME_MINUTES
    (8 hours by default); only its SHA-256 digest is stored.
    """
    name = _single_identifier(data)
    if name == "login":
        if data.password is None:
            raise InvalidValueError("password is required with login", field="password")
        user = await _check_password(
            request, session, settings, hasher, data.login or "", data.password.get_secret_value()
        )
    else:
        if data.password is not None:
            raise InvalidValueError(
                "password is only accepted together with login", field="password"
            )
        user = await _user_by_identifier(session, data, name)
    _ensure_active(user)

    issued = await create_session(session, user, settings)
    await session.commit()
    logger.info(
        "sessions.created session_id=%s user_key=%s api_key_id=%s",
        issued.id,
        user.user_key,
        key.id,
    )
    response.headers["Cache-Control"] = "no-store"
    return SessionCreated(id=issued.id, token=issued.token, expires_at=issued.expires_at)


async def _check_password(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    hasher: HasherDep,
    login: str,
    password: str,
) -> User:
    """Check a login and password under the same lockout and throttling as RemoteLogin.

    A locked account gets the same `invalid_credentials` answer as a wrong password, after the
    same decoy argon2id work, and every attempt is counted before the password is checked.
    """
    gate = await open_login_gate(session, settings, login, source_address_of(request))
    if gate.throttled_for_seconds is not None:
        raise TooManyAttemptsError(gate.throttled_for_seconds)
    if gate.account_locked:
        locked_user = await verify_rejected_login(session, hasher, login, password)
        await close_login_gate(session, request, settings, gate, succeeded=False, user=locked_user)
        await session.commit()
        raise InvalidCredentialsError("the login or the password is wrong")

    result = await authenticate(session, hasher, login, password)
    succeeded = result.outcome is LoginOutcome.SUCCESS
    await close_login_gate(session, request, settings, gate, succeeded=succeeded, user=result.user)
    if result.outcome in (LoginOutcome.UNKNOWN_LOGIN, LoginOutcome.WRONG_PASSWORD):
        await session.commit()
        raise InvalidCredentialsError("the login or the password is wrong")
    assert result.user is not None
    return result.user


@router.delete(
    "/{session_id}",
    status_code=204,
    operation_id="revokeSession",
    summary="Revoke one session token",
    responses={
        204: {"description": "Revoked, now or earlier."},
        **problem_responses(401, 403, 404),
    },
)
async def revoke_session_endpoint(
    session_id: Annotated[uuid.UUID, Path(description="The `id` returned when it was issued.")],
    key: SessionsKey,
    session: SessionDep,
) -> Response:
    """Revoke the session, so Digital River's next validation of its token fails with code 21.

    Revoking a revoked session succeeds again and keeps the first revocation's time.
    """
    if not await revoke_session(session, session_id, "revoked_by_api"):
        raise NotFoundError(f"no session with id {session_id}", field="session_id")
    await session.commit()
    logger.info("sessions.revoked session_id=%s api_key_id=%s", session_id, key.id)
    return Response(status_code=204)


@router.post(
    "/revoke",
    response_model=SessionsRevoked,
    operation_id="revokeUserSessions",
    summary="Revoke every session token of one user",
    responses=problem_responses(401, 403, 404, 422),
)
async def revoke_user_sessions_endpoint(
    data: UserLookup,
    key: SessionsKey,
    session: SessionDep,
) -> SessionsRevoked:
    """Revoke all live sessions of the user named by `user_key`, ERID or login, such as when
    the shopper signs out everywhere. Disabling or erasing a user and changing their password
    through the admin API revoke their sessions without this call."""
    name = _single_identifier(data)
    user = await _user_by_identifier(session, data, name)
    revoked = await revoke_user_sessions(session, user.id, "revoked_by_api")
    await session.commit()
    logger.info(
        "sessions.revoked_all user_key=%s count=%d api_key_id=%s", user.user_key, revoked, key.id
    )
    return SessionsRevoked(revoked=revoked)
