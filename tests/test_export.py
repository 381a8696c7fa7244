"""Export in the import format: exact round trips, filters, and the password-hash scope."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from passlib import hash as schemes
from sqlalchemy import func, select
from sqlalchemy.engine import URL

from app.db.engine import create_engine, create_sessionmaker
from app.identity.passwords import PasswordHasher
from app.identity.service import erase_user, find_user
from app.models import AuditEvent
from tests.admin_support import bearer, new_key
from tests.conftest import make_settings
from tests.database import TestServer
from tests.factories import make_user
from tests.transfer_helpers import run_cli

SOURCE_USERS = [
    {
        "login": "Émile.Dupont@example.com",
        "external_reference_id": "D05B4D68-F49D-11DA-8019-88F835DA4C6C",
        "email": "emile@example.com",
        "first_name": "Émile",
        "last_name": 'Dupont, "le grand"',
        "locale": "fr_FR",
        "home_phone": "+33 1 23 45 67 89",
        "password_hash": schemes.ldap_salted_sha256.hash("pw-one-long"),
        "shipping_address": {
            "name1": "Émile Dupont",
            "line1": "12 rue de la Paix\nBâtiment B",
            "city": "Paris",
            "postal_code": "75002",
            "country": "FR",
        },
        "billing_address": {"company_name": "Dupont SA", "country": "FR", "email": "b@example.com"},
        "attributes": {"crmSession": "F3CB68D6/8443", "tier": "gold"},
    },
    {
        "login": "zoë@example.org",
        "status": "disabled",
        "user_key": "6f1c1d0e-5d55-4c6b-9a4e-7c1b5d0a2f10",
        "attributes": {"newsletter": "yes"},
    },
    {"login": "plain@example.net", "external_reference_id": "erid:with@symbols-1.2"},
]


@pytest.fixture
async def target_database_url(
    test_server: TestServer, template_database: str
) -> AsyncIterator[URL]:
    url = await test_server.create("export_target", template=template_database)
    yield url
    await test_server.drop(url.database or "")


@pytest.fixture
async def source_database_url(fresh_database_url: URL, tmp_path: Path) -> URL:
    """A store with imported users, one made through the service, and one erased user."""
    path = tmp_path / "source.ndjson"
    path.write_text("".join(json.dumps(user) + "\n" for user in SOURCE_USERS), encoding="utf-8")
    result = run_cli(fresh_database_url, "users", "import", str(path))
    assert result.returncode == 0, result.stdout + result.stderr

    settings = make_settings()
    engine = create_engine(fresh_database_url, settings)
    hasher = PasswordHasher(settings)
    try:
        async with create_sessionmaker(engine)() as session:
            await make_user(session, hasher, login="service@example.com", first_name="Ann")
            erased = await make_user(session, hasher, login="gone@example.com")
            await erase_user(session, erased)
            await session.commit()
    finally:
        hasher.close()
        await engine.dispose()
    return fresh_database_url


def _export(url: URL, path: Path, *arguments: str) -> bytes:
    result = run_cli(url, "users", "export", "--output", str(path), *arguments)
    assert result.returncode == 0, result.stderr
    return path.read_bytes()


@pytest.mark.parametrize("extension", ["csv", "ndjson"])
async def test_round_trip_byte_exact(
    source_database_url: URL, target_database_url: URL, tmp_path: Path, extension: str
) -> None:
    first = _export(
        source_database_url, tmp_path / f"first.{extension}", "--include-password-hashes"
    )
    imported = run_cli(target_database_url, "users", "import", str(tmp_path / f"first.{extension}"))
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert "4 users imported" in imported.stdout
    second = _export(
        target_database_url, tmp_path / f"second.{extension}", "--include-password-hashes"
    )

    assert second == first
    text = first.decode("utf-8")
    assert "gone@example.com" not in text
    assert "D05B4D68-F49D-11DA-8019-88F835DA4C6C" in text
    assert "6f1c1d0e-5d55-4c6b-9a4e-7c1b5d0a2f10" in text
    assert "{SSHA256}" in text


async def test_csv_layout(source_database_url: URL, tmp_path: Path) -> None:
    data = _export(source_database_url, tmp_path / "out.csv").decode("utf-8")
    header = data.split("\r\n", 1)[0].split(",")
    assert header[:9] == [
        "user_key",
        "external_reference_id",
        "login",
        "status",
        "email",
        "first_name",
        "last_name",
        "locale",
        "home_phone",
    ]
    assert "password_hash" not in header
    assert header[-3:] == ["attributes.crmSession", "attributes.newsletter", "attributes.tier"]
    assert header[9] == "shipping_address.name1"
    assert '"Dupont, ""le grand"""' in data
    assert "{SSHA256}" not in data


async def test_ndjson_order_and_filters(source_database_url: URL, tmp_path: Path) -> None:
    data = _export(source_database_url, tmp_path / "out.ndjson", "--status", "disabled")
    users = [json.loads(line) for line in data.decode("utf-8").splitlines()]
    assert [user["login"] for user in users] == ["zoë@example.org"]
    assert list(users[0]) == [
        "user_key",
        "external_reference_id",
        "login",
        "status",
        "email",
        "first_name",
        "last_name",
        "locale",
        "home_phone",
        "shipping_address",
        "billing_address",
        "attributes",
    ]

    data = _export(source_database_url, tmp_path / "all.ndjson")
    logins = [json.loads(line)["login"] for line in data.decode("utf-8").splitlines()]
    assert logins == [
        "Émile.Dupont@example.com",
        "zoë@example.org",
        "plain@example.net",
        "service@example.com",
    ]

    data = _export(source_database_url, tmp_path / "none.ndjson", "--created-before", "2000-01-01")
    assert data == b""


async def _committed_key(app: FastAPI, *scopes: str) -> str:
    async with app.state.database.sessionmaker() as session:
        return await new_key(session, *scopes)


async def test_http_export_streams_csv(
    committed_app: FastAPI, committed_client: httpx.AsyncClient
) -> None:
    async with committed_app.state.database.sessionmaker() as session:
        await make_user(session, committed_app.state.hasher, login="http@example.com")
    key = await _committed_key(committed_app, "admin:read")
    response = await committed_client.get("/admin/v1/exports", headers=bearer(key))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert "http@example.com" in response.text
    assert "password_hash" not in response.text.split("\r\n", 1)[0]


async def test_http_export_hashes_need_secret_scope(
    committed_app: FastAPI, committed_client: httpx.AsyncClient
) -> None:
    async with committed_app.state.database.sessionmaker() as session:
        await make_user(session, committed_app.state.hasher, login="secret@example.com")
    reader = await _committed_key(committed_app, "admin:read")
    response = await committed_client.get(
        "/admin/v1/exports",
        params={"include_password_hashes": "true", "format": "ndjson"},
        headers=bearer(reader),
    )
    assert response.status_code == 403
    assert response.json()["code"] == "insufficient_scope"

    trusted = await _committed_key(committed_app, "admin:read", "admin:export-secrets")
    response = await committed_client.get(
        "/admin/v1/exports",
        params={"include_password_hashes": "true", "format": "ndjson"},
        headers=bearer(trusted),
    )
    assert response.status_code == 200, response.text
    user = json.loads(response.text.splitlines()[0])
    assert user["password_hash"].startswith("$argon2id$")
    async with committed_app.state.database.sessionmaker() as session:
        exported = await session.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.action == "users.export_password_hashes")
        )
    assert exported == 1


async def test_http_export_requires_key(committed_client: httpx.AsyncClient) -> None:
    response = await committed_client.get("/admin/v1/exports")
    assert response.status_code == 401


async def test_exported_user_found_by_service(source_database_url: URL) -> None:
    engine = create_engine(source_database_url, make_settings())
    try:
        async with create_sessionmaker(engine)() as session:
            user = await find_user(session, login="ZOË@example.org")
            assert user is not None
            assert str(user.user_key) == "6f1c1d0e-5d55-4c6b-9a4e-7c1b5d0a2f10"
            assert user.created_via == "import"
    finally:
        await engine.dispose()


def test_export_file_replaced_safely(source_database_url: URL, tmp_path: Path) -> None:
    """A regular file keeps its mode, a symbolic link is written through, and a missing folder
    is named in the error."""
    private = tmp_path / "private.csv"
    private.write_text("old\n", encoding="utf-8")
    private.chmod(0o600)
    linked = tmp_path / "linked-target.csv"
    link = tmp_path / "link.csv"
    link.symlink_to(linked)

    exported = _export(source_database_url, private, "--include-password-hashes")
    _export(source_database_url, link)
    missing = run_cli(source_database_url, "users", "export", "--output", str(tmp_path / "no" / "x.csv"))

    assert b"service@example.com" in exported
    assert oct(private.stat().st_mode & 0o777) == oct(0o600)
    assert link.is_symlink()
    assert b"service@example.com" in linked.read_bytes()
    assert missing.returncode == 1
    assert "cannot write" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert not [path.name for path in tmp_path.iterdir() if path.name.endswith(".partial")]


async def test_cli_export_of_hashes_audited(source_database_url: URL, tmp_path: Path) -> None:
    _export(source_database_url, tmp_path / "plain.csv")
    _export(source_database_url, tmp_path / "secret.ndjson", "--include-password-hashes")

    engine = create_engine(source_database_url, make_settings())
    try:
        async with create_sessionmaker(engine)() as session:
            events = (
                await session.scalars(
                    select(AuditEvent).where(AuditEvent.action == "users.export_password_hashes")
                )
            ).all()
    finally:
        await engine.dispose()

    assert len(events) == 1
    assert events[0].actor_name == "cli"
    assert events[0].actor_key_id is None
    assert events[0].details == {"format": "ndjson"}
