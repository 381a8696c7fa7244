"""API keys: storage, bearer authentication, scopes, `last_used_at` and the `keys` CLI."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from fastapi import FastAPI
from sqlalchemy import select, update
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.admin.keys import (
    AuthenticatedKey,
    SessionsKey,
    create_api_key,
    require_scope,
    revoke_api_key,
)
from app.cli import main
from app.deps import get_session
from app.identity.errors import InvalidValueError, NotFoundError
from app.models import ApiKey, AuditEvent
from app.problems import install_problem_handlers
from tests.admin_support import AUDIT, USERS, assert_problem, bearer, new_key
from tests.conftest import RUM_PASSWORD, RUM_USERNAME


class TestKeyStorage:
    async def test_only_hash_stored(self, session: AsyncSession) -> None:
        row, key = await create_api_key(session, name="ci", scopes=["admin:read"])

        assert key.startswith("sso_")
        assert len(key) == len("sso_") + 43
        assert row.key_hash == hashlib.sha256(key.encode()).digest()
        stored = (await session.execute(select(ApiKey.__table__).where(ApiKey.id == row.id))).one()
        assert all(key not in str(value) for value in stored)

    async def test_keys_differ(self, session: AsyncSession) -> None:
        _, first = await create_api_key(session, name="a", scopes=["admin:read"])
        _, second = await create_api_key(session, name="b", scopes=["admin:read"])

        assert first != second

    async def test_duplicate_scopes_collapsed(self, session: AsyncSession) -> None:
        row, _ = await create_api_key(
            session, name="dup", scopes=["admin:read", "admin:read", "sessions"]
        )

        assert row.scopes == ["admin:read", "sessions"]

    @pytest.mark.parametrize(
        ("name", "scopes", "field"),
        [
            ("ok", ["root"], "scopes"),
            ("ok", [], "scopes"),
            ("", ["admin:read"], "name"),
            ("x" * 201, ["admin:read"], "name"),
        ],
    )
    async def test_invalid_input_rejected(
        self, session: AsyncSession, name: str, scopes: list[str], field: str
    ) -> None:
        with pytest.raises(InvalidValueError) as caught:
            await create_api_key(session, name=name, scopes=scopes)

        assert caught.value.field == field

    async def test_database_rejects_unknown_scope(self, session: AsyncSession) -> None:
        with pytest.raises(IntegrityError) as caught:
            async with session.begin_nested():
                session.add(ApiKey(name="raw", key_hash=b"x" * 32, scopes=["superuser"]))
                await session.flush()

        assert "ck_api_keys_scopes_known" in str(caught.value)

    async def test_revoke_unknown_key(self, session: AsyncSession) -> None:
        with pytest.raises(NotFoundError):
            await revoke_api_key(session, uuid.uuid4())

    async def test_revoke_twice_reports_no_change(self, session: AsyncSession) -> None:
        row, _ = await create_api_key(session, name="twice", scopes=["admin:read"])

        _, first = await revoke_api_key(session, row.id)
        _, second = await revoke_api_key(session, row.id)

        assert first is True
        assert second is False


class TestBearerAuthentication:
    async def test_missing_header(self, client: httpx.AsyncClient) -> None:
        response = await client.get(USERS)

        assert_problem(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == 'Bearer realm="sso-provider"'

    @pytest.mark.parametrize(
        "authorization",
        [
            "Bearer sso_" + "A" * 43,
            "Bearer not-even-prefixed",
            "Bearer sso_" + "A" * 200,
        ],
    )
    async def test_unknown_key(self, client: httpx.AsyncClient, authorization: str) -> None:
        response = await client.get(USERS, headers={"Authorization": authorization})

        assert_problem(response, 401, "unauthorized")
        assert 'error="invalid_token"' in response.headers["www-authenticate"]

    async def test_basic_scheme_not_accepted(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        key = await new_key(session, "admin:read")

        response = await client.get(USERS, auth=("admin", key))

        assert_problem(response, 401, "unauthorized")
        assert response.headers["www-authenticate"].startswith("Bearer")

    async def test_revoked_key(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        row, key = await create_api_key(session, name="leaked", scopes=["admin:write"])
        await session.commit()
        assert (await client.get(USERS, headers=bearer(key))).status_code == 200
        await revoke_api_key(session, row.id)
        await session.commit()

        response = await client.get(USERS, headers=bearer(key))

        assert_problem(response, 401, "unauthorized")

    async def test_read_key_cannot_write(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        key = await new_key(session, "admin:read")

        response = await client.post(USERS, json={"login": "x@example.com"}, headers=bearer(key))

        assert_problem(response, 403, "insufficient_scope")
        assert response.headers["www-authenticate"] == (
            'Bearer realm="sso-provider", error="insufficient_scope", scope="admin:write"'
        )

    @pytest.mark.parametrize("scope", ["sessions", "admin:export-secrets"])
    async def test_other_scopes_cannot_read(
        self, client: httpx.AsyncClient, session: AsyncSession, scope: str
    ) -> None:
        key = await new_key(session, scope)

        for path in (USERS, AUDIT):
            response = await client.get(path, headers=bearer(key))
            assert_problem(response, 403, "insufficient_scope")

    async def test_write_key_can_read(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        key = await new_key(session, "admin:write")

        assert (await client.get(USERS, headers=bearer(key))).status_code == 200
        assert (await client.get(AUDIT, headers=bearer(key))).status_code == 200


class TestLastUsed:
    async def last_used(self, session: AsyncSession, key_id: uuid.UUID) -> datetime | None:
        return await session.scalar(
            select(ApiKey.last_used_at)
            .where(ApiKey.id == key_id)
            .execution_options(populate_existing=True)
        )

    async def test_stamped_at_most_once_a_minute(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        row, key = await create_api_key(session, name="stamp", scopes=["admin:read"])
        await session.commit()
        assert row.last_used_at is None

        await client.get(USERS, headers=bearer(key))
        first = await self.last_used(session, row.id)
        await client.get(USERS, headers=bearer(key))
        second = await self.last_used(session, row.id)

        assert first is not None
        assert second == first

    async def test_restamped_after_a_minute(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        row, key = await create_api_key(session, name="stale", scopes=["admin:read"])
        old = datetime.now(UTC) - timedelta(minutes=5)
        await session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=old))
        await session.commit()

        await client.get(USERS, headers=bearer(key))

        stamped = await self.last_used(session, row.id)
        assert stamped is not None
        assert stamped > old + timedelta(minutes=4)

    async def test_failed_request_still_stamps(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        row, key = await create_api_key(session, name="fails", scopes=["admin:write"])
        await session.commit()

        response = await client.post(USERS, json={}, headers=bearer(key))

        assert response.status_code == 422
        assert await self.last_used(session, row.id) is not None


class TestRequireScope:
    def test_unknown_scope_rejected(self) -> None:
        with pytest.raises(ValueError, match="unknown scope"):
            require_scope("admin:everything")

    async def test_reusable_by_another_router(self, session: AsyncSession) -> None:
        """A route outside the admin API guards itself with `SessionsKey`."""
        other = FastAPI()
        install_problem_handlers(other)

        @other.get("/api/v1/probe")
        async def probe(key: SessionsKey) -> dict[str, Any]:
            return {"name": key.name, "scopes": sorted(key.scopes)}

        async def test_session() -> AsyncIterator[AsyncSession]:
            yield session

        other.dependency_overrides[get_session] = test_session
        sessions_key = await new_key(session, "sessions", name="site")
        admin_key = await new_key(session, "admin:write")

        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=other), base_url="http://testserver"
        ) as http:
            allowed = await http.get("/api/v1/probe", headers=bearer(sessions_key))
            forbidden = await http.get("/api/v1/probe", headers=bearer(admin_key))
            missing = await http.get("/api/v1/probe")

        assert allowed.status_code == 200
        assert allowed.json() == {"name": "site", "scopes": ["sessions"]}
        assert_problem(forbidden, 403, "insufficient_scope")
        assert_problem(missing, 401, "unauthorized")

    def test_implied_scope(self) -> None:
        key = AuthenticatedKey(id=uuid.uuid4(), name="w", scopes=frozenset({"admin:write"}))

        assert key.allows("admin:read")
        assert not key.allows("sessions")


def cli_environment(database_url: URL) -> dict[str, str]:
    return {
        "SSO_DATABASE_URL": database_url.render_as_string(hide_password=False),
        "SSO_ENVIRONMENT": "development",
        "SSO_RUM_USERNAME": RUM_USERNAME,
        "SSO_RUM_PASSWORD": RUM_PASSWORD,
    }


async def run_cli(database_url: URL, *arguments: str) -> Result:
    """Run `sso-provider` in a worker thread: the command starts its own event loop."""
    runner = CliRunner()
    return await asyncio.to_thread(
        runner.invoke, main, list(arguments), env=cli_environment(database_url)
    )


class TestKeysCli:
    async def test_create_list_revoke(
        self,
        fresh_database_url: URL,
        committed_client: httpx.AsyncClient,
        committed_app: FastAPI,
    ) -> None:
        created = await run_cli(
            fresh_database_url,
            "keys",
            "create",
            "--name",
            "deploy bot",
            "--scope",
            "admin:read",
            "--scope",
            "admin:write",
        )
        assert created.exit_code == 0, created.output
        printed = json.loads(created.stdout)
        assert set(printed) == {"id", "key", "name", "scopes"}
        assert printed["name"] == "deploy bot"
        assert printed["scopes"] == ["admin:read", "admin:write"]
        key = printed["key"]

        assert (await committed_client.get(USERS, headers=bearer(key))).status_code == 200

        listed = await run_cli(fresh_database_url, "keys", "list")
        assert listed.exit_code == 0, listed.output
        assert key not in listed.stdout
        rows = json.loads(listed.stdout)
        assert [row["id"] for row in rows] == [printed["id"]]
        assert rows[0]["revoked_at"] is None
        assert rows[0]["last_used_at"] is not None

        revoked = await run_cli(fresh_database_url, "keys", "revoke", printed["id"])
        assert revoked.exit_code == 0, revoked.output
        assert json.loads(revoked.stdout)["revoked_at"] is not None

        response = await committed_client.get(USERS, headers=bearer(key))
        assert_problem(response, 401, "unauthorized")

        active = await run_cli(fresh_database_url, "keys", "list", "--active")
        assert json.loads(active.stdout) == []

        async with committed_app.state.database.sessionmaker() as session:
            events = (await session.scalars(select(AuditEvent).order_by(AuditEvent.id))).all()
        assert [(e.action, e.actor_name, e.actor_key_id) for e in events] == [
            ("api_key.create", "cli", None),
            ("api_key.revoke", "cli", None),
        ]
        assert all(e.details["key_id"] == printed["id"] for e in events)
        assert all(key not in json.dumps(e.details) for e in events)

    async def test_revoke_twice_and_unknown(self, fresh_database_url: URL) -> None:
        created = await run_cli(
            fresh_database_url, "keys", "create", "--name", "once", "--scope", "sessions"
        )
        key_id = json.loads(created.stdout)["id"]
        await run_cli(fresh_database_url, "keys", "revoke", key_id)

        again = await run_cli(fresh_database_url, "keys", "revoke", key_id)
        unknown = await run_cli(fresh_database_url, "keys", "revoke", str(uuid.uuid4()))

        assert again.exit_code == 0
        assert "already revoked" in again.stderr
        assert unknown.exit_code == 1
        assert "no API key with id" in unknown.stderr

    async def test_create_rejects_bad_input(self, fresh_database_url: URL) -> None:
        unknown_scope = await run_cli(
            fresh_database_url, "keys", "create", "--name", "x", "--scope", "root"
        )
        no_scope = await run_cli(fresh_database_url, "keys", "create", "--name", "x")
        blank_name = await run_cli(
            fresh_database_url, "keys", "create", "--name", "  ", "--scope", "sessions"
        )

        assert unknown_scope.exit_code == 2
        assert "root" in unknown_scope.stderr
        assert no_scope.exit_code == 2
        assert "--scope" in no_scope.stderr
        assert blank_name.exit_code == 2
        assert "name must be 1 to 200 characters" in blank_name.stderr
