"""Engine and session factory for the service's PostgreSQL database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg
from sqlalchemy import event, exc
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.db.driver_pool import DriverPool
from app.db.embedded import EmbeddedPostgres
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
    connection that died silently (a network partition) still fails its first statement, and
    SQLAlchemy then invalidates the pool. The driver pool checks its own connections the same
    way (`app.db.driver_pool`).
    """
    if dbapi_connection.driver_connection.is_closed():
        raise exc.DisconnectionError("the server closed the pooled connection")


def connect_arguments(settings: Settings) -> dict[str, Any]:
    """Return the asyncpg connect arguments that every connection of the service gets."""
    return {
        "timeout": 5,
        "command_timeout": max(1.0, settings.db_statement_timeout_ms / 1000 + 1),
        "statement_cache_size": settings.db_statement_cache_size,
        "server_settings": {
            "application_name": "sso-provider",
            "statement_timeout": str(settings.db_statement_timeout_ms),
            "lock_timeout": str(settings.db_lock_timeout_ms),
        },
    }


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
        connect_args=connect_arguments(settings),
    )
    event.listen(engine.sync_engine, "checkout", _reject_closed_connection)
    return engine


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


# Options of SQLAlchemy's asyncpg dialect that asyncpg itself does not take.
_SQLALCHEMY_ONLY_OPTIONS: Final = (
    "prepared_statement_cache_size",
    "prepared_statement_name_func",
    "async_creator_fn",
)


@dataclass
class Database:
    """The database a process uses: its URL, engine, and the embedded server if it runs one.

    Statements that skip SQLAlchemy get their connections from a separate `DriverPool` of at
    most `driver_pool_size` connections, opened on first use with the engine's connect
    arguments (`connect_args`), so they carry the same server settings and timeouts.
    """

    url: URL
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    embedded: EmbeddedPostgres | None = None
    driver_pool_size: int = 10
    pool_timeout_seconds: float = 2.0
    pool_recycle_seconds: float = 1800.0
    connect_args: dict[str, Any] = field(
        default_factory=lambda: connect_arguments(Settings.model_construct())
    )
    _driver_pool: DriverPool | None = field(default=None, init=False, repr=False)

    def request_session(self) -> AsyncSession:
        """Return a new session for one request's work, which the caller closes."""
        return self.sessionmaker()

    @property
    def driver_pool(self) -> DriverPool:
        if self._driver_pool is None:
            self._driver_pool = DriverPool(
                self._open_driver_connection,
                size=self.driver_pool_size,
                timeout=self.pool_timeout_seconds,
                recycle=self.pool_recycle_seconds,
            )
        return self._driver_pool

    def driver_connection(self) -> AbstractAsyncContextManager[Any]:
        """Check out an asyncpg connection from the driver pool (`app.db.driver_pool`).

        For statements that skip SQLAlchemy, each of which runs as its own transaction. A
        connection whose statement was cancelled, or failed in a way that may have broken it
        (`leaves_connection_unusable`), is closed rather than returned to the pool.
        """
        return self.driver_pool.connection()

    async def _open_driver_connection(self) -> Any:
        # The address and options come from the URL as SQLAlchemy reads it (several hosts and
        # `target_session_attrs` included), the rest from the engine's connect arguments.
        _, parameters = self.engine.dialect.create_connect_args(self.url)
        for option in _SQLALCHEMY_ONLY_OPTIONS:
            parameters.pop(option, None)
        # The connect arguments win over the same options in the URL, as with SQLAlchemy's.
        # No client-side command timeout: these statements run only inside callbacks, whose
        # time limit cancels them, and a cancelled statement's connection is closed. asyncpg
        # would otherwise set and cancel a timer on the event loop for every statement.
        return await asyncpg.connect(
            **{**parameters, **self.connect_args, "command_timeout": None}
        )

    def driver_pool_stats(self) -> dict[str, int]:
        """Return the driver pool's numbers, without opening a pool that is not open."""
        if self._driver_pool is None:
            return {"size": self.driver_pool_size, "open": 0, "in_use": 0, "idle": 0, "waiting": 0}
        return self._driver_pool.stats()

    async def close_driver_pool(self) -> None:
        """Close the driver pool's connections; a later checkout opens a new pool."""
        pool, self._driver_pool = self._driver_pool, None
        if pool is not None:
            await pool.close()

    async def dispose(self) -> None:
        await self.close_driver_pool()
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
    return database_for(url, create_engine(url, settings), settings, embedded)


def database_for(
    url: URL, engine: AsyncEngine, settings: Settings, embedded: EmbeddedPostgres | None = None
) -> Database:
    """Return the Database for `engine`, with the driver pool sized by `settings`."""
    return Database(
        url=url,
        engine=engine,
        sessionmaker=create_sessionmaker(engine),
        embedded=embedded,
        driver_pool_size=settings.db_driver_pool_size,
        pool_timeout_seconds=settings.db_pool_timeout_seconds,
        pool_recycle_seconds=settings.db_pool_recycle_seconds,
        connect_args=connect_arguments(settings),
    )


@asynccontextmanager
async def database_for_command(settings: Settings) -> AsyncIterator[Database]:
    """Open the database for a one-shot command and close it (and any embedded server) after."""
    database = open_database(settings)
    try:
        yield database
    finally:
        await database.dispose()
