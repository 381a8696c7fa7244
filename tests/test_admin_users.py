"""The users endpoints of the admin API, over HTTP against the real user store."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from passlib.hash import pbkdf2_sha256
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.identity.passwords import PasswordHasher
from app.models import SsoSession, User
from tests.admin_support import (
    USERS,
    assert_problem,
    audit_events_for,
    bearer,
    create_via_api,
    new_key,
    read_key,
    user_body,
    write_key,
)

__all__ = ["read_key", "write_key"]

FULL_ADDRESS = {
    "name1": "Jane Doe",
    "line1": "10380 Bren Road West",
    "city": "Minnetonka",
    "state": "MN",
    "postal_code": "55343",
    "country": "US",
}


async def add_sso_session(session: AsyncSession, user_key: str) -> uuid.UUID:
    user_id = await session.scalar(select(User.id).where(User.user_key == uuid.UUID(user_key)))
    row = SsoSession(
        user_id=user_id,
        token_hash=uuid.uuid4().bytes * 2,
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )
    session.add(row)
    await session.commit()
    return row.id


async def sso_session_state(session: AsyncSession, session_id: uuid.UUID) -> tuple[Any, Any]:
    row = (
        await session.execute(
            text("SELECT revoked_at, revoked_reason FROM sso_sessions WHERE id = :id"),
            {"id": session_id},
        )
    ).one()
    return row.revoked_at, row.revoked_reason


class TestCreateUser:
    async def test_created_with_every_field(
        self, client: httpx.AsyncClient, write_key: str
    ) -> None:
        body = user_body(
            email="jane@example.com",
            first_name="Jane",
            last_name="Doe",
            locale="en_US",
            home_phone="+1 952 253 1234",
            shipping_address=FULL_ADDRESS,
            billing_address={"line1": "1 Main St", "country": "DE"},
            attributes={"loyaltyTier": "gold"},
            password="correct horse battery",
        )

        response = await client.post(USERS, json=body, headers=bearer(write_key))

        assert response.status_code == 201, response.text
        created = response.json()
        assert created["login"] == body["login"]
        assert created["email"] == "jane@example.com"
        assert created["shipping_address"]["city"] == "Minnetonka"
        assert created["billing_address"]["country"] == "DE"
        assert created["attributes"] == {"loyaltyTier": "gold"}
        assert created["has_password"] is True
        assert created["status"] == "active"
        assert uuid.UUID(created["user_key"])
        assert created["external_reference_id"] == created["external_reference_id"].upper()
        assert response.headers["location"] == f"{USERS}/{created['user_key']}"
        assert response.headers["etag"] == f'"{created["version"]}"'
        assert "password" not in created
        assert "password_hash" not in created

    async def test_explicit_erid_kept(self, client: httpx.AsyncClient, write_key: str) -> None:
        created = await create_via_api(client, write_key, external_reference_id="crm-000123")

        assert created["external_reference_id"] == "crm-000123"

    async def test_precomputed_hash_accepted(
        self, client: httpx.AsyncClient, write_key: str, session: AsyncSession
    ) -> None:
        legacy = pbkdf2_sha256.hash("imported password")

        created = await create_via_api(client, write_key, password_hash=legacy)

        stored = await session.scalar(
            select(User.password_hash).where(User.user_key == uuid.UUID(created["user_key"]))
        )
        assert stored == legacy
        assert created["has_password"] is True

    async def test_login_conflict_after_normalisation(
        self, client: httpx.AsyncClient, write_key: str
    ) -> None:
        await create_via_api(client, write_key, login="Émile@Example.com")

        response = await client.post(
            USERS, json={"login": "e\u0301mile@example.COM"}, headers=bearer(write_key)
        )

        assert_problem(response, 409, "conflict", "login")

    async def test_erid_conflict_any_case(self, client: httpx.AsyncClient, write_key: str) -> None:
        await create_via_api(client, write_key, external_reference_id="abc-1")

        response = await client.post(
            USERS, json=user_body(external_reference_id="ABC-1"), headers=bearer(write_key)
        )

        assert_problem(response, 409, "conflict", "external_reference_id")

    async def test_reserved_erid_rejected(self, client: httpx.AsyncClient, write_key: str) -> None:
        erased = await create_via_api(client, write_key, external_reference_id="gone-42")
        erase = await client.post(f"{USERS}/{erased['user_key']}/erase", headers=bearer(write_key))
        assert erase.status_code == 200

        response = await client.post(
            USERS, json=user_body(external_reference_id="GONE-42"), headers=bearer(write_key)
        )

        assert_problem(response, 409, "identifier_reserved", "external_reference_id")

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({}, "login"),
            ({"login": "a@example.com", "email": "not an email"}, "email"),
            ({"login": "a@example.com", "locale": "english"}, "locale"),
            (
                {"login": "a@example.com", "shipping_address": {"country": "XX"}},
                "shipping_address.country",
            ),
            (
                {"login": "a@example.com", "external_reference_id": "has space"},
                "external_reference_id",
            ),
            ({"login": "a@example.com", "nickname": "x"}, "nickname"),
        ],
    )
    async def test_invalid_body_names_field(
        self, client: httpx.AsyncClient, write_key: str, body: dict[str, Any], field: str
    ) -> None:
        response = await client.post(USERS, json=body, headers=bearer(write_key))

        assert_problem(response, 422, "validation_failed", field)

    @pytest.mark.parametrize(
        ("fields", "field"),
        [
            ({"password": "short"}, "password"),
            ({"password": "x" * 257}, "password"),
            (
                {"password": "long enough", "password_hash": pbkdf2_sha256.hash("x")},
                "password_hash",
            ),
            ({"password_hash": "plain-text-is-not-a-hash"}, "password_hash"),
            ({"login": " padded@example.com"}, "login"),
        ],
    )
    async def test_rule_violation_names_field(
        self, client: httpx.AsyncClient, write_key: str, fields: dict[str, Any], field: str
    ) -> None:
        response = await client.post(USERS, json=user_body(**fields), headers=bearer(write_key))

        assert_problem(response, 422, "invalid_value", field)

    async def test_read_scope_forbidden(self, client: httpx.AsyncClient, read_key: str) -> None:
        response = await client.post(USERS, json=user_body(), headers=bearer(read_key))

        assert_problem(response, 403, "insufficient_scope")

    async def test_missing_key_unauthorized(self, client: httpx.AsyncClient) -> None:
        response = await client.post(USERS, json=user_body())

        assert_problem(response, 401, "unauthorized")


class TestReadUser:
    async def test_get_by_user_key(
        self, client: httpx.AsyncClient, write_key: str, read_key: str
    ) -> None:
        created = await create_via_api(client, write_key, first_name="Ada")

        response = await client.get(f"{USERS}/{created['user_key']}", headers=bearer(read_key))

        assert response.status_code == 200
        assert response.json() == created
        assert response.headers["etag"] == f'"{created["version"]}"'

    async def test_unknown_user_key(self, client: httpx.AsyncClient, read_key: str) -> None:
        response = await client.get(f"{USERS}/{uuid.uuid4()}", headers=bearer(read_key))

        assert_problem(response, 404, "not_found", "user_key")

    async def test_malformed_user_key(self, client: httpx.AsyncClient, read_key: str) -> None:
        response = await client.get(f"{USERS}/not-a-uuid", headers=bearer(read_key))

        body = assert_problem(response, 422, "validation_failed", "user_key")
        assert body["errors"][0]["location"] == "path"

    async def test_lookup_by_erid_any_case(
        self, client: httpx.AsyncClient, write_key: str, read_key: str
    ) -> None:
        created = await create_via_api(client, write_key, external_reference_id="Look-Up-1")

        response = await client.get(
            f"{USERS}/lookup",
            params={"external_reference_id": "LOOK-UP-1"},
            headers=bearer(read_key),
        )

        assert response.status_code == 200
        assert response.json()["user_key"] == created["user_key"]
        assert response.headers["etag"] == f'"{created["version"]}"'

    async def test_lookup_by_normalised_login(
        self, client: httpx.AsyncClient, write_key: str, read_key: str
    ) -> None:
        created = await create_via_api(client, write_key, login="Zoë@Example.com")

        response = await client.get(
            f"{USERS}/lookup", params={"login": "ZOË@example.COM"}, headers=bearer(read_key)
        )

        assert response.status_code == 200
        assert response.json()["user_key"] == created["user_key"]

    async def test_lookup_not_found(self, client: httpx.AsyncClient, read_key: str) -> None:
        response = await client.get(
            f"{USERS}/lookup", params={"login": "nobody@example.com"}, headers=bearer(read_key)
        )

        assert_problem(response, 404, "not_found", "login")

    @pytest.mark.parametrize(
        "params", [{}, {"login": "a@example.com", "external_reference_id": "X1"}]
    )
    async def test_lookup_needs_exactly_one(
        self, client: httpx.AsyncClient, read_key: str, params: dict[str, str]
    ) -> None:
        response = await client.get(f"{USERS}/lookup", params=params, headers=bearer(read_key))

        body = assert_problem(response, 422, "invalid_value")
        assert body["field"] in ("login", "external_reference_id")

    async def test_erased_user_still_readable(
        self, client: httpx.AsyncClient, write_key: str
    ) -> None:
        created = await create_via_api(client, write_key, email="x@example.com")
        await client.post(f"{USERS}/{created['user_key']}/erase", headers=bearer(write_key))

        response = await client.get(f"{USERS}/{created['user_key']}", headers=bearer(write_key))

        assert response.status_code == 200
        assert response.json()["status"] == "erased"
        assert response.json()["email"] is None


class TestUpdateUser:
    async def test_fields_changed_and_etag_bumped(
        self, client: httpx.AsyncClient, write_key: str
    ) -> None:
        created = await create_via_api(
            client, write_key, email="old@example.com", first_name="Old", locale="en_US"
        )

        response = await client.patch(
            f"{USERS}/{created['user_key']}",
            json={"email": "new@example.com", "first_name": None},
            headers=bearer(write_key),
        )

        assert response.status_code == 200, response.text
        updated = response.json()
        assert updated["email"] == "new@example.com"
        assert updated["first_name"] is None
        assert updated["locale"] == "en_US"
        assert updated["version"] == created["version"] + 1
        assert response.headers["etag"] == f'"{updated["version"]}"'

    async def test_address_merged_and_removed(
        self, client: httpx.AsyncClient, write_key: str
    ) -> None:
        created = await create_via_api(
            client,
            write_key,
            shipping_address=FULL_ADDRESS,
            billing_address={"line1": "1 Main St"},
        )

        response = await client.patch(
            f"{USERS}/{created['user_key']}",
            json={
                "shipping_address": {"line1": "1 New Street", "state": None},
                "billing_address": None,
            },
            headers=bearer(write_key),
        )

        assert response.status_code == 200
        shipping = response.json()["shipping_address"]
        assert shipping["line1"] == "1 New Street"
        assert shipping["state"] is None
        assert shipping["city"] == "Minnetonka"
        assert response.json()["billing_address"] is None

    async def test_address_only_change_bumps_version(
        self, client: httpx.AsyncClient, write_key: str
    ) -> None:
        created = await create_via_api(client, write_key)

        response = await client.patch(
            f"{USERS}/{created['user_key']}",
            json={"billing_address": {"city": "Berlin", "country": "DE"}},
            headers=bearer(write_key),
        )

        assert response.json()["billing_address"]["city"] == "Berlin"
        assert response.json()["version"] == created["version"] + 1

    async def test_attributes_merged(self, client: httpx.AsyncClient, write_key: str) -> None:
        created = await create_via_api(client, write_key, attributes={"keep": "1", "drop": "2"})

        response = await client.patch(
            f"{USERS}/{created['user_key']}",
            json={"attributes": {"drop": None, "add": "3", "keep": "1"}},
            headers=bearer(write_key),
        )

        assert response.json()["attributes"] == {"keep": "1", "add": "3"}

    async def test_login_changed(self, client: httpx.AsyncClient, write_key: str) -> None:
        created = await create_via_api(client, write_key)

        response = await client.patch(
            f"{USERS}/{created['user_key']}",
            json={"login": "Renamed@Example.com"},
            headers=bearer(write_key),
        )
        found = await client.get(
            f"{USERS}/lookup", params={"login": "renamed@example.com"}, headers=bearer(write_key)
        )

        assert response.json()["login"] == "Renamed@Example.com"
        assert found.json()["user_key"] == created["user_key"]

    async def test_login_conflict(self, client: httpx.AsyncClient, write_key: str) -> None:
        await create_via_api(client, write_key, login="taken@example.com")
        created = await create_via_api(client, write_key)

        response = await client.patch(
            f"{USERS}/{created['user_key']}",
            json={"login": "TAKEN@example.com"},
            headers=bearer(write_key),
        )

        assert_problem(response, 409, "conflict", "login")

    async def test_login_cannot_be_removed(self, client: httpx.AsyncClient, write_key: str) -> None:
        created = await create_via_api(client, write_key)

        response = await client.patch(
            f"{USERS}/{created['user_key']}", json={"login": None}, headers=bearer(write_key)
        )

        assert_problem(response, 422, "validation_failed", "login")

    @pytest.mark.parametrize("field", ["user_key", "external_reference_id"])
    async def test_identifier_read_only(
        self, client: httpx.AsyncClient, write_key: str, field: str
    ) -> None:
        created = await create_via_api(client, write_key)

        response = await client.patch(
            f"{USERS}/{created['user_key']}",
            json={field: created[field]},
            headers=bearer(write_key),
        )

        assert_problem(response, 422, "read_only_field", field)

    @pytest.mark.parametrize("field", ["status", "password", "password_hash"])
    async def test_dedicated_endpoint_fields(
        self, client: httpx.AsyncClient, write_key: str, field: str
    ) -> None:
        created = await create_via_api(client, write_key)

        response = await client.patch(
            f"{USERS}/{created['user_key']}", json={field: "x"}, headers=bearer(write_key)
        )

        assert_problem(response, 422, "use_dedicated_endpoint", field)

    async def test_no_change_keeps_version(
        self, client: httpx.AsyncClient, write_key: str, session: AsyncSession
    ) -> None:
        created = await create_via_api(client, write_key, email="same@example.com")

        response = await client.patch(
            f"{USERS}/{created['user_key']}",
            json={"email": "same@example.com"},
            headers=bearer(write_key),
        )

        assert response.status_code == 200
        assert response.json()["version"] == created["version"]
        assert [e.action for e in await audit_events_for(session, created["user_key"])] == [
            "user.create"
        ]

    async def test_merge_patch_media_type(self, client: httpx.AsyncClient, write_key: str) -> None:
        created = await create_via_api(client, write_key)

        response = await client.patch(
            f"{USERS}/{created['user_key']}",
            content=b'{"last_name": "Merge"}',
            headers={**bearer(write_key), "Content-Type": "application/merge-patch+json"},
        )

        assert response.status_code == 200
        assert response.json()["last_name"] == "Merge"

    async def test_invalid_json_body(self, client: httpx.AsyncClient, write_key: str) -> None:
        created = await create_via_api(client, write_key)

        response = await client.patch(
            f"{USERS}/{created['user_key']}",
            content=b'{"last_name": ',
            headers={**bearer(write_key), "Content-Type": "application/json"},
        )

        assert_problem(response, 422, "validation_failed", "body")

    async def test_unknown_user(self, client: httpx.AsyncClient, write_key: str) -> None:
        response = await client.patch(
            f"{USERS}/{uuid.uuid4()}", json={"email": None}, headers=bearer(write_key)
        )

        assert_problem(response, 404, "not_found", "user_key")

    async def test_erased_user_unchangeable(
        self, client: httpx.AsyncClient, write_key: str
    ) -> None:
        created = await create_via_api(client, write_key)
        await client.post(f"{USERS}/{created['user_key']}/erase", headers=bearer(write_key))

        response = await client.patch(
            f"{USERS}/{created['user_key']}", json={"first_name": "Back"}, headers=bearer(write_key)
        )

        assert_problem(response, 409, "user_erased")

    async def test_read_scope_forbidden(
        self, client: httpx.AsyncClient, write_key: str, read_key: str
    ) -> None:
        created = await create_via_api(client, write_key)

        response = await client.patch(
            f"{USERS}/{created['user_key']}", json={"first_name": "X"}, headers=bearer(read_key)
        )

        assert_problem(response, 403, "insufficient_scope")


class TestIfMatch:
    async def test_current_etag_accepted(self, client: httpx.AsyncClient, write_key: str) -> None:
        created = await create_via_api(client, write_key)
        etag = f'"{created["version"]}"'

        response = await client.patch(
            f"{USERS}/{created['user_key']}",
            json={"first_name": "Fresh"},
            headers={**bearer(write_key), "If-Match": etag},
        )

        assert response.status_code == 200

    @pytest.mark.parametrize("header", ["*", '"999", "{version}"'])
    async def test_wildcard_and_lists_accepted(
        self, client: httpx.AsyncClient, write_key: str, header: str
    ) -> None:
        created = await create_via_api(client, write_key)

        response = await client.patch(
            f"{USERS}/{created['user_key']}",
            json={"first_name": "Fresh"},
            headers={**bearer(write_key), "If-Match": header.format(version=created["version"])},
        )

        assert response.status_code == 200

    async def test_stale_etag_rejected(
        self, client: httpx.AsyncClient, write_key: str, session: AsyncSession
    ) -> None:
        created = await create_via_api(client, write_key)
        stale = f'"{created["version"]}"'
        first = await client.patch(
            f"{USERS}/{created['user_key']}",
            json={"first_name": "First"},
            headers={**bearer(write_key), "If-Match": stale},
        )
        assert first.status_code == 200

        second = await client.patch(
            f"{USERS}/{created['user_key']}",
            json={"first_name": "Second"},
            headers={**bearer(write_key), "If-Match": stale},
        )

        assert_problem(second, 412, "precondition_failed", "If-Match")
        current = await client.get(f"{USERS}/{created['user_key']}", headers=bearer(write_key))
        assert current.json()["first_name"] == "First"
        actions = [e.action for e in await audit_events_for(session, created["user_key"])]
        assert actions == ["user.create", "user.update"]

    async def test_weak_etag_never_matches(self, client: httpx.AsyncClient, write_key: str) -> None:
        created = await create_via_api(client, write_key)

        response = await client.patch(
            f"{USERS}/{created['user_key']}",
            json={"first_name": "Weak"},
            headers={**bearer(write_key), "If-Match": f'W/"{created["version"]}"'},
        )

        assert_problem(response, 412, "precondition_failed")

    async def test_unquoted_etag_invalid(self, client: httpx.AsyncClient, write_key: str) -> None:
        created = await create_via_api(client, write_key)

        response = await client.patch(
            f"{USERS}/{created['user_key']}",
            json={"first_name": "Bare"},
            headers={**bearer(write_key), "If-Match": str(created["version"])},
        )

        assert_problem(response, 422, "invalid_value", "If-Match")

    @pytest.mark.parametrize(
        ("method", "suffix", "body"),
        [
            ("POST", "/disable", None),
            ("POST", "/enable", None),
            ("PUT", "/password", {"password": "another long one"}),
            ("POST", "/erase", None),
        ],
    )
    async def test_stale_etag_on_every_change(
        self,
        client: httpx.AsyncClient,
        write_key: str,
        method: str,
        suffix: str,
        body: dict[str, str] | None,
    ) -> None:
        created = await create_via_api(client, write_key)

        response = await client.request(
            method,
            f"{USERS}/{created['user_key']}{suffix}",
            json=body,
            headers={**bearer(write_key), "If-Match": f'"{created["version"] + 7}"'},
        )

        assert_problem(response, 412, "precondition_failed")

    async def test_concurrent_writers_one_wins(
        self, committed_client: httpx.AsyncClient, committed_app: Any
    ) -> None:
        async with committed_app.state.database.sessionmaker() as session:
            key = await new_key(session, "admin:write")
        created = await create_via_api(committed_client, key)
        etag = f'"{created["version"]}"'

        responses = await asyncio.gather(
            *(
                committed_client.patch(
                    f"{USERS}/{created['user_key']}",
                    json={"first_name": f"Writer {number}"},
                    headers={**bearer(key), "If-Match": etag},
                )
                for number in range(4)
            )
        )

        statuses = sorted(response.status_code for response in responses)
        assert statuses == [200, 412, 412, 412]


class TestStatus:
    async def test_disable_and_enable(
        self, client: httpx.AsyncClient, write_key: str, session: AsyncSession
    ) -> None:
        created = await create_via_api(client, write_key)

        disabled = await client.post(
            f"{USERS}/{created['user_key']}/disable", headers=bearer(write_key)
        )
        enabled = await client.post(
            f"{USERS}/{created['user_key']}/enable", headers=bearer(write_key)
        )

        assert disabled.status_code == 200
        assert disabled.json()["status"] == "disabled"
        assert disabled.headers["etag"] == f'"{created["version"] + 1}"'
        assert enabled.json()["status"] == "active"
        events = await audit_events_for(session, created["user_key"])
        assert [(e.action, e.changed_fields, e.details) for e in events[1:]] == [
            ("user.disable", ["status"], {"from": "active", "to": "disabled"}),
            ("user.enable", ["status"], {"from": "disabled", "to": "active"}),
        ]

    async def test_disable_twice_changes_nothing(
        self, client: httpx.AsyncClient, write_key: str, session: AsyncSession
    ) -> None:
        created = await create_via_api(client, write_key)
        await client.post(f"{USERS}/{created['user_key']}/disable", headers=bearer(write_key))

        again = await client.post(
            f"{USERS}/{created['user_key']}/disable", headers=bearer(write_key)
        )

        assert again.status_code == 200
        assert again.json()["version"] == created["version"] + 1
        assert len(await audit_events_for(session, created["user_key"])) == 2

    async def test_disable_revokes_sessions(
        self, client: httpx.AsyncClient, write_key: str, session: AsyncSession
    ) -> None:
        created = await create_via_api(client, write_key)
        sso_session = await add_sso_session(session, created["user_key"])

        await client.post(f"{USERS}/{created['user_key']}/disable", headers=bearer(write_key))

        revoked_at, reason = await sso_session_state(session, sso_session)
        assert revoked_at is not None
        assert reason == "user_disabled"

    async def test_enable_keeps_revoked_sessions(
        self, client: httpx.AsyncClient, write_key: str, session: AsyncSession
    ) -> None:
        created = await create_via_api(client, write_key, status="disabled")
        sso_session = await add_sso_session(session, created["user_key"])

        await client.post(f"{USERS}/{created['user_key']}/enable", headers=bearer(write_key))

        revoked_at, _ = await sso_session_state(session, sso_session)
        assert revoked_at is None

    @pytest.mark.parametrize("action", ["disable", "enable"])
    async def test_unknown_user(
        self, client: httpx.AsyncClient, write_key: str, action: str
    ) -> None:
        response = await client.post(f"{USERS}/{uuid.uuid4()}/{action}", headers=bearer(write_key))

        assert_problem(response, 404, "not_found")

    async def test_erased_user(self, client: httpx.AsyncClient, write_key: str) -> None:
        created = await create_via_api(client, write_key)
        await client.post(f"{USERS}/{created['user_key']}/erase", headers=bearer(write_key))

        response = await client.post(
            f"{USERS}/{created['user_key']}/enable", headers=bearer(write_key)
        )

        assert_problem(response, 409, "user_erased")

    async def test_read_scope_forbidden(
        self, client: httpx.AsyncClient, write_key: str, read_key: str
    ) -> None:
        created = await create_via_api(client, write_key)

        response = await client.post(
            f"{USERS}/{created['user_key']}/disable", headers=bearer(read_key)
        )

        assert_problem(response, 403, "insufficient_scope")


class TestSetPassword:
    async def test_password_replaced(
        self,
        client: httpx.AsyncClient,
        write_key: str,
        session: AsyncSession,
        hasher: PasswordHasher,
    ) -> None:
        created = await create_via_api(client, write_key)
        sso_session = await add_sso_session(session, created["user_key"])

        response = await client.put(
            f"{USERS}/{created['user_key']}/password",
            json={"password": "a brand new passphrase"},
            headers=bearer(write_key),
        )

        assert response.status_code == 200
        assert response.json()["has_password"] is True
        stored = await session.scalar(
            select(User.password_hash).where(User.user_key == uuid.UUID(created["user_key"]))
        )
        assert stored is not None
        assert stored.startswith("$argon2id$")
        assert (await hasher.verify("a brand new passphrase", stored)).valid
        revoked_at, reason = await sso_session_state(session, sso_session)
        assert revoked_at is not None
        assert reason == "password_changed"

    @pytest.mark.parametrize("password", ["seven77", "x" * 257])
    async def test_policy_enforced(
        self, client: httpx.AsyncClient, write_key: str, session: AsyncSession, password: str
    ) -> None:
        created = await create_via_api(client, write_key)

        response = await client.put(
            f"{USERS}/{created['user_key']}/password",
            json={"password": password},
            headers=bearer(write_key),
        )

        assert_problem(response, 422, "invalid_value", "password")
        assert len(await audit_events_for(session, created["user_key"])) == 1

    async def test_missing_password(self, client: httpx.AsyncClient, write_key: str) -> None:
        created = await create_via_api(client, write_key)

        response = await client.put(
            f"{USERS}/{created['user_key']}/password", json={}, headers=bearer(write_key)
        )

        assert_problem(response, 422, "validation_failed", "password")

    async def test_unknown_user(self, client: httpx.AsyncClient, write_key: str) -> None:
        response = await client.put(
            f"{USERS}/{uuid.uuid4()}/password",
            json={"password": "long enough password"},
            headers=bearer(write_key),
        )

        assert_problem(response, 404, "not_found")

    async def test_erased_user(self, client: httpx.AsyncClient, write_key: str) -> None:
        created = await create_via_api(client, write_key)
        await client.post(f"{USERS}/{created['user_key']}/erase", headers=bearer(write_key))

        response = await client.put(
            f"{USERS}/{created['user_key']}/password",
            json={"password": "long enough password"},
            headers=bearer(write_key),
        )

        assert_problem(response, 409, "user_erased")

    async def test_read_scope_forbidden(
        self, client: httpx.AsyncClient, write_key: str, read_key: str
    ) -> None:
        created = await create_via_api(client, write_key)

        response = await client.put(
            f"{USERS}/{created['user_key']}/password",
            json={"password": "long enough password"},
            headers=bearer(read_key),
        )

        assert_problem(response, 403, "insufficient_scope")


class TestEraseUser:
    async def test_personal_data_removed_identifiers_kept(
        self, client: httpx.AsyncClient, write_key: str, session: AsyncSession
    ) -> None:
        created = await create_via_api(
            client,
            write_key,
            email="erase@example.com",
            first_name="Erin",
            shipping_address=FULL_ADDRESS,
            attributes={"crm": "7"},
            password="a password to erase",
        )
        sso_session = await add_sso_session(session, created["user_key"])

        response = await client.post(
            f"{USERS}/{created['user_key']}/erase", headers=bearer(write_key)
        )

        assert response.status_code == 200
        erased = response.json()
        assert erased["status"] == "erased"
        assert erased["user_key"] == created["user_key"]
        assert erased["external_reference_id"] == created["external_reference_id"]
        assert erased["erased_at"] is not None
        for field in ("login", "email", "first_name", "shipping_address"):
            assert erased[field] is None
        assert erased["attributes"] == {}
        assert erased["has_password"] is False
        revoked_at, reason = await sso_session_state(session, sso_session)
        assert revoked_at is not None
        assert reason == "user_erased"
        event = (await audit_events_for(session, created["user_key"]))[-1]
        assert event.action == "user.erase"
        assert set(event.changed_fields) >= {
            "status",
            "login",
            "email",
            "first_name",
            "password_hash",
            "shipping_address",
            "attributes.crm",
        }

    async def test_erase_twice_conflicts(self, client: httpx.AsyncClient, write_key: str) -> None:
        created = await create_via_api(client, write_key)
        await client.post(f"{USERS}/{created['user_key']}/erase", headers=bearer(write_key))

        response = await client.post(
            f"{USERS}/{created['user_key']}/erase", headers=bearer(write_key)
        )

        assert_problem(response, 409, "user_erased")

    async def test_unknown_user(self, client: httpx.AsyncClient, write_key: str) -> None:
        response = await client.post(f"{USERS}/{uuid.uuid4()}/erase", headers=bearer(write_key))

        assert_problem(response, 404, "not_found")

    async def test_read_scope_forbidden(
        self, client: httpx.AsyncClient, write_key: str, read_key: str
    ) -> None:
        created = await create_via_api(client, write_key)

        response = await client.post(
            f"{USERS}/{created['user_key']}/erase", headers=bearer(read_key)
        )

        assert_problem(response, 403, "insufficient_scope")


class TestListUsers:
    async def test_filters(self, client: httpx.AsyncClient, write_key: str, read_key: str) -> None:
        tag = uuid.uuid4().hex[:8]
        ada = await create_via_api(
            client,
            write_key,
            login=f"ada-{tag}@example.com",
            email=f"Ada.{tag}@Example.com",
            first_name=f"Ada{tag}",
            last_name="Lovelace",
        )
        bob = await create_via_api(
            client,
            write_key,
            login=f"bob-{tag}@example.com",
            email=f"bob.{tag}@example.com",
            first_name="Bob",
            last_name=f"Builder{tag}",
            status="disabled",
        )

        async def keys_for(**params: str) -> list[str]:
            response = await client.get(USERS, params=params, headers=bearer(read_key))
            assert response.status_code == 200, response.text
            return [item["user_key"] for item in response.json()["items"]]

        assert await keys_for(login=f"ADA-{tag}") == [ada["user_key"]]
        assert await keys_for(email=f"ada.{tag}@example") == [ada["user_key"]]
        assert await keys_for(name=f"ada{tag}") == [ada["user_key"]]
        assert await keys_for(name=f"builder{tag}") == [bob["user_key"]]
        assert bob["user_key"] in await keys_for(status="disabled", limit="200")
        assert ada["user_key"] not in await keys_for(status="disabled", limit="200")

    async def test_wildcards_match_literally(
        self, client: httpx.AsyncClient, write_key: str, read_key: str
    ) -> None:
        tag = uuid.uuid4().hex[:8]
        await create_via_api(client, write_key, login=f"x{tag}abc@example.com")

        response = await client.get(USERS, params={"login": f"x{tag}%"}, headers=bearer(read_key))

        assert response.json()["items"] == []

    async def test_created_time_range(
        self, client: httpx.AsyncClient, write_key: str, read_key: str
    ) -> None:
        created = await create_via_api(client, write_key)
        at = datetime.fromisoformat(created["created_at"])

        def window(after: datetime, before: datetime) -> dict[str, str]:
            return {
                "created_after": after.isoformat(),
                "created_before": before.isoformat(),
                "limit": "200",
            }

        inside = await client.get(
            USERS,
            params=window(at - timedelta(seconds=1), at + timedelta(seconds=1)),
            headers=bearer(read_key),
        )
        outside = await client.get(
            USERS,
            params=window(at + timedelta(seconds=1), at + timedelta(seconds=2)),
            headers=bearer(read_key),
        )

        assert created["user_key"] in [item["user_key"] for item in inside.json()["items"]]
        assert created["user_key"] not in [item["user_key"] for item in outside.json()["items"]]

    async def test_naive_time_rejected(self, client: httpx.AsyncClient, read_key: str) -> None:
        response = await client.get(
            USERS, params={"created_after": "2026-01-01T00:00:00"}, headers=bearer(read_key)
        )

        assert_problem(response, 422, "validation_failed", "created_after")

    @pytest.mark.parametrize("number", ["0", "0.5", "1733300000", "-1", "1e9"])
    async def test_number_as_time_rejected(
        self, client: httpx.AsyncClient, read_key: str, number: str
    ) -> None:
        response = await client.get(
            USERS, params={"created_before": number}, headers=bearer(read_key)
        )

        assert_problem(response, 422, "validation_failed", "created_before")
        assert "ISO 8601" in response.json()["errors"][0]["message"]

    async def test_pages_follow_cursor(
        self, client: httpx.AsyncClient, write_key: str, read_key: str
    ) -> None:
        tag = uuid.uuid4().hex[:8]
        created = [
            (await create_via_api(client, write_key, login=f"page-{tag}-{n}@example.com"))[
                "user_key"
            ]
            for n in range(5)
        ]

        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            params = {"login": f"page-{tag}", "limit": "2"}
            if cursor:
                params["cursor"] = cursor
            response = await client.get(USERS, params=params, headers=bearer(read_key))
            body = response.json()
            seen += [item["user_key"] for item in body["items"]]
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break

        assert seen == created
        assert pages == 3

    async def test_default_page_size(
        self, client: httpx.AsyncClient, write_key: str, read_key: str
    ) -> None:
        tag = uuid.uuid4().hex[:8]
        for number in range(51):
            await create_via_api(client, write_key, login=f"many-{tag}-{number}@example.com")

        response = await client.get(
            USERS, params={"login": f"many-{tag}"}, headers=bearer(read_key)
        )

        assert len(response.json()["items"]) == 50
        assert response.json()["next_cursor"] is not None

    @pytest.mark.parametrize("limit", ["0", "201", "ten"])
    async def test_limit_out_of_range(
        self, client: httpx.AsyncClient, read_key: str, limit: str
    ) -> None:
        response = await client.get(USERS, params={"limit": limit}, headers=bearer(read_key))

        assert_problem(response, 422, "validation_failed", "limit")

    @pytest.mark.parametrize(
        "cursor",
        [
            "garbage",
            "eyJrIjoiYXVkaXQtZXZlbnRzIiwidCI6IjIwMjYtMDEtMDFUMDA6MDA6MDArMDA6MDAiLCJpIjoxfQ",
            "eyJrIjoidXNlcnMiLCJ0IjoiMjAyNi0wMS0wMVQwMDowMDowMCIsImkiOjF9",
        ],
    )
    async def test_invalid_cursor(
        self, client: httpx.AsyncClient, read_key: str, cursor: str
    ) -> None:
        response = await client.get(USERS, params={"cursor": cursor}, headers=bearer(read_key))

        assert_problem(response, 422, "invalid_cursor", "cursor")

    async def test_missing_key_unauthorized(self, client: httpx.AsyncClient) -> None:
        response = await client.get(USERS)

        assert_problem(response, 401, "unauthorized")
