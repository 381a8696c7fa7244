"""The `sso-provider` command line, run as a real subprocess against real databases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import URL

from app.db.engine import create_engine
from app.db.migrate import head_revision
from app.db.url import render
from app.models import AuditEvent
from tests.conftest import make_settings
from tests.database import TestServer

PASSWORD = "a strong password"


def run_cli(url: URL, *args: str, stdin: str | None = PASSWORD + "\n") -> subprocess.CompletedProcess[str]:
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("SSO_")
    }
    environment.update({"SSO_ENVIRONMENT": "development", "SSO_DATABASE_URL": render(url)})
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
        check=False,
    )


@pytest.fixture
async def empty_database_url(test_server: TestServer) -> AsyncIterator[URL]:
    url = await test_server.create("empty")
    yield url
    await test_server.drop(url.database or "")


class TestUsersAdd:
    def test_prints_new_user(self, fresh_database_url: URL) -> None:
        result = run_cli(
            fresh_database_url,
            "users", "add", "--login", "Émile@Example.com", "--first-name", "Émile",
            "--locale", "fr_FR", "--password-stdin",
        )

        assert result.returncode == 0, result.stderr
        user = json.loads(result.stdout)
        assert user["login"] == "Émile@Example.com"
        assert user["first_name"] == "Émile"
        assert len(user["user_key"]) == 36
        assert user["external_reference_id"] == user["external_reference_id"].upper()
        assert user["has_password"] is True
        assert PASSWORD not in result.stdout + result.stderr

    async def test_audit_event_written(self, fresh_database_url: URL) -> None:
        result = run_cli(
            fresh_database_url, "users", "add", "--login", "audited@example.com", "--password-stdin"
        )
        user_key = json.loads(result.stdout)["user_key"]
        engine = create_engine(fresh_database_url, make_settings())
        try:
            async with engine.connect() as connection:
                events = (
                    await connection.execute(
                        select(
                            AuditEvent.actor_key_id, AuditEvent.actor_name, AuditEvent.action,
                            AuditEvent.changed_fields, AuditEvent.details,
                        ).where(AuditEvent.target_user_key == uuid.UUID(user_key))
                    )
                ).all()
        finally:
            await engine.dispose()

        assert result.returncode == 0, result.stderr
        assert len(events) == 1
        assert events[0].actor_key_id is None
        assert events[0].actor_name == "cli"
        assert events[0].action == "user.create"
        assert events[0].changed_fields == ["login", "password"]
        assert events[0].details == {"created_via": "cli"}

    def test_explicit_erid_kept(self, fresh_database_url: URL) -> None:
        result = run_cli(
            fresh_database_url,
            "users", "add", "--login", "keep@example.com",
            "--external-reference-id", "LEGACY-42", "--password-stdin",
        )

        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["external_reference_id"] == "LEGACY-42"

    def test_conflict_exits_one_naming_field(self, fresh_database_url: URL) -> None:
        first = run_cli(fresh_database_url, "users", "add", "--login", "dup@example.com", "--password-stdin")
        second = run_cli(fresh_database_url, "users", "add", "--login", "DUP@example.com", "--password-stdin")

        assert first.returncode == 0, first.stderr
        assert second.returncode == 1
        assert second.stderr.strip() == "error: login: login is already taken by another user"
        assert second.stdout == ""

    def test_erid_conflict_any_case(self, fresh_database_url: URL) -> None:
        run_cli(fresh_database_url, "users", "add", "--login", "a@example.com",
                "--external-reference-id", "abc", "--password-stdin")

        result = run_cli(fresh_database_url, "users", "add", "--login", "b@example.com",
                         "--external-reference-id", "ABC", "--password-stdin")

        assert result.returncode == 1
        assert "external_reference_id" in result.stderr

    def test_invalid_erid_exits_two(self, fresh_database_url: URL) -> None:
        result = run_cli(
            fresh_database_url,
            "users", "add", "--login", "x@example.com",
            "--external-reference-id", "has space", "--password-stdin",
        )

        assert result.returncode == 2
        assert "external_reference_id" in result.stderr
        assert "A-Z" in result.stderr

    def test_short_password_rejected(self, fresh_database_url: URL) -> None:
        result = run_cli(
            fresh_database_url, "users", "add", "--login", "y@example.com", "--password-stdin",
            stdin="short\n",
        )

        assert result.returncode == 1
        assert "password: password must be at least 8 characters long" in result.stderr

    def test_missing_stdin_password(self, fresh_database_url: URL) -> None:
        result = run_cli(
            fresh_database_url, "users", "add", "--login", "z@example.com", "--password-stdin", stdin=""
        )

        assert result.returncode == 2
        assert "standard input" in result.stderr

    def test_password_option_does_not_exist(self, fresh_database_url: URL) -> None:
        result = run_cli(
            fresh_database_url, "users", "add", "--login", "p@example.com", "--password", PASSWORD
        )

        assert result.returncode == 2
        assert "No such option" in result.stderr


class TestMigrate:
    def test_unmigrated_database_explained(self, empty_database_url: URL) -> None:
        result = run_cli(empty_database_url, "users", "add", "--login", "m@example.com", "--password-stdin")

        assert result.returncode == 1
        assert "run `sso-provider migrate` first" in result.stderr
        assert "INSERT" not in result.stderr
        assert "Traceback" not in result.stderr

    @pytest.mark.parametrize(
        "command",
        [
            ("users", "export", "--output", "{folder}/users.csv"),
            ("users", "import", "--dry-run", "{folder}/input.csv"),
            ("audit", "crosslinks"),
        ],
        ids=["export", "import", "audit"],
    )
    def test_transfer_commands_need_migrations(
        self, empty_database_url: URL, tmp_path: Path, command: tuple[str, ...]
    ) -> None:
        (tmp_path / "input.csv").write_text("login\nm@example.com\n", encoding="utf-8")
        arguments = [part.format(folder=tmp_path) for part in command]

        result = run_cli(empty_database_url, *arguments, stdin=None)

        assert result.returncode == 1
        assert "run `sso-provider migrate` first" in result.stderr
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "users.csv").exists()
        assert not (tmp_path / "users.csv.partial").exists()

    def test_migrate_then_add(self, empty_database_url: URL) -> None:
        migrated = run_cli(empty_database_url, "migrate", stdin=None)
        again = run_cli(empty_database_url, "migrate", stdin=None)
        added = run_cli(empty_database_url, "users", "add", "--login", "m@example.com", "--password-stdin")

        assert migrated.returncode == 0, migrated.stderr
        assert f"now at revision {head_revision()} (it was at none)" in migrated.stdout
        assert again.returncode == 0, again.stderr
        assert f"up to date at revision {head_revision()}" in again.stdout
        assert added.returncode == 0, added.stderr

    def test_unreachable_database_reported_without_secrets(self) -> None:
        url = URL.create(
            "postgresql+asyncpg", username="nobody", password="hunter2-secret",
            host="127.0.0.1", port=1, database="none",
        )

        result = run_cli(url, "migrate", stdin=None)

        assert result.returncode == 1
        assert "database operation failed" in result.stderr
        assert "hunter2-secret" not in result.stderr
