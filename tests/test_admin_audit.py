"""The audit trail: one event per change, in the change's transaction, and its list endpoint."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import ApiKey, AuditEvent
from tests.admin_support import (
    AUDIT,
    USERS,
    assert_problem,
    audit_count,
    audit_events_for,
    bearer,
    create_via_api,
    new_key,
    read_key,
    write_key,
)

__all__ = ["read_key", "write_key"]

SECRET_PASSWORD = "audit must never see this passphrase"

Change = Callable[
    [httpx.AsyncClient, str, dict[str, Any], dict[str, str]], Awaitable[httpx.Response]
]


async def _update(
    client: httpx.AsyncClient, key: str, user: dict[str, Any], headers: dict[str, str]
) -> httpx.Response:
    return await client.patch(
        f"{USERS}/{user['user_key']}", json={"first_name": "Changed"}, headers=headers
    )


async def _disable(
    client: httpx.AsyncClient, key: str, user: dict[str, Any], headers: dict[str, str]
) -> httpx.Response:
    return await client.post(f"{USERS}/{user['user_key']}/disable", headers=headers)


async def _set_password(
    client: httpx.AsyncClient, key: str, user: dict[str, Any], headers: dict[str, str]
) -> httpx.Response:
    return await client.put(
        f"{USERS}/{user['user_key']}/password", json={"password": SECRET_PASSWORD}, headers=headers
    )


async def _erase(
    client: httpx.AsyncClient, key: str, user: dict[str, Any], headers: dict[str, str]
) -> httpx.Response:
    return await client.post(f"{USERS}/{user['user_key']}/erase", headers=headers)


CHANGES: list[tuple[str, Change, list[str]]] = [
    ("user.update", _update, ["first_name"]),
    ("user.disable", _disable, ["status"]),
    ("user.set_password", _set_password, ["password"]),
    ("user.erase", _erase, ["status", "login"]),
]


class TestOneEventPerChange:
    async def test_create_event(
        self, client: httpx.AsyncClient, session: AsyncSession, write_key: str
    ) -> None:
        key_row = await session.scalar(select(ApiKey).where(ApiKey.name == "writer"))
        assert key_row is not None

        response = await client.post(
            USERS,
            json={
                "login": "audited@example.com",
                "password": SECRET_PASSWORD,
                "email": "a@example.com",
            },
            headers={**bearer(write_key), "X-Request-ID": "req-create-1"},
        )

        assert response.status_code == 201
        events = await audit_events_for(session, response.json()["user_key"])
        assert len(events) == 1
        event = events[0]
        assert event.action == "user.create"
        assert event.actor_key_id == key_row.id
        assert event.actor_name == "writer"
        assert event.changed_fields == ["email", "login", "password"]
        assert event.request_id == "req-create-1"
        assert event.occurred_at is not None

    @pytest.mark.parametrize(("action", "change", "fields"), CHANGES, ids=[c[0] for c in CHANGES])
    async def test_change_event(
        self,
        client: httpx.AsyncClient,
        session: AsyncSession,
        write_key: str,
        action: str,
        change: Change,
        fields: list[str],
    ) -> None:
        user = await create_via_api(
            client, write_key, first_name="Before", password=SECRET_PASSWORD
        )
        before = await audit_count(session)

        response = await change(
            client, write_key, user, {**bearer(write_key), "X-Request-ID": f"req-{action}"}
        )

        assert response.status_code == 200, response.text
        assert await audit_count(session) == before + 1
        event = (await audit_events_for(session, user["user_key"]))[-1]
        assert event.action == action
        assert event.actor_name == "writer"
        assert event.target_user_key == uuid.UUID(user["user_key"])
        assert set(fields) <= set(event.changed_fields)
        assert event.request_id == f"req-{action}"

    async def test_request_id_generated_when_absent(
        self, client: httpx.AsyncClient, session: AsyncSession, write_key: str
    ) -> None:
        response = await client.post(
            USERS, json={"login": "noid@example.com"}, headers=bearer(write_key)
        )

        event = (await audit_events_for(session, response.json()["user_key"]))[0]
        assert event.request_id
        assert event.request_id == response.headers["x-request-id"]

    async def test_secrets_never_stored(
        self, client: httpx.AsyncClient, session: AsyncSession, write_key: str
    ) -> None:
        user = await create_via_api(client, write_key, password=SECRET_PASSWORD)
        await _set_password(client, write_key, user, bearer(write_key))

        rows = (
            await session.execute(text("SELECT row_to_json(a)::text FROM audit_events a"))
        ).scalars()

        for row in rows:
            assert SECRET_PASSWORD not in row
            assert "$argon2id$" not in row
            assert write_key not in row


class TestFailedChangeLeavesNoEvent:
    async def test_create_conflict(
        self, client: httpx.AsyncClient, session: AsyncSession, write_key: str
    ) -> None:
        await create_via_api(client, write_key, login="dup@example.com")
        before = await audit_count(session)

        response = await client.post(
            USERS, json={"login": "DUP@example.com"}, headers=bearer(write_key)
        )

        assert response.status_code == 409
        assert await audit_count(session) == before

    @pytest.mark.parametrize(
        ("method", "suffix", "body", "status"),
        [
            ("PATCH", "", {"login": "dup2@example.com"}, 409),
            ("PATCH", "", {"first_name": "Stale"}, 412),
            ("PATCH", "", {"user_key": "x"}, 422),
            ("PUT", "/password", {"password": "short"}, 422),
            ("POST", "/disable", None, 412),
        ],
    )
    async def test_rejected_change(
        self,
        client: httpx.AsyncClient,
        session: AsyncSession,
        write_key: str,
        method: str,
        suffix: str,
        body: dict[str, str] | None,
        status: int,
    ) -> None:
        await create_via_api(client, write_key, login="dup2@example.com")
        user = await create_via_api(client, write_key)
        headers = bearer(write_key)
        if status == 412:
            headers["If-Match"] = '"12345"'
        before = await audit_count(session)

        response = await client.request(
            method, f"{USERS}/{user['user_key']}{suffix}", json=body, headers=headers
        )

        assert response.status_code == status, response.text
        assert await audit_count(session) == before
        current = await client.get(
            f"{USERS}/{user['user_key']}", headers=headers | bearer(write_key)
        )
        assert current.json()["version"] == user["version"]

    async def test_erase_of_erased_user(
        self, client: httpx.AsyncClient, session: AsyncSession, write_key: str
    ) -> None:
        user = await create_via_api(client, write_key)
        await _erase(client, write_key, user, bearer(write_key))
        before = await audit_count(session)

        response = await _erase(client, write_key, user, bearer(write_key))

        assert response.status_code == 409
        assert await audit_count(session) == before


FAIL_AT_COMMIT = "fail-at-commit"

# A deferred constraint trigger runs when the transaction commits, after the change and its
# audit event were both written: rejecting the event there must take the change down with it.
FAIL_AT_COMMIT_SQL = (
    f"""
    CREATE FUNCTION test_reject_marked_event() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.request_id = '{FAIL_AT_COMMIT}' THEN
            RAISE EXCEPTION 'audit event rejected at commit by the test trigger';
        END IF;
        RETURN NULL;
    END $$
    """,
    """
    CREATE CONSTRAINT TRIGGER test_reject_marked_event AFTER INSERT ON audit_events
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_reject_marked_event()
    """,
)


class TestSameTransaction:
    async def test_event_failing_at_commit_undoes_change(self, committed_app: FastAPI) -> None:
        sessionmaker = committed_app.state.database.sessionmaker
        async with sessionmaker() as session:
            for statement in FAIL_AT_COMMIT_SQL:
                await session.execute(text(statement))
            await session.commit()
            key = await new_key(session, "admin:write")
        transport = httpx.ASGITransport(app=committed_app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            failing = {**bearer(key), "X-Request-ID": FAIL_AT_COMMIT}

            rejected = await client.post(
                USERS, json={"login": "never@example.com"}, headers=failing
            )
            assert rejected.status_code == 500
            assert "test trigger" not in rejected.text
            missing = await client.get(
                f"{USERS}/lookup", params={"login": "never@example.com"}, headers=bearer(key)
            )
            assert missing.status_code == 404

            user = await create_via_api(client, key, first_name="Before", password=SECRET_PASSWORD)
            for action, change, _ in CHANGES:
                before = await client.get(f"{USERS}/{user['user_key']}", headers=bearer(key))

                response = await change(client, key, user, failing)

                assert response.status_code == 500, (action, response.text)
                after = await client.get(f"{USERS}/{user['user_key']}", headers=bearer(key))
                assert after.json() == before.json(), action

        async with sessionmaker() as session:
            events = (await session.scalars(select(AuditEvent))).all()
        assert [(event.action, event.request_id != FAIL_AT_COMMIT) for event in events] == [
            ("user.create", True)
        ]


class TestListAuditEvents:
    async def test_filters(
        self, client: httpx.AsyncClient, session: AsyncSession, write_key: str, read_key: str
    ) -> None:
        other_key = await new_key(session, "admin:write", name="other admin")
        first = await create_via_api(client, write_key)
        second = await create_via_api(client, other_key)
        await _disable(client, write_key, first, bearer(write_key))
        writer = await session.scalar(select(ApiKey.id).where(ApiKey.name == "writer"))

        async def listed(**params: str) -> list[tuple[str, str]]:
            response = await client.get(
                AUDIT, params=params | {"limit": "200"}, headers=bearer(read_key)
            )
            assert response.status_code == 200, response.text
            return [(item["action"], item["target_user_key"]) for item in response.json()["items"]]

        assert await listed(target_user_key=first["user_key"]) == [
            ("user.create", first["user_key"]),
            ("user.disable", first["user_key"]),
        ]
        assert ("user.disable", first["user_key"]) in await listed(action="user.disable")
        assert all(action == "user.disable" for action, _ in await listed(action="user.disable"))
        by_other = await listed(
            actor_key_id=str(
                await session.scalar(select(ApiKey.id).where(ApiKey.name == "other admin"))
            )
        )
        assert by_other == [("user.create", second["user_key"])]
        assert first["user_key"] in {target for _, target in await listed(actor_key_id=str(writer))}

    async def test_time_range(
        self, client: httpx.AsyncClient, session: AsyncSession, write_key: str, read_key: str
    ) -> None:
        user = await create_via_api(client, write_key)
        event = (await audit_events_for(session, user["user_key"]))[0]
        at = event.occurred_at

        def window(after: datetime, before: datetime) -> dict[str, str]:
            return {
                "target_user_key": user["user_key"],
                "occurred_after": after.isoformat(),
                "occurred_before": before.isoformat(),
            }

        inside = await client.get(
            AUDIT,
            params=window(at - timedelta(seconds=1), at + timedelta(seconds=1)),
            headers=bearer(read_key),
        )
        after = await client.get(
            AUDIT,
            params=window(at + timedelta(seconds=1), at + timedelta(seconds=9)),
            headers=bearer(read_key),
        )

        assert [item["id"] for item in inside.json()["items"]] == [event.id]
        assert after.json()["items"] == []

    async def test_event_body(
        self, client: httpx.AsyncClient, write_key: str, read_key: str
    ) -> None:
        user = await create_via_api(client, write_key)

        response = await client.get(
            AUDIT, params={"target_user_key": user["user_key"]}, headers=bearer(read_key)
        )

        item = response.json()["items"][0]
        assert set(item) == {
            "id",
            "occurred_at",
            "actor_key_id",
            "actor_name",
            "action",
            "target_user_key",
            "changed_fields",
            "request_id",
            "details",
        }
        assert item["actor_name"] == "writer"
        assert item["details"] == {"created_via": "admin"}
        assert response.json()["next_cursor"] is None

    async def test_pages(self, client: httpx.AsyncClient, write_key: str, read_key: str) -> None:
        user = await create_via_api(client, write_key)
        for number in range(4):
            await client.patch(
                f"{USERS}/{user['user_key']}",
                json={"first_name": f"N{number}"},
                headers=bearer(write_key),
            )

        seen: list[int] = []
        cursor = None
        while True:
            params = {"target_user_key": user["user_key"], "limit": "2"}
            if cursor:
                params["cursor"] = cursor
            body = (await client.get(AUDIT, params=params, headers=bearer(read_key))).json()
            seen += [item["id"] for item in body["items"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break

        assert len(seen) == 5
        assert seen == sorted(set(seen))

    async def test_users_cursor_rejected(
        self, client: httpx.AsyncClient, write_key: str, read_key: str
    ) -> None:
        await create_via_api(client, write_key)
        await create_via_api(client, write_key)
        users_page = await client.get(USERS, params={"limit": "1"}, headers=bearer(read_key))

        response = await client.get(
            AUDIT, params={"cursor": users_page.json()["next_cursor"]}, headers=bearer(read_key)
        )

        assert_problem(response, 422, "invalid_cursor", "cursor")

    @pytest.mark.parametrize(
        ("params", "field"),
        [
            ({"limit": "201"}, "limit"),
            ({"target_user_key": "nope"}, "target_user_key"),
            ({"occurred_after": "yesterday"}, "occurred_after"),
        ],
    )
    async def test_invalid_parameters(
        self, client: httpx.AsyncClient, read_key: str, params: dict[str, str], field: str
    ) -> None:
        response = await client.get(AUDIT, params=params, headers=bearer(read_key))

        body = assert_problem(response, 422, "validation_failed", field)
        assert body["errors"][0]["location"] == "query"

    async def test_missing_key(self, client: httpx.AsyncClient) -> None:
        assert_problem(await client.get(AUDIT), 401, "unauthorized")


def test_change_table_is_complete() -> None:
    """Every change endpoint of the admin API appears in the tables above."""
    from app.admin.routes import router

    changing = {
        route.path  # type: ignore[attr-defined]
        for route in router.routes
        if set(route.methods) & {"POST", "PUT", "PATCH", "DELETE"}  # type: ignore[attr-defined]
    }
    assert changing == {
        "/admin/v1/users",
        "/admin/v1/users/{user_key}",
        "/admin/v1/users/{user_key}/disable",
        "/admin/v1/users/{user_key}/enable",
        "/admin/v1/users/{user_key}/password",
        "/admin/v1/users/{user_key}/erase",
    }
