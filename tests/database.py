"""Test databases on a real PostgreSQL server.

The server is the one named by `SSO_TEST_DATABASE_URL`, or an embedded server started for the
run. A template database is built once by the Alembic migrations; tests get clones of it, and
every database the run creates is dropped at the end, so the server is left as it was found.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import asyncpg
from sqlalchemy.engine import URL

from app.db.embedded import EmbeddedPostgres
from app.db.url import to_async_url, to_libpq_dsn


class TestServer:
    """Creates and drops databases on one PostgreSQL server."""

    __test__ = False  # a helper, not a test class

    def __init__(self, url: URL, embedded: EmbeddedPostgres | None) -> None:
        self.url = url
        self.embedded = embedded
        self.prefix = f"sso_test_{os.getpid()}_{secrets.token_hex(3)}"
        self.created: list[str] = []

    @classmethod
    def start(cls, scratch: Path) -> TestServer:
        raw = os.environ.get("SSO_TEST_DATABASE_URL")
        if raw:
            return cls(to_async_url(raw), None)
        embedded = EmbeddedPostgres(scratch)
        return cls(embedded.start(database="postgres"), embedded)

    def database_url(self, name: str) -> URL:
        return self.url.set(database=name)

    async def _admin(self) -> asyncpg.Connection:
        return await asyncpg.connect(to_libpq_dsn(self.url))

    async def create(self, suffix: str, *, template: str | None = None) -> URL:
        name = f"{self.prefix}_{suffix}"
        connection = await self._admin()
        try:
            clause = f" TEMPLATE {template}" if template else ""
            await connection.execute(f'CREATE DATABASE "{name}"{clause}')
        finally:
            await connection.close()
        self.created.append(name)
        return self.database_url(name)

    async def drop(self, name: str) -> None:
        connection = await self._admin()
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()
        if name in self.created:
            self.created.remove(name)

    async def drop_all(self) -> None:
        for name in list(reversed(self.created)):
            await self.drop(name)

    def stop(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()
