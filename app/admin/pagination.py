"""Keyset pagination over (timestamp, id) with opaque cursors.

A page is the rows strictly after the cursor in (timestamp, id) order, so a row inserted
between two page requests never shifts the rows that follow: nothing already listed is
repeated and nothing not yet listed is skipped. A cursor is URL-safe base64 of JSON naming the
list it belongs to and the last row's timestamp and id; clients treat it as opaque.

NOTE: the timestamps are PostgreSQL's `now()`, the start of the inserting transaction. A row
whose transaction began before a page was read but committed after it sorts before that
page's cursor and is not returned to a walk already past it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from app.identity.errors import InvalidValueError

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200

RowT = TypeVar("RowT")


@dataclass(frozen=True, slots=True)
class Position:
    """The sort key of the last row on a page."""

    timestamp: datetime
    id: int


@dataclass(frozen=True, slots=True)
class Page(Generic[RowT]):
    items: list[RowT]
    next_cursor: str | None


def encode_cursor(kind: str, position: Position) -> str:
    payload = json.dumps(
        {"k": kind, "t": position.timestamp.isoformat(), "i": position.id},
        separators=(",", ":"),
    )
    return base64.urlsafe_b64encode(payload.encode("utf-8")).decode("ascii").rstrip("=")


def _invalid_cursor(kind: str) -> InvalidValueError:
    return InvalidValueError(
        f"cursor is not a next_cursor value of the {kind} list: start again without cursor",
        field="cursor",
        code="invalid_cursor",
    )


def decode_cursor(kind: str, cursor: str) -> Position:
    """Return the position in `cursor`; raise InvalidValueError (`invalid_cursor`) if it is
    malformed or belongs to another list."""
    if len(cursor) > 512:
        raise _invalid_cursor(kind)
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = json.loads(raw.decode("utf-8"))
        if not isinstance(payload, dict) or payload.get("k") != kind:
            raise _invalid_cursor(kind)
        timestamp = datetime.fromisoformat(payload["t"])
        row_id = payload["i"]
    except (binascii.Error, UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise _invalid_cursor(kind) from None
    if timestamp.tzinfo is None or not isinstance(row_id, int) or isinstance(row_id, bool):
        raise _invalid_cursor(kind)
    return Position(timestamp=timestamp, id=row_id)


async def fetch_page(
    session: AsyncSession,
    query: Select[Any],
    *,
    kind: str,
    timestamp_column: InstrumentedAttribute[datetime],
    id_column: InstrumentedAttribute[int],
    limit: int,
    cursor: str | None,
) -> Page[Any]:
    """Run `query` (a select of one ORM entity) for the page after `cursor`.

    `kind` names the list inside the cursor, so a cursor of one list is rejected by another.
    """
    if cursor is not None:
        position = decode_cursor(kind, cursor)
        query = query.where(
            tuple_(timestamp_column, id_column) > tuple_(position.timestamp, position.id)
        )
    query = query.order_by(timestamp_column, id_column).limit(limit + 1)
    rows: Sequence[Any] = (await session.scalars(query)).all()
    items = list(rows[:limit])
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        next_cursor = encode_cursor(
            kind,
            Position(
                timestamp=getattr(last, timestamp_column.key), id=getattr(last, id_column.key)
            ),
        )
    return Page(items=items, next_cursor=next_cursor)


def escape_like(prefix: str) -> str:
    """Escape LIKE wildcards in `prefix`, for use with `escape="\\\\"`."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
