"""Admin endpoints for brute-force protection and the login audit log, under `/admin/v1`.

Admins read and lift an account's lockout, read and lift a source address's block, and page
through the login events that every Digital River callback writes.
"""

from __future__ import annotations

import ipaddress
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.admin.audit import record_audit_event
from app.admin.keys import AdminReadKey, AdminWriteKey
from app.admin.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, fetch_page
from app.deps import SessionDep
from app.identity.errors import InvalidValueError, NotFoundError
from app.models import LoginEvent, ThrottleCounter, User
from app.problems import problem_responses, request_id_of
from app.query_types import IsoDateTime
from app.security.throttle import (
    ACCOUNT,
    ADDRESS,
    LockoutStatus,
    account_subject,
    address_subject,
    lockout_status,
    unlock,
)

LOCKOUT_TAG = "Lockouts and login events"
LOGIN_EVENTS_CURSOR_KIND = "login-events"

router = APIRouter(prefix="/admin/v1", tags=[LOCKOUT_TAG])


class LockoutRead(BaseModel):
    """The failed-login counter of one account or source address."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "locked": True,
                    "locked_until": "2026-12-04T20:15:00Z",
                    "failures": 0,
                    "lockouts": 2,
                    "window_started_at": "2026-12-04T20:13:00Z",
                    "updated_at": "2026-12-04T20:13:00Z",
                }
            ]
        }
    )

    locked: bool = Field(description="True while logins are refused.")
    locked_until: datetime | None = Field(
        description="End of the current or most recent lockout; null if there was none."
    )
    failures: int = Field(description="Failed logins counted in the current window.")
    lockouts: int = Field(
        description="Lockouts in a row; each one doubles the next, up to the configured cap."
    )
    window_started_at: datetime | None
    updated_at: datetime | None = Field(description="Time of the last counted attempt.")


class UserLockoutRead(LockoutRead):
    user_key: uuid.UUID


class AddressBlockRead(LockoutRead):
    source_address: str = Field(
        description="The address as counted: IPv4, or the /64 network of an IPv6 address."
    )


class AddressBlockPage(BaseModel):
    """Source addresses blocked now, the longest block first."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {
                            "source_address": "203.0.113.7",
                            "locked": True,
                            "locked_until": "2026-12-04T20:07:00Z",
                            "failures": 100,
                            "lockouts": 1,
                            "window_started_at": "2026-12-04T20:02:00Z",
                            "updated_at": "2026-12-04T20:06:00Z",
                        }
                    ]
                }
            ]
        }
    )

    items: list[AddressBlockRead]


class AddressUnblock(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"source_address": "203.0.113.7"}]}
    )

    source_address: str = Field(
        max_length=64, description="An IPv4 or IPv6 address; IPv6 unblocks its whole /64."
    )

    @field_validator("source_address")
    @classmethod
    def _check_address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value.strip())
        except ValueError:
            raise ValueError(
                f"{value!r} is not an IP address: send one such as 203.0.113.7 or 2001:db8::1"
            ) from None
        return value.strip()


class LoginEventRead(BaseModel):
    """The outcome of one Digital River callback. Never holds a password or a token."""

    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": 7,
                    "occurred_at": "2026-12-04T20:05:00.654321Z",
                    "kind": "login",
                    "outcome": "failure",
                    "reason": "wrong_password",
                    "user_key": "3f0e9c55-4b7a-4d39-a2a4-9d1f3c8e5b21",
                    "external_reference_id": "D05B4D68-F49D-11DA-8019-88F835DA4C6C",
                    "source_address": "203.0.113.7",
                    "site_id": "headwtr",
                    "request_id": "5b0d8c5e0c1e4c8f9d1f2a3b4c5d6e7f",
                }
            ]
        },
    )

    id: int
    occurred_at: datetime
    kind: str = Field(description="`login`, `profile`, `session` or `registration`.")
    outcome: str = Field(description="`success` or `failure`.")
    reason: str | None = Field(
        description="Why a callback failed: `unknown_login`, `wrong_password`, `disabled`, "
        "`locked`, `throttled`, `unknown`, `erased` and others; null on success."
    )
    user_key: uuid.UUID | None
    external_reference_id: str | None
    source_address: str | None
    site_id: str | None
    request_id: str | None

    @field_validator("source_address", mode="before")
    @classmethod
    def _address_as_text(cls, value: Any) -> Any:
        # asyncpg returns INET values as ipaddress objects.
        return None if value is None else str(value)


class LoginEventPage(BaseModel):
    """One page of login events, oldest first; pass `next_cursor` as `cursor` for the next."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": LoginEventRead.model_config["json_schema_extra"]["examples"],  # type: ignore[index]
                    "next_cursor": "eyJpZCI6N30",
                }
            ]
        }
    )

    items: list[LoginEventRead]
    next_cursor: str | None = Field(description="null on the last page.")


def _lockout_fields(status: LockoutStatus | None) -> dict[str, Any]:
    if status is None:
        return {
            "locked": False,
            "locked_until": None,
            "failures": 0,
            "lockouts": 0,
            "window_started_at": None,
            "updated_at": None,
        }
    return {
        "locked": status.locked,
        "locked_until": status.locked_until,
        "failures": status.failures,
        "lockouts": status.lockouts,
        "window_started_at": status.window_started_at,
        "updated_at": status.updated_at,
    }


async def _user(session: AsyncSession, user_key: uuid.UUID) -> User:
    user = await session.scalar(select(User).where(User.user_key == user_key))
    if user is None:
        raise NotFoundError(f"no user with user_key {user_key}", field="user_key")
    return user


def _subject_of(user: User) -> str | None:
    # Erased users have no login left, so nothing can count against them.
    return account_subject(user.login) if user.login else None


@router.get(
    "/users/{user_key}/lockout",
    response_model=UserLockoutRead,
    operation_id="getUserLockout",
    summary="Show a user's failed logins and lockout",
    responses=problem_responses(401, 403, 404, 422),
)
async def get_user_lockout(
    user_key: uuid.UUID, key: AdminReadKey, session: SessionDep
) -> UserLockoutRead:
    """Return the user's failed-login count and whether logins are refused now.

    Requires `admin:read`.
    """
    user = await _user(session, user_key)
    subject = _subject_of(user)
    status = await lockout_status(session, ACCOUNT, subject) if subject else None
    return UserLockoutRead(user_key=user.user_key, **_lockout_fields(status))


@router.post(
    "/users/{user_key}/unlock",
    response_model=UserLockoutRead,
    operation_id="unlockUser",
    summary="Lift a user's lockout",
    responses=problem_responses(401, 403, 404, 422),
)
async def unlock_user(
    user_key: uuid.UUID, key: AdminWriteKey, session: SessionDep, request: Request
) -> UserLockoutRead:
    """Lift the lockout and reset the failure and lockout counts, so the next lockout is short.

    Writes a `user.unlock` audit event when the user was locked. Unlocking a user who is not
    locked changes nothing. Requires `admin:write`.
    """
    user = await _user(session, user_key)
    subject = _subject_of(user)
    before = await unlock(session, ACCOUNT, subject) if subject else None
    if before is not None and before.locked:
        await record_audit_event(
            session,
            actor=key.actor,
            action="user.unlock",
            target_user_key=user.user_key,
            request_id=request_id_of(request),
            details={
                "locked_until": before.locked_until.isoformat() if before.locked_until else None
            },
        )
    after = await lockout_status(session, ACCOUNT, subject) if subject else None
    await session.commit()
    return UserLockoutRead(user_key=user.user_key, **_lockout_fields(after))


@router.get(
    "/blocked-addresses",
    response_model=AddressBlockPage,
    operation_id="listBlockedAddresses",
    summary="List blocked source addresses",
    responses=problem_responses(401, 403, 422),
)
async def list_blocked_addresses(
    key: AdminReadKey,
    session: SessionDep,
    limit: Annotated[
        int, Query(ge=1, le=MAX_PAGE_SIZE, description=f"At most this many, 1 to {MAX_PAGE_SIZE}.")
    ] = DEFAULT_PAGE_SIZE,
) -> AddressBlockPage:
    """Return the source addresses whose failed logins are refused now.

    Requires `admin:read`.
    """
    rows = (
        await session.scalars(
            select(ThrottleCounter)
            .where(
                ThrottleCounter.scope == ADDRESS,
                ThrottleCounter.locked_until > func.statement_timestamp(),
            )
            .order_by(ThrottleCounter.locked_until.desc(), ThrottleCounter.subject)
            .limit(limit)
        )
    ).all()
    items = [
        AddressBlockRead(
            source_address=row.subject,
            locked=True,
            locked_until=row.locked_until,
            failures=row.failures,
            lockouts=row.lockouts,
            window_started_at=row.window_started_at,
            updated_at=row.updated_at,
        )
        for row in rows
    ]
    return AddressBlockPage(items=items)


@router.post(
    "/blocked-addresses/unblock",
    response_model=AddressBlockRead,
    operation_id="unblockAddress",
    summary="Lift a source address's block",
    responses=problem_responses(401, 403, 422),
)
async def unblock_address(
    body: AddressUnblock, key: AdminWriteKey, session: SessionDep, request: Request
) -> AddressBlockRead:
    """Lift the block of a source address and reset its counts.

    Writes an `address.unblock` audit event when the address was blocked. Requires
    `admin:write`.
    """
    subject = address_subject(body.source_address)
    before = await unlock(session, ADDRESS, subject)
    if before is not None and before.locked:
        await record_audit_event(
            session,
            actor=key.actor,
            action="address.unblock",
            request_id=request_id_of(request),
            details={"source_address": subject},
        )
    after = await lockout_status(session, ADDRESS, subject)
    await session.commit()
    return AddressBlockRead(source_address=subject, **_lockout_fields(after))


@router.get(
    "/login-events",
    response_model=LoginEventPage,
    operation_id="listLoginEvents",
    summary="List login events",
    responses=problem_responses(401, 403, 422),
)
async def list_login_events(
    key: AdminReadKey,
    session: SessionDep,
    user_key: Annotated[uuid.UUID | None, Query(description="Only this user's events.")] = None,
    kind: Annotated[
        Literal["login", "profile", "session", "registration"] | None,
        Query(description="Only this callback."),
    ] = None,
    outcome: Annotated[
        Literal["success", "failure"] | None, Query(description="Only this outcome.")
    ] = None,
    reason: Annotated[
        str | None, Query(max_length=64, description="Only this reason, such as `locked`.")
    ] = None,
    source_address: Annotated[
        str | None, Query(max_length=64, description="Only events from this IP address.")
    ] = None,
    occurred_after: Annotated[
        IsoDateTime | None, Query(description="Only events after this time (ISO 8601).")
    ] = None,
    occurred_before: Annotated[
        IsoDateTime | None, Query(description="Only events before this time (ISO 8601).")
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=MAX_PAGE_SIZE, description=f"Page size, 1 to {MAX_PAGE_SIZE}.")
    ] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[
        str | None, Query(max_length=512, description="`next_cursor` of the previous page.")
    ] = None,
) -> LoginEventPage:
    """Return login events oldest first, filtered by every parameter given.

    Events older than `SSO_LOGIN_EVENT_RETENTION_DAYS` are purged. Requires `admin:read`.
    """
    query = select(LoginEvent)
    if user_key is not None:
        query = query.where(LoginEvent.user_key == user_key)
    if kind is not None:
        query = query.where(LoginEvent.kind == kind)
    if outcome is not None:
        query = query.where(LoginEvent.outcome == outcome)
    if reason is not None:
        query = query.where(LoginEvent.reason == reason)
    if source_address is not None:
        try:
            address = ipaddress.ip_address(source_address.strip())
        except ValueError:
            raise InvalidValueError(
                f"source_address {source_address!r} is not an IP address: send one such as "
                "203.0.113.7",
                field="source_address",
            ) from None
        query = query.where(LoginEvent.source_address == str(address))
    if occurred_after is not None:
        query = query.where(LoginEvent.occurred_at > occurred_after)
    if occurred_before is not None:
        query = query.where(LoginEvent.occurred_at < occurred_before)
    page = await fetch_page(
        session,
        query,
        kind=LOGIN_EVENTS_CURSOR_KIND,
        timestamp_column=LoginEvent.occurred_at,
        id_column=LoginEvent.id,
        limit=limit,
        cursor=cursor,
    )
    return LoginEventPage(
        items=[LoginEventRead.model_validate(event) for event in page.items],
        next_cursor=page.next_cursor,
    )
