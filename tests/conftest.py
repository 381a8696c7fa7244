"""Shared fixtures: a real PostgreSQL built by the migrations, the app, and HTTP clients."""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.db.engine import Database, create_engine, create_sessionmaker, database_for
from app.db.migrate import upgrade_to_head
from app.identity.passwords import PasswordHasher
from app.main import create_app
from app.settings import Settings
from app.transfer.importer import raw_connection
from tests.database import TestServer

RUM_USERNAME = "digitalriver"
RUM_PASSWORD = "callback-secret-for-tests"

_clone_numbers = itertools.count(1)


def make_settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "environment": "development",
        "rum_username": RUM_USERNAME,
        "rum_password": RUM_PASSWORD,
        "dr_site_id": "headwtr",
        "log_format": "console",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


# Variables that configure the test run itself rather than the service under test.
_TEST_RUN_VARIABLES = {"SSO_TEST_DATABASE_URL", "SSO_REQUIRE_BROWSER"}


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment() -> Iterator[None]:
    """Hide the caller's SSO_ variables, so settings in tests come only from the tests."""
    saved = {
        name: value
        for name, value in os.environ.items()
        if name.startswith("SSO_") and name not in _TEST_RUN_VARIABLES
    }
    for name in saved:
        del os.environ[name]
    yield
    os.environ.update(saved)


@pytest.fixture(scope="session")
def test_server() -> Iterator[TestServer]:
    scratch = Path(tempfile.mkdtemp(prefix="sso-test-pg-"))
    server = TestServer.start(scratch)
    yield server
    server.stop()


@pytest.fixture(scope="session")
async def template_database(test_server: TestServer) -> AsyncIterator[str]:
    """Name of a database migrated to head, cloned by the other fixtures and never connected."""
    url = await test_server.create("template")
    engine = create_engine(url, make_settings())
    try:
        await upgrade_to_head(engine)
    finally:
        await engine.dispose()
    yield url.database or ""
    await test_server.drop_all()


@pytest.fixture(scope="session")
async def shared_database_url(test_server: TestServer, template_database: str) -> URL:
    return await test_server.create("shared", template=template_database)


@pytest.fixture(scope="session")
async def shared_engine(shared_database_url: URL) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(shared_database_url, make_settings())
    yield engine
    await engine.dispose()


@pytest.fixture
async def session(shared_engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    """A session inside a transaction that is rolled back after the test.

    Commits made by the code under test only release savepoints, so nothing persists.
    """
    async with shared_engine.connect() as connection:
        transaction = await connection.begin()
        test_session = AsyncSession(
            bind=connection,
            expire_on_commit=False,
            autoflush=False,
            join_transaction_mode="create_savepoint",
        )
        try:
            yield test_session
        finally:
            await test_session.close()
            await transaction.rollback()


@pytest.fixture
async def fresh_database_url(test_server: TestServer, template_database: str) -> AsyncIterator[URL]:
    """A new migrated database for tests that need real commits and many connections."""
    url = await test_server.create(f"fresh{next(_clone_numbers)}", template=template_database)
    yield url
    await test_server.drop(url.database or "")


@pytest.fixture
def settings() -> Settings:
    return make_settings()


async def _running(app: FastAPI) -> AsyncIterator[FastAPI]:
    async with app.router.lifespan_context(app):
        yield app


class BorrowedSession:
    """The test's session as the app's sessionmaker hands it out: the app cannot close it."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> AsyncSession:
        return self._session

    async def __aexit__(self, *exc_info: object) -> None:
        return None


@dataclass
class SessionBoundDatabase(Database):
    """A Database whose request sessions and driver-level statements run in the test's transaction.

    Sessions from `sessionmaker` stay independent of it, as a streaming export's own session is.
    """

    session: AsyncSession | None = None

    def request_session(self) -> AsyncSession:
        assert self.session is not None
        return BorrowedSession(self.session)  # type: ignore[return-value]

    @asynccontextmanager
    async def driver_connection(self) -> AsyncIterator[Any]:
        assert self.session is not None
        # The test's transaction is open on the driver connection, so the caller's statement
        # runs inside it and is rolled back with it.
        yield await raw_connection(self.session)


@pytest.fixture
async def app(
    settings: Settings, shared_database_url: URL, shared_engine: AsyncEngine, session: AsyncSession
) -> AsyncIterator[FastAPI]:
    """The service on the shared database, every request using the test's rolled-back session."""

    database = SessionBoundDatabase(
        url=shared_database_url,
        engine=shared_engine,
        sessionmaker=create_sessionmaker(shared_engine),
        session=session,
    )
    application = create_app(settings, database=database)
    async for running in _running(application):
        yield running


@pytest.fixture
async def committed_app(settings: Settings, fresh_database_url: URL) -> AsyncIterator[FastAPI]:
    """The service on its own fresh database, with a real pool and real commits."""
    engine = create_engine(fresh_database_url, settings)
    database = database_for(fresh_database_url, engine, settings)
    application = create_app(settings, database=database)
    try:
        async for running in _running(application):
            yield running
    finally:
        await engine.dispose()


def _client(application: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=application), base_url="http://testserver"
    )


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(app) as http:
        yield http


@pytest.fixture
async def committed_client(committed_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(committed_app) as http:
        yield http


@pytest.fixture(scope="session")
def hasher() -> Iterator[PasswordHasher]:
    password_hasher = PasswordHasher(make_settings())
    yield password_hasher
    password_hasher.close()
