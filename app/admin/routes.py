"""The admin REST API under `/admin/v1`: users and the audit trail.

Every change locks the user row, checks the optional `If-Match` precondition, applies the
change through the identity service, writes one audit event and commits once, so the change
and its audit event are stored together or not at all.
"""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from sqlalchemy import func, or_
from sqlalchemy.ext.asyncio import AsyncSession

from app.admin.audit import list_audit_events, record_audit_event
from app.admin.keys import AdminReadKey, AdminWriteKey, AuthenticatedKey
from app.admin.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, escape_like, fetch_page
from app.admin.schemas import AuditEventPage, AuditEventRead, PasswordSet, UserPage, UserPatch
from app.deps import HasherDep, SessionDep
from app.identity.errors import InvalidValueError, NotFoundError, PreconditionFailedError
from app.identity.identifiers import normalize_login
from app.identity.schemas import UserCreate, UserRead
from app.identity.service import (
    create_user,
    ensure_not_erased,
    erase_user,
    find_user,
    lock_user,
    reload_user,
    set_password,
    set_status,
    to_read_model,
    update_profile,
    user_query,
)
from app.models import User
from app.models.user import PERSONAL_COLUMNS
from app.problems import problem_responses, request_id_of
from app.query_types import IsoDateTime
from app.sessions.service import revoke_user_sessions

USERS_TAG = "Users"
AUDIT_TAG = "Audit events"
USERS_CURSOR_KIND = "users"

router = APIRouter(prefix="/admin/v1")

_ENTITY_TAG_RE = re.compile(r'(W/)?"[\x21\x23-\x7e]*"')

_ETAG_HEADER_DOC = {
    "ETag": {
        "description": 'The user\'s version as an entity tag, such as `"3"`. Send it back in '
        "`If-Match` to make a change only if nobody changed the user since.",
        "schema": {"type": "string"},
    }
}

IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description=(
            'Optional. The `ETag` from an earlier read, such as `"3"`. When sent, the change is '
            "made only if the user still has that version; otherwise the response is 412."
        ),
        examples=['"3"'],
    ),
]


def _success(description: str, *, created: bool = False) -> dict[int | str, dict[str, Any]]:
    headers: dict[str, Any] = dict(_ETAG_HEADER_DOC)
    if created:
        headers["Location"] = {
            "description": "Path of the new user.",
            "schema": {"type": "string"},
        }
    return {201 if created else 200: {"description": description, "headers": headers}}


def check_if_match(if_match: str | None, user: User) -> None:
    """Raise PreconditionFailedError unless `if_match` is absent, `*` or lists the user's ETag.

    Entity tags compare strongly, as RFC 9110 requires for `If-Match`, so a weak tag never
    matches. A value that is not a list of entity tags is a 422 naming the header.
    """
    if if_match is None:
        return
    value = if_match.strip()
    if value == "*":
        return
    tags = [tag.strip() for tag in value.split(",") if tag.strip()]
    if not tags or not all(_ENTITY_TAG_RE.fullmatch(tag) for tag in tags):
        raise InvalidValueError(
            'If-Match must be an entity tag in double quotes, such as "3", copied from the '
            "ETag header of a read",
            field="If-Match",
        )
    current = etag_of(user)
    if current not in tags:
        raise PreconditionFailedError(
            f"If-Match {value} does not match the current ETag {current}: the user changed "
            "since it was read, so read it again and reapply the change",
            field="If-Match",
        )


def etag_of(user: User) -> str:
    return f'"{user.version}"'


def _respond(user: User, response: Response) -> UserRead:
    response.headers["ETag"] = etag_of(user)
    return to_read_model(user)


async def _user_for_change(
    session: AsyncSession, user_key: uuid.UUID, if_match: str | None
) -> User:
    user = await lock_user(session, user_key)
    if user is None:
        raise NotFoundError(f"no user with user_key {user_key}", field="user_key")
    check_if_match(if_match, user)
    return user


async def _audit(
    session: AsyncSession,
    request: Request,
    key: AuthenticatedKey,
    action: str,
    user: User,
    changed_fields: list[str],
    details: dict[str, Any] | None = None,
) -> None:
    await record_audit_event(
        session,
        actor=key.actor,
        action=action,
        target_user_key=user.user_key,
        changed_fields=changed_fields,
        request_id=request_id_of(request),
        details=details,
    )


@router.post(
    "/users",
    status_code=201,
    response_model=UserRead,
    tags=[USERS_TAG],
    operation_id="createUser",
    summary="Create a user",
    responses={**_success("The new user.", created=True), **problem_responses(401, 403, 409, 422)},
)
async def create_user_endpoint(
    data: UserCreate,
    key: AdminWriteKey,
    session: SessionDep,
    hasher: HasherDep,
    request: Request,
    response: Response,
) -> UserRead:
    """Create a user with an optional explicit ERID and an optional password or password hash.

    Without `external_reference_id` a new ERID is generated. `password` is checked against the
    length policy and stored as argon2id; `password_hash` accepts an existing hash in a
    supported scheme (argon2, bcrypt, PBKDF2, sha256-crypt, sha512-crypt). A login taken after
    normalisation, an ERID taken in any letter case, or an ERID reserved by an erased user is a
    409 naming the field. Requires `admin:write`.
    """
    user = await create_user(session, hasher, data, created_via="admin")
    await _audit(
        session,
        request,
        key,
        "user.create",
        user,
        sorted(data.model_fields_set),
        {"created_via": "admin"},
    )
    user = await reload_user(session, user.user_key)
    await session.commit()
    response.headers["Location"] = f"{router.prefix}/users/{user.user_key}"
    return _respond(user, response)


@router.get(
    "/users",
    response_model=UserPage,
    tags=[USERS_TAG],
    operation_id="listUsers",
    summary="List and search users",
    responses=problem_responses(401, 403, 422),
)
async def list_users(
    key: AdminReadKey,
    session: SessionDep,
    login: Annotated[
        str | None,
        Query(
            min_length=1, max_length=256, description="Prefix of the login, after normalisation."
        ),
    ] = None,
    email: Annotated[
        str | None,
        Query(min_length=1, max_length=254, description="Prefix of the email, any letter case."),
    ] = None,
    name: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=200,
            description="Prefix of the first or the last name, any letter case.",
        ),
    ] = None,
    status: Annotated[
        Literal["active", "disabled", "erased"] | None, Query(description="Only this status.")
    ] = None,
    created_after: Annotated[
        IsoDateTime | None,
        Query(description="Only users created after this time (ISO 8601 with offset)."),
    ] = None,
    created_before: Annotated[
        IsoDateTime | None,
        Query(description="Only users created before this time (ISO 8601 with offset)."),
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=MAX_PAGE_SIZE, description=f"Page size, 1 to {MAX_PAGE_SIZE}.")
    ] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[
        str | None, Query(max_length=512, description="`next_cursor` of the previous page.")
    ] = None,
) -> UserPage:
    """Return users oldest first, one page at a time, filtered by every parameter given.

    Pages are keyset-paginated on (creation time, id): follow `next_cursor` until it is null.
    Users created while you page appear on a later page, and no user is listed twice.
    Requires `admin:read`.
    """
    query = user_query()
    if login is not None:
        prefix = normalize_login(login)
        query = query.where(User.login_normalized.like(escape_like(prefix) + "%", escape="\\"))
    if email is not None:
        query = query.where(_lower_prefix(User.email, email))
    if name is not None:
        query = query.where(
            or_(_lower_prefix(User.first_name, name), _lower_prefix(User.last_name, name))
        )
    if status is not None:
        query = query.where(User.status == status)
    if created_after is not None:
        query = query.where(User.created_at > created_after)
    if created_before is not None:
        query = query.where(User.created_at < created_before)
    page = await fetch_page(
        session,
        query,
        kind=USERS_CURSOR_KIND,
        timestamp_column=User.created_at,
        id_column=User.id,
        limit=limit,
        cursor=cursor,
    )
    return UserPage(
        items=[to_read_model(user) for user in page.items], next_cursor=page.next_cursor
    )


def _lower_prefix(column: Any, prefix: str) -> Any:
    return func.lower(column).like(func.lower(escape_like(prefix) + "%"), escape="\\")


@router.get(
    "/users/lookup",
    response_model=UserRead,
    tags=[USERS_TAG],
    operation_id="lookupUser",
    summary="Find a user by ERID or login",
    responses={**_success("The matching user."), **problem_responses(401, 403, 404, 422)},
)
async def lookup_user(
    key: AdminReadKey,
    session: SessionDep,
    response: Response,
    external_reference_id: Annotated[
        str | None, Query(max_length=64, description="ERID, any letter case.")
    ] = None,
    login: Annotated[
        str | None, Query(max_length=256, description="Login, compared after normalisation.")
    ] = None,
) -> UserRead:
    """Return the user with this ERID or this login; give exactly one. Requires `admin:read`."""
    if (external_reference_id is None) == (login is None):
        raise InvalidValueError(
            "give exactly one of the query parameters external_reference_id and login",
            field="external_reference_id" if external_reference_id is None else "login",
        )
    if external_reference_id is not None:
        user = await find_user(session, external_reference_id=external_reference_id)
        field = "external_reference_id"
    else:
        user = await find_user(session, login=login)
        field = "login"
    if user is None:
        raise NotFoundError(f"no user with this {field}", field=field)
    return _respond(user, response)


@router.get(
    "/users/{user_key}",
    response_model=UserRead,
    tags=[USERS_TAG],
    operation_id="getUser",
    summary="Read a user",
    responses={**_success("The user."), **problem_responses(401, 403, 404, 422)},
)
async def get_user(
    user_key: uuid.UUID, key: AdminReadKey, session: SessionDep, response: Response
) -> UserRead:
    """Return the user with this `user_key`, with its version in the `ETag` header.

    Erased users are still returned, with their identifiers and no personal data.
    Requires `admin:read`.
    """
    user = await find_user(session, user_key=user_key)
    if user is None:
        raise NotFoundError(f"no user with user_key {user_key}", field="user_key")
    return _respond(user, response)


@router.patch(
    "/users/{user_key}",
    response_model=UserRead,
    tags=[USERS_TAG],
    operation_id="updateUser",
    summary="Change profile fields and addresses",
    responses={**_success("The changed user."), **problem_responses(401, 403, 404, 409, 412, 422)},
)
async def update_user(
    user_key: uuid.UUID,
    patch: UserPatch,
    key: AdminWriteKey,
    session: SessionDep,
    request: Request,
    response: Response,
    if_match: IfMatch = None,
) -> UserRead:
    """Change some profile fields, with JSON merge patch meaning (RFC 7396).

    A field left out stays as it is and a field sent as null is cleared. An address object is
    merged into the stored address and null removes it; in `attributes` null removes one
    attribute. `Content-Type` may be `application/json` or `application/merge-patch+json`.
    `user_key` and `external_reference_id` never change (422 `read_only_field`); `status` and
    the password have their own endpoints (422 `use_dedicated_endpoint`). A patch that changes
    nothing writes nothing and keeps the ETag. Requires `admin:write`.
    """
    user = await _user_for_change(session, user_key, if_match)
    changed = await update_profile(session, user, patch.profile_changes())
    if changed:
        await _audit(session, request, key, "user.update", user, changed)
    user = await reload_user(session, user_key)
    await session.commit()
    return _respond(user, response)


async def _change_status(
    user_key: uuid.UUID,
    status: Literal["active", "disabled"],
    key: AuthenticatedKey,
    session: AsyncSession,
    request: Request,
    response: Response,
    if_match: str | None,
) -> UserRead:
    user = await _user_for_change(session, user_key, if_match)
    previous = user.status
    if await set_status(session, user, status):
        if status == "disabled":
            await revoke_user_sessions(session, user.id, "user_disabled")
        action = "user.disable" if status == "disabled" else "user.enable"
        await _audit(
            session, request, key, action, user, ["status"], {"from": previous, "to": status}
        )
    user = await reload_user(session, user_key)
    await session.commit()
    return _respond(user, response)


@router.post(
    "/users/{user_key}/disable",
    response_model=UserRead,
    tags=[USERS_TAG],
    operation_id="disableUser",
    summary="Disable a user",
    responses={**_success("The disabled user."), **problem_responses(401, 403, 404, 409, 412, 422)},
)
async def disable_user(
    user_key: uuid.UUID,
    key: AdminWriteKey,
    session: SessionDep,
    request: Request,
    response: Response,
    if_match: IfMatch = None,
) -> UserRead:
    """Set the status to `disabled` and revoke the user's SSO sessions.

    A disabled user cannot sign in. Disabling a disabled user changes nothing. An erased user
    is a 409 `user_erased`. Requires `admin:write`.
    """
    return await _change_status(user_key, "disabled", key, session, request, response, if_match)


@router.post(
    "/users/{user_key}/enable",
    response_model=UserRead,
    tags=[USERS_TAG],
    operation_id="enableUser",
    summary="Enable a user",
    responses={**_success("The enabled user."), **problem_responses(401, 403, 404, 409, 412, 422)},
)
async def enable_user(
    user_key: uuid.UUID,
    key: AdminWriteKey,
    session: SessionDep,
    request: Request,
    response: Response,
    if_match: IfMatch = None,
) -> UserRead:
    """Set the status back to `active`. Enabling an active user changes nothing.

    Requires `admin:write`.
    """
    return await _change_status(user_key, "active", key, session, request, response, if_match)


@router.put(
    "/users/{user_key}/password",
    response_model=UserRead,
    tags=[USERS_TAG],
    operation_id="setUserPassword",
    summary="Set a user's password",
    responses={**_success("The user."), **problem_responses(401, 403, 404, 409, 412, 422)},
)
async def set_user_password(
    user_key: uuid.UUID,
    body: PasswordSet,
    key: AdminWriteKey,
    session: SessionDep,
    hasher: HasherDep,
    request: Request,
    response: Response,
    if_match: IfMatch = None,
) -> UserRead:
    """Replace the password and revoke the user's SSO sessions.

    The password must be 8 to 256 characters by default (`SSO_PASSWORD_MIN_LENGTH`,
    `SSO_PASSWORD_MAX_LENGTH`), with no composition rules. It is stored as argon2id and is
    never logged or audited. Requires `admin:write`.
    """
    user = await _user_for_change(session, user_key, if_match)
    await set_password(session, hasher, user, body.password)
    await revoke_user_sessions(session, user.id, "password_changed")
    await _audit(session, request, key, "user.set_password", user, ["password"])
    user = await reload_user(session, user_key)
    await session.commit()
    return _respond(user, response)


@router.post(
    "/users/{user_key}/erase",
    response_model=UserRead,
    tags=[USERS_TAG],
    operation_id="eraseUser",
    summary="Erase a user's personal data",
    responses={**_success("The erased user."), **problem_responses(401, 403, 404, 409, 412, 422)},
)
async def erase_user_endpoint(
    user_key: uuid.UUID,
    key: AdminWriteKey,
    session: SessionDep,
    request: Request,
    response: Response,
    if_match: IfMatch = None,
) -> UserRead:
    """Remove the login, names, contact data, addresses, attributes and password for good.

    The `user_key` and ERID stay, reserved for ever, so that Digital River's orders filed under
    the ERID are never attached to another person. The user's SSO sessions are revoked.
    Erasing an erased user is a 409 `user_erased`. Requires `admin:write`.
    """
    user = await _user_for_change(session, user_key, if_match)
    ensure_not_erased(user)
    cleared = [column for column in PERSONAL_COLUMNS if getattr(user, column) is not None]
    cleared += [f"{address.kind}_address" for address in user.addresses]
    cleared += [f"attributes.{attribute.name}" for attribute in user.attributes]
    user_id = user.id
    await revoke_user_sessions(session, user_id, "user_erased")
    await erase_user(session, user)
    await record_audit_event(
        session,
        actor=key.actor,
        action="user.erase",
        target_user_key=user_key,
        changed_fields=["status", *cleared],
        request_id=request_id_of(request),
    )
    user = await reload_user(session, user_key)
    await session.commit()
    return _respond(user, response)


@router.get(
    "/audit-events",
    response_model=AuditEventPage,
    tags=[AUDIT_TAG],
    operation_id="listAuditEvents",
    summary="List audit events",
    responses=problem_responses(401, 403, 422),
)
async def list_audit_events_endpoint(
    key: AdminReadKey,
    session: SessionDep,
    target_user_key: Annotated[
        uuid.UUID | None, Query(description="Only changes to this user.")
    ] = None,
    action: Annotated[
        str | None,
        Query(max_length=64, description="Only this action, such as `user.update`."),
    ] = None,
    actor_key_id: Annotated[
        uuid.UUID | None, Query(description="Only changes made with this API key.")
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
) -> AuditEventPage:
    """Return audit events oldest first, filtered by every parameter given.

    Actions: `user.create`, `user.update`, `user.disable`, `user.enable`,
    `user.set_password`, `user.erase`, `api_key.create`, `api_key.revoke`.
    Requires `admin:read`.
    """
    page = await list_audit_events(
        session,
        target_user_key=target_user_key,
        action=action,
        actor_key_id=actor_key_id,
        occurred_after=occurred_after,
        occurred_before=occurred_before,
        limit=limit,
        cursor=cursor,
    )
    return AuditEventPage(
        items=[AuditEventRead.model_validate(event) for event in page.items],
        next_cursor=page.next_cursor,
    )
