"""RemoteLogin's database work as two statements on the driver connection.

`begin_login` runs before the password check. In one statement that commits on its own, it
counts the attempt against the account, as `count_failure` does, and reads the user with the
returned extended attributes. The count is visible to every replica before argon2id starts, and
no connection is held while the hash runs. `finish_login` runs after the check: it records the
`login_events` row and, after a success, clears the account's failures and replaces a hash in an
outdated scheme.

The statements are compiled once from the SQLAlchemy constructs that the ORM path runs
(`count_failure_statement`, `clear_failures_statement`), so the throttling rules exist once.
The ORM path in `app.security.login_guard` still serves the sessions API, source-address
throttling and the attempt that starts a lockout.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import Text, any_, bindparam, cast, func, insert, literal, select, true, update
from sqlalchemy.dialects.postgresql import ARRAY, INET
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
from sqlalchemy.sql import ClauseElement

from app.models import LoginEvent, User, UserAttribute
from app.rum import xml
from app.rum.attributes import attributes_from_arrays
from app.security.throttle import (
    ACCOUNT,
    CountedFailure,
    ThrottlePolicy,
    account_policy,
    clear_failures_statement,
    count_failure_statement,
)
from app.settings import Settings

_DIALECT = asyncpg_dialect.dialect()  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class CompiledStatement:
    """A statement compiled for asyncpg, with its bind parameter names in positional order."""

    sql: str
    order: tuple[str, ...]
    defaults: dict[str, Any]

    @classmethod
    def of(cls, statement: ClauseElement, placeholders: dict[str, Any]) -> CompiledStatement:
        """Compile `statement`, with `placeholders` as values of bind parameters that lack one."""
        compiled: Any = statement.compile(dialect=_DIALECT)
        return cls(
            sql=str(compiled),
            order=tuple(compiled.positiontup or ()),
            defaults=dict(compiled.construct_params(placeholders)),
        )

    def arguments(self, values: dict[str, Any]) -> list[Any]:
        return [values[name] if name in values else self.defaults[name] for name in self.order]


@dataclass(frozen=True, slots=True)
class LoginUser:
    """The columns of a user that a login needs."""

    id: int
    user_key: uuid.UUID
    external_reference_id: str
    login: str | None
    status: str
    password_hash: str | None
    attributes: tuple[xml.ExtendedAttribute, ...]


@dataclass(frozen=True, slots=True)
class LoginStart:
    """The result of `begin_login`.

    `counted` is None while the account is locked, and `user` is None for an unknown login.
    """

    counted: CountedFailure | None
    user: LoginUser | None


def _begin_statement(policy: ThrottlePolicy) -> CompiledStatement:
    counted = count_failure_statement(ACCOUNT, bindparam("subject", type_=Text), policy).cte(
        "counted"
    )
    names = bindparam("attribute_names", type_=ARRAY(Text))
    attributes = (
        select(
            func.array_agg(UserAttribute.name).label("names"),
            func.array_agg(UserAttribute.value).label("values_"),
        )
        .where(UserAttribute.user_id == User.id, UserAttribute.name == any_(names))
        .lateral("attributes")
    )
    # One row whatever matched: the count, when the account was not locked, and the user.
    single_row = select(literal(1).label("one")).subquery("single_row")
    statement = select(
        counted.c.failures,
        counted.c.lockouts,
        counted.c.locked_until,
        User.id,
        User.user_key,
        User.external_reference_id,
        User.login,
        User.status,
        User.password_hash,
        attributes.c.names,
        attributes.c.values_,
    ).select_from(
        single_row.outerjoin(counted, true())
        .outerjoin(User, User.login_normalized == bindparam("login_normalized", type_=Text))
        .outerjoin(attributes, true())
    )
    return CompiledStatement.of(
        statement, {"subject": "", "login_normalized": None, "attribute_names": []}
    )


def _event_statement() -> Any:
    return insert(LoginEvent).values(
        kind="login",
        outcome=bindparam("outcome", type_=Text),
        reason=bindparam("reason", type_=Text),
        user_key=bindparam("user_key", type_=LoginEvent.user_key.type),
        external_reference_id=bindparam("external_reference_id", type_=Text),
        source_address=cast(bindparam("source_address", type_=Text), INET),
        site_id=bindparam("site_id", type_=Text),
        request_id=bindparam("request_id", type_=Text),
    )


_EVENT_PLACEHOLDERS = {
    "outcome": "",
    "reason": None,
    "user_key": None,
    "external_reference_id": None,
    "source_address": None,
    "site_id": None,
    "request_id": None,
}


@dataclass(frozen=True, slots=True)
class LoginStatements:
    begin: CompiledStatement
    failure: CompiledStatement
    failure_with_new_hash: CompiledStatement
    success: CompiledStatement
    success_with_new_hash: CompiledStatement


@cache
def _statements(policy: ThrottlePolicy) -> LoginStatements:
    """Compile the statements for one account policy, whose numbers they carry as defaults."""
    cleared = clear_failures_statement(ACCOUNT, bindparam("subject", type_=Text)).cte("cleared")
    rehashed = (
        update(User)
        .where(
            User.id == bindparam("user_id", type_=User.id.type),
            User.password_hash == bindparam("old_hash", type_=Text),
        )
        .values(password_hash=bindparam("new_hash", type_=Text))
        .cte("rehashed")
    )
    success = _event_statement().add_cte(cleared)
    success_placeholders = {**_EVENT_PLACEHOLDERS, "subject": ""}
    rehash_placeholders = {"user_id": 0, "old_hash": "", "new_hash": ""}
    return LoginStatements(
        begin=_begin_statement(policy),
        failure=CompiledStatement.of(_event_statement(), _EVENT_PLACEHOLDERS),
        failure_with_new_hash=CompiledStatement.of(
            _event_statement().add_cte(rehashed), {**_EVENT_PLACEHOLDERS, **rehash_placeholders}
        ),
        success=CompiledStatement.of(success, success_placeholders),
        success_with_new_hash=CompiledStatement.of(
            success.add_cte(rehashed), {**success_placeholders, **rehash_placeholders}
        ),
    )


async def begin_login(
    connection: Any, settings: Settings, subject: str, login_normalized: str | None
) -> LoginStart:
    """Count the attempt against the account `subject` and read the user the login names."""
    statement = _statements(account_policy(settings)).begin
    record = await connection.fetchrow(
        statement.sql,
        *statement.arguments(
            {
                "subject": subject,
                "login_normalized": login_normalized,
                "attribute_names": list(settings.rum_returned_attributes),
            }
        ),
    )
    counted = None
    if record["failures"] is not None:
        locked_until: datetime | None = record["locked_until"]
        counted = CountedFailure(
            failures=record["failures"], lockouts=record["lockouts"], locked_until=locked_until
        )
    user = None
    if record["id"] is not None:
        user = LoginUser(
            id=record["id"],
            user_key=record["user_key"],
            external_reference_id=record["external_reference_id"],
            login=record["login"],
            status=record["status"],
            password_hash=record["password_hash"],
            attributes=attributes_from_arrays(
                record["names"], record["values_"], tuple(settings.rum_returned_attributes)
            ),
        )
    return LoginStart(counted=counted, user=user)


async def finish_login(
    connection: Any,
    settings: Settings,
    *,
    subject: str,
    succeeded: bool,
    reason: str | None,
    user: LoginUser | None,
    new_hash: str | None,
    source_address: str | None,
    site_id: str | None,
    request_id: str | None,
) -> None:
    """Record the attempt in `login_events`.

    After a success it also clears the account's failures. With `new_hash`, given after the
    correct password of an active or disabled user, it stores that hash in place of the user's
    hash in an outdated scheme.
    """
    statements = _statements(account_policy(settings))
    values: dict[str, Any] = {
        "outcome": "success" if succeeded else "failure",
        "reason": reason,
        "user_key": user.user_key if user is not None else None,
        "external_reference_id": user.external_reference_id if user is not None else None,
        "source_address": source_address,
        "site_id": site_id,
        "request_id": request_id,
    }
    rehash = False
    if new_hash is not None and user is not None:
        rehash = True
        values.update(user_id=user.id, old_hash=user.password_hash, new_hash=new_hash)
    if not succeeded:
        statement = statements.failure_with_new_hash if rehash else statements.failure
    else:
        statement = statements.success_with_new_hash if rehash else statements.success
        values["subject"] = subject
    await connection.execute(statement.sql, *statement.arguments(values))
