"""Engine and session factory for the service's PostgreSQL database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.db.embedded import EmbeddedPostgres
from app.db.url import to_async_url
from app.settings import Settings


def create_engine(url: URL, settings: Settings) -> AsyncEngine:
    """Create the pooled engine; every connection gets the configured statement timeout."""
    return create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        pool_pre_ping=True,
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


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


@dataclass
class Database:
    """The database a process uses: its URL, engine, and the embedded server if it runs one."""

    url: URL
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    embedded: EmbeddedPostgres | None = None

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
    return Database(url=url, engine=engine, sessionmaker=create_sessionmaker(engine), embedded=embedded)


@asynccontextmanager
async def database_for_command(settings: Settings) -> AsyncIterator[Database]:
    """Open the database for a one-shot command and close it (and any embedded server) after."""
    database = open_database(settings)
    try:
        yield database
    finally:
        await database.dispose()
