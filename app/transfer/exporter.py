"""Stream users out in the import format, so an export imported into an empty store is exact.

Rows come out ordered by `created_at, id`, with a fixed column (CSV) or key (NDJSON) order and
the attributes sorted by name, so two exports of the same data are byte-identical. An import
inserts in file order within one transaction, so the store it builds exports in the same order.

Erased users are never exported: they have no login or profile left to move. Password hashes
are exported only when asked for; the HTTP route also requires the `admin:export-secrets`
scope for that.
"""

# ruff: noqa: S608 - the SQL is assembled from constant column names only; values are bind parameters.

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.models.user import ADDRESS_FIELDS
from app.transfer.formats import (
    ADDRESS_OBJECTS,
    CsvWriter,
    FileFormat,
    export_columns,
    ndjson_line,
)
from app.transfer.importer import BULK_TIMEOUT_SECONDS, raw_connection

EXPORTABLE_STATUSES = ("active", "disabled")
_PREFETCH_ROWS = 2000
# Rows rendered per chunk handed to the caller: large enough to keep writes efficient.
_CHUNK_ROWS = 500


@dataclass(frozen=True, slots=True)
class ExportOptions:
    file_format: FileFormat
    include_password_hashes: bool = False
    statuses: tuple[str, ...] = EXPORTABLE_STATUSES
    created_from: datetime | None = None
    created_before: datetime | None = None


def _address_sql(alias: str) -> str:
    pairs = ", ".join(f"'{name}', {alias}.{name}" for name in ADDRESS_FIELDS)
    return f"CASE WHEN {alias}.user_id IS NULL THEN NULL ELSE json_build_object({pairs}) END"


def _filter(options: ExportOptions) -> tuple[str, list[Any]]:
    conditions = ["u.status = ANY($1::text[])"]
    arguments: list[Any] = [list(options.statuses)]
    if options.created_from is not None:
        arguments.append(options.created_from)
        conditions.append(f"u.created_at >= ${len(arguments)}")
    if options.created_before is not None:
        arguments.append(options.created_before)
        conditions.append(f"u.created_at < ${len(arguments)}")
    return " AND ".join(conditions), arguments


def _users_query(options: ExportOptions, where: str) -> str:
    password = ", u.password_hash" if options.include_password_hashes else ""
    return f"""
    SELECT u.user_key::text AS user_key, u.external_reference_id, u.login, u.status, u.email,
           u.first_name, u.last_name, u.locale, u.home_phone{password},
           {_address_sql("s")}::text AS shipping_address,
           {_address_sql("b")}::text AS billing_address,
           (SELECT json_object_agg(a.name, a.value ORDER BY a.name)
              FROM user_attributes a WHERE a.user_id = u.id)::text AS attributes
    FROM users u
    LEFT JOIN user_addresses s ON s.user_id = u.id AND s.kind = 'shipping'
    LEFT JOIN user_addresses b ON b.user_id = u.id AND b.kind = 'billing'
    WHERE {where}
    ORDER BY u.created_at, u.id
    """


def _user_dict(row: asyncpg.Record, *, include_password_hashes: bool) -> dict[str, Any]:
    user: dict[str, Any] = {
        "user_key": row["user_key"],
        "external_reference_id": row["external_reference_id"],
        "login": row["login"],
        "status": row["status"],
        "email": row["email"],
        "first_name": row["first_name"],
        "last_name": row["last_name"],
        "locale": row["locale"],
        "home_phone": row["home_phone"],
    }
    if include_password_hashes:
        user["password_hash"] = row["password_hash"]
    for kind in ADDRESS_OBJECTS:
        raw = row[kind]
        user[kind] = json.loads(raw) if raw is not None else None
    attributes = row["attributes"]
    user["attributes"] = json.loads(attributes) if attributes is not None else {}
    return user


async def export_users(
    session: AsyncSession, options: ExportOptions, *, snapshot: bool = True
) -> AsyncIterator[str]:
    """Yield the export as text chunks: the CSV header first, then rows in `created_at, id` order.

    With `snapshot`, the session's transaction must not have run a query yet: it is made
    REPEATABLE READ and READ ONLY so the CSV header's attribute columns and the rows come from
    one consistent view.
    """
    if snapshot:
        await session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
    connection = await raw_connection(session)
    where, arguments = _filter(options)
    writer: CsvWriter | None = None
    if options.file_format == "csv":
        names = await connection.fetch(
            f"SELECT DISTINCT a.name FROM user_attributes a JOIN users u ON u.id = a.user_id "
            f"WHERE {where} ORDER BY a.name",
            *arguments,
            timeout=BULK_TIMEOUT_SECONDS,
        )
        columns = export_columns(
            include_password_hashes=options.include_password_hashes,
            attribute_names=[row["name"] for row in names],
        )
        writer = CsvWriter(columns)
        yield writer.header()

    chunk: list[dict[str, Any]] = []
    query = _users_query(options, where)
    async for row in connection.cursor(
        query, *arguments, prefetch=_PREFETCH_ROWS, timeout=BULK_TIMEOUT_SECONDS
    ):
        chunk.append(_user_dict(row, include_password_hashes=options.include_password_hashes))
        if len(chunk) >= _CHUNK_ROWS:
            yield _render(chunk, writer)
            chunk = []
    if chunk:
        yield _render(chunk, writer)


def _render(users: list[dict[str, Any]], writer: CsvWriter | None) -> str:
    if writer is not None:
        return writer.rows(users)
    return "".join(ndjson_line(user) for user in users)
