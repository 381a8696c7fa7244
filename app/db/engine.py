"""Engine and session factory for the service's PostgreSQL database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.util import greenlet_spawn

from app.db.embedded import EmbeddedPostgres
from app.db.errors import leaves_connection_unusable
from app.db.pool import FairAsyncQueuePool
from app.db.url import to_async_url
from app.settings import Settings


def _reject_closed_connection(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Discard a pooled connection whose socket the server has closed.

    asyncpg marks a connection closed as soon as the event loop reads the end of the stream, so
    this check costs no round trip. Raising DisconnectionError makes SQLAlchemy replace this
    connection for the checkout and keep the rest of the pool. After a PostgreSQL restart every
    pooled connection is closed and each is replaced at its own checkout. When one server
    process ends alone (`pg_terminate_backend`, `idle_session_timeout`), the others stay. A
    connection that died silently (a network partition) still fails its first statement. On the
    ORM path SQLAlchemy then invalidates the pool, and on the driver path
    `Database.driver_connection` invalidates the connection.
    """
    if dbapi_connection.driver_connection.is_closed():
        raise exc.DisconnectionError("the server closed the pooled connection")


def create_engine(url: URL, settings: Settings) -> AsyncEngine:
    """Create the pooled engine; every connection gets the configured statement timeout.

    The pool serves checkouts that wait for a connection in arrival order (`app.db.pool`).

    There is no pre-ping: it would cost a round trip on every checkout, which doubles the
    database round trips of a profile fetch. `_reject_closed_connection` catches connections
    closed by a server restart instead.
    """
    engine = create_async_engine(
        url,
        poolclass=FairAsyncQueuePool,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        pool_recycle=settings.db_pool_recycle_seconds,
        # Error messages would otherwise carry bound values (password hashes, logins) to logs.
        hide_parameters=True,
        connect_args={
            "timeout": 5,
            "command_timeout": max(1.0, settings.db_statement_timeout_ms / 1000 + 1),
            "statement_cache_size": settings.db_statement_cache_size,
            "server_settings": {
                "application_name": "sso-provider",
                "statement_timeout": str(settings.db_statement_timeout_ms),
                "lock_timeout": str(settings.db_lock_timeout_ms),
            },
        },
    )
    event.listen(engine.sync_engine, "checkout", _reject_closed_connection)
    return engine


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


@dataclass
class Database:
    """The database a process uses: its URL, engine, and the embedded server if it runs one."""

    url: URL
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    embedded: EmbeddedPostgres | None = None

    def request_session(self) -> AsyncSession:
        """Return a new session for one request's work, which the caller closes."""
        return self.sessionmaker()

    @asynccontextmanager
    async def driver_connection(self) -> AsyncIterator[Any]:
        """Check out a pooled connection and yield the asyncpg connection under it.

        For statements that skip SQLAlchemy, each of which runs as its own transaction. A
        connection whose statement was cancelled, or failed in a way that may have broken it
        (`leaves_connection_unusable`), is invalidated rather than returned to the pool.
        """
        # `raw_connection` skips the AsyncConnection wrapper, and with it about half the CPU
        # time of a checkout through `engine.connect()` (`bench/fetch_cost.py`).
        pooled = await self.engine.raw_connection()
        driver: Any = pooled.driver_connection
        try:
            yield driver
        except BaseException as error:
            # A cancelled statement may leave the connection mid-protocol, so it goes too.
            cancelled = not isinstance(error, Exception)
            if cancelled or driver.is_closed() or leaves_connection_unusable(error):
                await greenlet_spawn(pooled.invalidate, None if cancelled else error)
            raise
        finally:
            await greenlet_spawn(pooled.close)

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self.embedded is not None:
            self.embedded.stop()


def resolve_url(settings: Settings) -> tuple[URL, EmbeddedPostgres | None]:
    """Return the configured database URL, starting the embedded server when none is set."""
    if settings.database_url is not None:
        return to_async_url(settings.database_url.get_secret_value()), None
    embedded = EmbeddedPostgres(settings.data_dir)
    return embedded.start(), embedded


def open_database(settings: Settings, url: URL | None = None) -> Database:
    """Open the database named by `url`, or by the settings when `url` is None."""
    embedded: EmbeddedPostgres | None = None
    if url is None:
        url, embedded = resolve_url(settings)
    engine = create_engine(url, settings)
    return Database(
        url=url, engine=engine, sessionmaker=create_sessionmaker(engine), embedded=embedded
    )


@asynccontextmanager
async def database_for_command(settings: Settings) -> AsyncIterator[Database]:
    """Open the database for a one-shot command and close it (and any embedded server) after."""
    database = open_database(settings)
    try:
        yield database
    finally:
        await database.dispose()
