"""The import report: every planted conflict kind is found, and nothing else."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.identity.passwords import PasswordHasher
from app.identity.service import erase_user
from app.models import AuditEvent, IssuedIdentifier, User, UserAddress, UserAttribute
from app.transfer import importer as importer_module
from app.transfer.formats import FileFormatError
from app.transfer.importer import Importer, ImportOptions, ImportSummary
from app.transfer.validate import RowError
from tests.factories import make_user
from tests.transfer_helpers import run_import

HEADER = [
    "user_key",
    "external_reference_id",
    "login",
    "status",
    "email",
    "locale",
    "shipping_address.country",
    "password_hash",
    "attributes.tier",
]
SSHA = "{SSHA}jkD32mUwrEGfWypIamCDiMKa5GphLIXQ"


def _csv(rows: list[dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HEADER)
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return buffer.getvalue()


async def _imported_count(session: AsyncSession) -> int:
    return (
        await session.scalar(
            select(func.count()).select_from(User).where(User.created_via == "import")
        )
        or 0
    )


@pytest.fixture
async def planted(
    session: AsyncSession, hasher: PasswordHasher
) -> tuple[str, set[tuple[int, str, str]]]:
    """Return a CSV file with one row per conflict kind, and the (row, field, code) expected."""
    existing = await make_user(
        session, hasher, login="taken@example.com", external_reference_id="EXISTING-1"
    )
    erased = await make_user(session, hasher, external_reference_id="ERASED-1")
    await erase_user(session, erased)
    await session.commit()

    rows = [
        {"login": "ok1@example.com", "external_reference_id": "OK-1", "password_hash": SSHA},  # 2
        {"login": "dup-a@example.com", "external_reference_id": "DUP-1"},  # 3
        {"login": "dup-b@example.com", "external_reference_id": "dup-1"},  # 4
        {"login": "Émile@Example.com"},  # 5
        {"login": "e\u0301mile@example.com"},  # 6
        {"login": "TAKEN@example.com"},  # 7
        {"login": "erid-taken@example.com", "external_reference_id": "existing-1"},  # 8
        {"login": "erid-reserved@example.com", "external_reference_id": "ERASED-1"},  # 9
        {"login": "key-taken@example.com", "user_key": str(existing.user_key)},  # 10
        {"login": "bad-email@example.com", "email": "not an email"},  # 11
        {"login": "bad-country@example.com", "shipping_address.country": "XX"},  # 12
        {"login": "bad-hash@example.com", "password_hash": "md5$x$y"},  # 13
        {"login": "bad-erid@example.com", "external_reference_id": "bad erid!"},  # 14
        {"login": " space@example.com"},  # 15
        {"login": "key-a@example.com", "user_key": "0f6c5e8e-0a8e-4b8f-9c59-6a1f4f0f9a01"},  # 16
        {"login": "key-b@example.com", "user_key": "0F6C5E8E-0A8E-4B8F-9C59-6A1F4F0F9A01"},  # 17
        {"login": "erased-status@example.com", "status": "erased"},  # 18
        {"login": "bad-locale@example.com", "locale": "english"},  # 19
        {"login": "ok2@example.com", "locale": "de_DE", "attributes.tier": "gold"},  # 20
    ]
    content = _csv(rows) + "short,row\n"  # line 21: too few fields
    expected = {
        (3, "external_reference_id", "duplicate_in_file"),
        (4, "external_reference_id", "duplicate_in_file"),
        (5, "login", "duplicate_in_file"),
        (6, "login", "duplicate_in_file"),
        (7, "login", "already_exists"),
        (8, "external_reference_id", "already_exists"),
        (9, "external_reference_id", "identifier_reserved"),
        (10, "user_key", "already_exists"),
        (11, "email", "invalid_value"),
        (12, "shipping_address.country", "invalid_value"),
        (13, "password_hash", "invalid_value"),
        (14, "external_reference_id", "invalid_value"),
        (15, "login", "invalid_value"),
        (16, "user_key", "duplicate_in_file"),
        (17, "user_key", "duplicate_in_file"),
        (18, "status", "invalid_value"),
        (19, "locale", "invalid_value"),
        (21, "row", "malformed_row"),
    }
    return content, expected


async def test_report_finds_every_conflict(
    session: AsyncSession, hasher: PasswordHasher, planted: tuple[str, set[tuple[int, str, str]]]
) -> None:
    content, expected = planted
    summary, errors = await run_import(session, hasher, content)

    found = {(error.row, error.field, error.code) for error in errors}
    assert found == expected
    assert len(errors) == len(expected)
    assert [error.row for error in errors] == sorted(error.row for error in errors)
    assert summary.rows_read == 20
    assert summary.rows_rejected == len(expected)
    assert summary.rows_valid == 20 - len(expected)
    assert summary.written is False
    assert await _imported_count(session) == 0


async def test_report_messages_name_other_row(
    session: AsyncSession, hasher: PasswordHasher, planted: tuple[str, set[tuple[int, str, str]]]
) -> None:
    content, _ = planted
    _, errors = await run_import(session, hasher, content, dry_run=True)
    by_row = {(error.row, error.field): error.message for error in errors}
    assert "also in row 4" in by_row[(3, "external_reference_id")]
    assert "also in row 3" in by_row[(4, "external_reference_id")]
    assert "case-insensitively" in by_row[(4, "external_reference_id")]
    assert "also in row 5" in by_row[(6, "login")]
    assert "erased" in by_row[(9, "external_reference_id")]
    assert "2 fields but the header has 9" in by_row[(21, "row")]


async def test_skip_invalid_writes_only_valid_rows(
    session: AsyncSession, hasher: PasswordHasher, planted: tuple[str, set[tuple[int, str, str]]]
) -> None:
    content, expected = planted
    audit_before = await session.scalar(select(func.count()).select_from(AuditEvent))

    summary, errors = await run_import(session, hasher, content, skip_invalid=True)

    assert {(error.row, error.field, error.code) for error in errors} == expected
    assert summary.rows_imported == 2
    assert summary.written is True
    imported = (
        await session.scalars(select(User).where(User.created_via == "import").order_by(User.id))
    ).all()
    assert [user.login for user in imported] == ["ok1@example.com", "ok2@example.com"]
    assert imported[0].external_reference_id == "OK-1"
    assert imported[0].password_hash == SSHA
    assert imported[0].password_changed_at is not None
    assert imported[1].password_hash is None
    assert imported[1].password_changed_at is None
    attributes = (
        await session.scalars(select(UserAttribute).where(UserAttribute.user_id == imported[1].id))
    ).all()
    assert [(a.name, a.value) for a in attributes] == [("tier", "gold")]
    audit_after = await session.scalar(select(func.count()).select_from(AuditEvent))
    assert audit_after == (audit_before or 0) + 1


async def test_dry_run_writes_nothing(session: AsyncSession, hasher: PasswordHasher) -> None:
    content = _csv([{"login": "dry@example.com", "shipping_address.country": "FR"}])
    summary, errors = await run_import(session, hasher, content, dry_run=True)
    assert errors == []
    assert summary.rows_valid == 1
    assert summary.rows_imported == 0
    assert summary.written is False
    assert await _imported_count(session) == 0
    assert await session.scalar(select(func.count()).select_from(UserAddress)) == 0


async def test_clean_file_imports_everything(session: AsyncSession, hasher: PasswordHasher) -> None:
    content = (
        "\ufefflogin,external_reference_id,shipping_address.line1,shipping_address.country,"
        "billing_address.city\n"
        'one@example.com,ONE-1,"12 rue de la Paix\nBâtiment B",FR,Paris\n'
        "two@example.com,,,,\n"
    )
    summary, errors = await run_import(session, hasher, content)
    assert errors == []
    assert summary.rows_imported == 2
    users = (
        await session.scalars(select(User).where(User.created_via == "import").order_by(User.id))
    ).all()
    assert users[0].external_reference_id == "ONE-1"
    assert len(users[1].external_reference_id) == 36
    addresses = (
        await session.scalars(
            select(UserAddress).where(UserAddress.user_id == users[0].id).order_by(UserAddress.kind)
        )
    ).all()
    assert [(a.kind, a.line1, a.country, a.city) for a in addresses] == [
        ("billing", None, None, "Paris"),
        ("shipping", "12 rue de la Paix\nBâtiment B", "FR", None),
    ]


async def test_row_numbers_follow_file_lines(session: AsyncSession, hasher: PasswordHasher) -> None:
    content = (
        "login,shipping_address.line1,email\n"
        'a@example.com,"two\nlines",a@example.com\n'
        "\n"
        "b@example.com,,broken\n"
    )
    _, errors = await run_import(session, hasher, content, dry_run=True)
    assert [(error.row, error.field) for error in errors] == [(5, "email")]


async def test_ndjson_rows_and_flattened_keys(
    session: AsyncSession, hasher: PasswordHasher
) -> None:
    lines = [
        json.dumps({"login": "n1@example.com", "shipping_address": {"country": "DE"}}),
        "",
        json.dumps({"login": "n2@example.com", "billing_address.city": "Berlin"}),
        "[1, 2]",
        "{not json",
        json.dumps({"login": "n3@example.com", "nickname": "x"}),
        json.dumps({"login": "n4@example.com", "attributes": {"a": "1"}, "attributes.a": "2"}),
    ]
    summary, errors = await run_import(
        session, hasher, "\n".join(lines) + "\n", "ndjson", dry_run=True
    )
    assert [(error.row, error.field, error.code) for error in errors] == [
        (4, "row", "malformed_row"),
        (5, "row", "malformed_row"),
        (6, "nickname", "invalid_value"),
        (7, "row", "malformed_row"),
    ]
    assert summary.rows_valid == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("login,emial\na@example.com,x\n", "unknown column 'emial'"),
        ("login,login\n", "appears twice"),
        ("email\nx@example.com\n", "no login column"),
        ("login,password\na@example.com,secret-secret\n", "--allow-plain-passwords"),
        ("", "empty"),
    ],
)
async def test_bad_header_rejects_file(
    session: AsyncSession, hasher: PasswordHasher, content: str, message: str
) -> None:
    with pytest.raises(FileFormatError, match=message):
        await run_import(session, hasher, content)
    assert await _imported_count(session) == 0


async def test_invalid_utf8_rejects_file(session: AsyncSession, hasher: PasswordHasher) -> None:
    content = b"login\nok@example.com\n\xff\xfe@example.com\n"
    with pytest.raises(FileFormatError, match="not valid UTF-8"):
        await run_import(session, hasher, content)
    assert await _imported_count(session) == 0


@pytest.mark.parametrize("workers", [1, 2], ids=["thread", "worker_processes"])
async def test_small_batches_give_same_report(
    session: AsyncSession,
    hasher: PasswordHasher,
    planted: tuple[str, set[tuple[int, str, str]]],
    workers: int,
) -> None:
    content, expected = planted
    summary, errors = await run_import(
        session, hasher, content, skip_invalid=True, workers=workers, batch_rows=3
    )
    assert {(error.row, error.field, error.code) for error in errors} == expected
    assert summary.rows_read == 20
    assert summary.rows_imported == 2


async def test_bad_bytes_after_copied_batches(
    session: AsyncSession, hasher: PasswordHasher
) -> None:
    # The good rows fill more than the reader's 8 KiB decoding buffer, so batches of 100 rows
    # have been copied, and one may still be copying, when the reader reaches the bad bytes.
    good = "".join(f"early{number}@example.com\n" for number in range(1000))
    content = b"login\n" + good.encode() + b"\xff\xfe@example.com\n"
    phases: list[str] = []
    with pytest.raises(FileFormatError, match="not valid UTF-8"):
        await run_import(
            session,
            hasher,
            content,
            batch_rows=100,
            progress=lambda update: phases.append(update.phase),
        )
    assert len(phases) >= 2
    await session.rollback()
    assert await _imported_count(session) == 0

    summary, errors = await run_import(session, hasher, "login\nafter@example.com\n")
    assert errors == []
    assert summary.rows_imported == 1


class _Unseekable(io.RawIOBase):
    """A byte stream that cannot seek, like a pipe: the importer takes the staged path only."""

    def __init__(self, data: bytes) -> None:
        self._source = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._source.readinto(buffer)


async def _import_stream(
    session: AsyncSession, hasher: PasswordHasher, source: Any, **options: Any
) -> tuple[ImportSummary, list[RowError]]:
    errors: list[RowError] = []
    importer = Importer(
        session, hasher, ImportOptions(file_format="csv", **options), report=errors.append
    )
    summary = await importer.run(source)
    await session.commit()
    return summary, errors


async def _table_count(session: AsyncSession, model: Any) -> int:
    return await session.scalar(select(func.count()).select_from(model)) or 0


async def test_late_conflict_restarts_on_staged_path(
    session: AsyncSession,
    hasher: PasswordHasher,
    planted: tuple[str, set[tuple[int, str, str]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    users_before = await _table_count(session, User)
    ledger_before = await _table_count(session, IssuedIdentifier)
    good = [{"login": f"early{number}@example.com"} for number in range(9)]
    late = {"login": "late@example.com", "external_reference_id": "EXISTING-1"}
    content = _csv([*good, late]).encode()

    # Batches of two rows: four batches go into users before the fifth one conflicts.
    with caplog.at_level(logging.INFO, logger="app.transfer.importer"):
        direct_summary, direct_errors = await _import_stream(
            session, hasher, io.BytesIO(content), batch_rows=2
        )
    assert "import.direct_path_stopped" in caplog.text
    assert "rows_read=10" in caplog.text
    staged_summary, staged_errors = await _import_stream(
        session, hasher, io.BufferedReader(_Unseekable(content)), batch_rows=2
    )

    assert direct_errors == staged_errors
    assert [(error.row, error.code) for error in direct_errors] == [(11, "already_exists")]
    assert direct_summary.as_dict() | {"seconds": 0} == staged_summary.as_dict() | {"seconds": 0}
    assert direct_summary.rows_read == 10
    assert direct_summary.written is False
    assert await _table_count(session, User) == users_before
    assert await _table_count(session, IssuedIdentifier) == ledger_before
    assert await _table_count(session, AuditEvent) == 0


async def test_direct_path_keeps_file_order(session: AsyncSession, hasher: PasswordHasher) -> None:
    rows = [
        {
            "login": f"user{number}@example.com",
            "external_reference_id": f"ORDER-{number}",
            "shipping_address.country": "DE" if number % 2 else "",
            "attributes.tier": "gold" if number % 3 == 0 else "",
        }
        for number in range(7)
    ]
    phases: list[str] = []
    summary, errors = await run_import(
        session,
        hasher,
        _csv(rows),
        batch_rows=3,
        progress=lambda update: phases.append(update.phase),
    )
    assert errors == []
    assert summary.rows_imported == 7
    assert summary.written is True
    assert "inserting while reading" in phases

    users = (
        await session.scalars(select(User).where(User.created_via == "import").order_by(User.id))
    ).all()
    assert [user.external_reference_id for user in users] == [f"ORDER-{n}" for n in range(7)]
    ledger = await session.scalar(
        select(func.count())
        .select_from(IssuedIdentifier)
        .where(IssuedIdentifier.user_key.in_([user.user_key for user in users]))
    )
    assert ledger == 7
    addresses = (await session.scalars(select(UserAddress.user_id))).all()
    assert sorted(addresses) == [users[n].id for n in (1, 3, 5)]
    attributes = (await session.scalars(select(UserAttribute.user_id))).all()
    assert sorted(attributes) == [users[n].id for n in (0, 3, 6)]
    events = (
        await session.scalars(select(AuditEvent).where(AuditEvent.action == "users.import"))
    ).all()
    assert len(events) == 1
    assert events[0].details["rows_imported"] == 7


async def test_import_cancelled_during_copy_writes_nothing(
    session: AsyncSession, hasher: PasswordHasher, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [{"login": f"cancelled{number}@example.com"} for number in range(300)]
    copying = asyncio.Event()
    copies = 0
    cancelled_in_copy = False
    copy_batch = importer_module.copy_batch

    async def second_copy_signals(*args: Any, **kwargs: Any) -> None:
        nonlocal copies, cancelled_in_copy
        copies += 1
        if copies != 2:
            await copy_batch(*args, **kwargs)
            return
        # The test cancels the import at the COPY's first wait for the server.
        copying.set()
        try:
            await copy_batch(*args, **kwargs)
        except asyncio.CancelledError:
            cancelled_in_copy = True
            raise

    monkeypatch.setattr(importer_module, "copy_batch", second_copy_signals)
    task = asyncio.create_task(run_import(session, hasher, _csv(rows), batch_rows=100))
    await asyncio.wait_for(copying.wait(), timeout=30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled_in_copy
    await session.rollback()
    assert await _imported_count(session) == 0

    monkeypatch.setattr(importer_module, "copy_batch", copy_batch)
    summary, errors = await run_import(session, hasher, _csv(rows), batch_rows=100)
    assert errors == []
    assert summary.rows_imported == 300
