"""An import into an empty store builds its constraints and indexes after loading, safely."""

from __future__ import annotations

import asyncio
import csv
import io
import logging
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.db.engine import create_engine, create_sessionmaker
from app.identity.passwords import PasswordHasher
from app.models import User
from app.settings import Settings
from app.transfer import importer as importer_module
from app.transfer.importer import raw_connection
from tests.conftest import make_settings
from tests.factories import make_user
from tests.rum_messages import basic_auth, child_text, parse, profile_request
from tests.transfer_helpers import run_import, store_checks

HEADER = ["external_reference_id", "login", "shipping_address.country", "attributes.tier"]


def _csv(count: int, *, first_login: str | None = None) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HEADER)
    writer.writeheader()
    for number in range(count):
        writer.writerow(
            {
                "external_reference_id": f"BULK-{number}",
                "login": f"bulk{number}@example.com",
                "shipping_address.country": "DE" if number % 2 else "",
                "attributes.tier": "gold" if number % 3 == 0 else "",
            }
        )
    content = buffer.getvalue()
    if first_login is not None:
        content = content.replace("bulk0@example.com", first_login, 1)
    return content


async def _checks(session: AsyncSession) -> dict[tuple[str, str, str], int]:
    return await store_checks(await raw_connection(session))


def _recreated(before: dict[Any, int], after: dict[Any, int]) -> set[str]:
    """Names of the constraints and indexes whose OID changed; the definitions must match."""
    assert set(after) == set(before)
    return {key[1] for key in before if before[key] != after[key]}


async def test_empty_store_gets_every_check_back(
    session: AsyncSession, hasher: PasswordHasher, caplog: pytest.LogCaptureFixture
) -> None:
    before = await _checks(session)
    phases: list[str] = []
    with caplog.at_level(logging.INFO, logger="app.transfer.importer"):
        summary, errors = await run_import(
            session,
            hasher,
            _csv(12),
            batch_rows=5,
            exclusive_min_bytes=0,
            progress=lambda update: phases.append(update.phase),
        )
    assert errors == []
    assert summary.rows_imported == 12
    assert "import.exclusive_load constraints=4 indexes=4" in caplog.text
    assert phases[-2:] == ["indexing", "done"]

    # The same definitions under new OIDs: each was dropped and recreated, the primary key and
    # the check constraints were not.
    assert _recreated(before, await _checks(session)) == {
        "uq_users_login_normalized",
        "uq_users_user_key",
        "uq_users_external_reference_id_lower",
        "ix_users_created_at_id",
        "ix_users_email_lower",
        "ix_users_last_name_lower",
        "fk_user_addresses_user_id_users",
        "fk_user_attributes_user_id_users",
    }

    # And they hold again.
    connection = await raw_connection(session)
    for statement, rejected in [
        (
            "INSERT INTO user_addresses (user_id, kind) VALUES (-1, 'shipping')",
            asyncpg.ForeignKeyViolationError,
        ),
        (
            "INSERT INTO user_attributes (user_id, name, value) VALUES (-1, 'tier', 'x')",
            asyncpg.ForeignKeyViolationError,
        ),
        (
            "INSERT INTO users (user_key, external_reference_id, login, login_normalized,"
            " status) VALUES (gen_random_uuid(), 'OTHER-1', 'x', 'bulk1@example.com',"
            " 'active')",
            asyncpg.UniqueViolationError,
        ),
    ]:
        with pytest.raises(rejected):
            async with connection.transaction():
                await connection.execute(statement)


async def test_store_with_users_checks_row_by_row(
    session: AsyncSession, hasher: PasswordHasher
) -> None:
    await make_user(session, hasher, external_reference_id="ALREADY-1")
    await session.commit()
    before = await _checks(session)
    summary, errors = await run_import(
        session, hasher, _csv(12), batch_rows=5, exclusive_min_bytes=0
    )
    assert (errors, summary.rows_imported) == ([], 12)
    assert _recreated(before, await _checks(session)) == set()


@pytest.mark.parametrize(
    "options", [{}, {"exclusive_min_bytes": 0, "exclusive_load": False}], ids=["small", "off"]
)
async def test_row_by_row_when_small_or_off(
    session: AsyncSession, hasher: PasswordHasher, options: dict[str, Any]
) -> None:
    before = await _checks(session)
    summary, errors = await run_import(session, hasher, _csv(12), batch_rows=5, **options)
    assert (errors, summary.rows_imported) == ([], 12)
    assert _recreated(before, await _checks(session)) == set()


async def test_table_in_use_elsewhere_checks_row_by_row(
    session: AsyncSession,
    hasher: PasswordHasher,
    shared_engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = await _checks(session)
    async with shared_engine.connect() as other:
        # An open transaction that has read users holds a lock that NOWAIT cannot pass.
        await other.execute(text("SELECT count(*) FROM users"))
        with caplog.at_level(logging.INFO, logger="app.transfer.importer"):
            summary, errors = await run_import(
                session, hasher, _csv(12), batch_rows=5, exclusive_min_bytes=0
            )
        await other.rollback()
    assert (errors, summary.rows_imported) == ([], 12)
    assert "import.exclusive_load_skipped reason=LockNotAvailableError" in caplog.text
    assert _recreated(before, await _checks(session)) == set()


async def test_rebuilt_constraint_conflict_reported(
    session: AsyncSession, hasher: PasswordHasher, caplog: pytest.LogCaptureFixture
) -> None:
    # Rows 2 and 12 share a login after normalisation, in different batches. No row error and
    # no ledger index catches that while loading; the rebuilt unique constraint does.
    content = _csv(11, first_login="BULK10@Example.com")
    before = await _checks(session)
    with caplog.at_level(logging.INFO, logger="app.transfer.importer"):
        summary, errors = await run_import(
            session, hasher, content, batch_rows=5, exclusive_min_bytes=0
        )
    assert "import.exclusive_load " in caplog.text
    assert "import.direct_path_stopped reason=uq_users_login_normalized" in caplog.text
    assert sorted((error.row, error.field, error.code) for error in errors) == [
        (2, "login", "duplicate_in_file"),
        (12, "login", "duplicate_in_file"),
    ]
    assert summary.written is False
    assert await session.scalar(select(func.count()).select_from(User)) == 0
    # Rolling back the direct path brought back the originals, OIDs included.
    assert await _checks(session) == before


def _pause_second_copy(monkeypatch: pytest.MonkeyPatch) -> tuple[asyncio.Event, asyncio.Event]:
    """Make imports wait before their second COPY, holding their lock; return (paused, resume).

    The first batch is loaded by then, so the constraints and indexes are dropped.
    """
    paused = asyncio.Event()
    resume = asyncio.Event()
    copies = 0
    copy_batch = importer_module.copy_batch

    async def second_copy_pauses(*args: Any, **kwargs: Any) -> None:
        nonlocal copies
        copies += 1
        if copies == 2:
            paused.set()
            await resume.wait()
        await copy_batch(*args, **kwargs)

    monkeypatch.setattr(importer_module, "copy_batch", second_copy_pauses)
    return paused, resume


async def test_cancelled_import_keeps_every_check(
    session: AsyncSession, hasher: PasswordHasher, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = await _checks(session)
    paused, _ = _pause_second_copy(monkeypatch)
    task = asyncio.create_task(
        run_import(session, hasher, _csv(12), batch_rows=5, exclusive_min_bytes=0)
    )
    await asyncio.wait_for(paused.wait(), timeout=30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await session.rollback()
    assert await session.scalar(select(func.count()).select_from(User)) == 0
    assert await _checks(session) == before


@pytest.fixture
def settings() -> Settings:
    # A callback that waits for the import's lock gives up after this long.
    return make_settings(db_lock_timeout_ms=200)


async def test_fetch_during_exclusive_load_is_retried(
    committed_client: httpx.AsyncClient,
    fresh_database_url: URL,
    hasher: PasswordHasher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    paused, resume = _pause_second_copy(monkeypatch)
    engine = create_engine(fresh_database_url, make_settings())
    try:
        async with create_sessionmaker(engine)() as session:
            task = asyncio.create_task(
                run_import(session, hasher, _csv(12), batch_rows=5, exclusive_min_bytes=0)
            )
            await asyncio.wait_for(paused.wait(), timeout=30)

            waiting = await committed_client.post(
                "/rum/user-profile", content=profile_request("BULK-1"), headers=basic_auth()
            )
            resume.set()
            summary, errors = await task
    finally:
        await engine.dispose()

    assert waiting.status_code == 503
    assert waiting.headers["Retry-After"]
    assert (errors, summary.rows_imported) == ([], 12)
    found = await committed_client.post(
        "/rum/user-profile", content=profile_request("BULK-1"), headers=basic_auth()
    )
    assert found.status_code == 200
    assert child_text(parse(found.content), "userInfo", "userKey", "externalReferenceID") == (
        "BULK-1"
    )
