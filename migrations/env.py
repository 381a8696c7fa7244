"""Alembic environment: runs migrations under a PostgreSQL advisory lock.

Used two ways: by `alembic` on the command line, which opens its own connection from
`SSO_DATABASE_URL` (or the embedded server), and by `app.db.migrate`, which passes an open
connection in `config.attributes["connection"]`.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from app.models import Base

# Any fixed 64-bit number works; replicas starting together all wait on this one.
MIGRATION_LOCK_ID = 7_405_311_209_845_003

target_metadata = Base.metadata


def run_with_connection(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
        context.run_migrations()


async def run_online() -> None:
    from app.db.engine import resolve_url
    from app.settings import Settings

    url, embedded = resolve_url(Settings())
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_with_connection)
            await connection.commit()
    finally:
        await engine.dispose()
        if embedded is not None:
            embedded.stop()


if context.is_offline_mode():
    raise SystemExit("offline SQL generation is not supported: run against a database")

given = context.config.attributes.get("connection")
if given is not None:
    run_with_connection(given)
else:
    asyncio.run(run_online())
