"""The session-token API: issuing, revoking, the revocation paths of the admin API, and the
whole single sign-on flow from the merchant's site to Digital River's callbacks."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.identity.passwords import PasswordHasher
from app.models import SsoSession, User
from app.problems import PROBLEM_MEDIA_TYPE
from app.settings import Settings
from tests.admin_support import bearer, new_key
from tests.conftest import make_settings
from tests.factories import DEFAULT_PASSWORD, make_user
from tests.rum_messages import (
    basic_auth,
    child_text,
    create_request,
    is_nil,
    parse,
    profile_request,
    session_request,
)

SESSIONS = "/api/v1/sessions"
USERS = "/admin/v1/users"


@pytest.fixture
async def sessions_key(session: AsyncSession) -> str:
    return await new_key(session, "sessions", name="merchant site")


@pytest.fixture
async def admin_key(session: AsyncSession) -> str:
    return await new_key(session, "admin:write", name="admin")


@pytest.fixture
async def shopper(session: AsyncSession, hasher: PasswordHasher) -> User:
    return await make_user(session, hasher, login="shopper@example.com")


async def issue(client: httpx.AsyncClient, key: str, **body: Any) -> httpx.Response:
    return await client.post(SESSIONS, json=body, headers=bearer(key))


async def validation_code(client: httpx.AsyncClient, token: str) -> str | None:
    """Return None when Digital River's validation of `token` succeeds, else the error code."""
    response = await client.post(
        "/rum/session", content=session_request(token), headers=basic_auth()
    )
    root = parse(response.content)
    if child_text(root, "successful") == "true":
        return None
    return child_text(root, "errorCode")


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    return body


class TestAuthentication:
    async def test_missing_key_unauthorized(self, client: httpx.AsyncClient, shopper: User) -> None:
        response = await client.post(SESSIONS, json={"user_key": str(shopper.user_key)})

        assert_problem(response, 401, "unauthorized")

    async def test_admin_key_lacks_scope(
        self, client: httpx.AsyncClient, admin_key: str, shopper: User
    ) -> None:
        response = await issue(client, admin_key, user_key=str(shopper.user_key))

        assert_problem(response, 403, "insufficient_scope")

    async def test_revoke_needs_key(self, client: httpx.AsyncClient) -> None:
        response = await client.delete(f"{SESSIONS}/{uuid.uuid4()}")

        assert_problem(response, 401, "unauthorized")


class TestCreate:
    async def test_by_user_key(
        self, client: httpx.AsyncClient, session: AsyncSession, sessions_key: str, shopper: User
    ) -> None:
        response = await issue(client, sessions_key, user_key=str(shopper.user_key))

        assert response.status_code == 201, response.text
        body = response.json()
        assert set(body) == {"id", "token", "expires_at"}
        assert response.headers["cache-control"] == "no-store"
        assert len(body["token"]) == 43
        row = await session.scalar(select(SsoSession).where(SsoSession.id == uuid.UUID(body["id"])))
        assert row is not None
        assert row.user_id == shopper.id
        assert row.token_hash == hashlib.sha256(body["token"].encode()).digest()
        assert await validation_code(client, body["token"]) is None

    async def test_by_erid_any_case(
        self, client: httpx.AsyncClient, sessions_key: str, shopper: User
    ) -> None:
        response = await issue(
            client, sessions_key, external_reference_id=shopper.external_reference_id.lower()
        )

        assert response.status_code == 201

    async def test_by_login_and_password(
        self, client: httpx.AsyncClient, sessions_key: str, shopper: User
    ) -> None:
        response = await issue(
            client, sessions_key, login="SHOPPER@example.com", password=DEFAULT_PASSWORD
        )

        assert response.status_code == 201
        assert await validation_code(client, response.json()["token"]) is None

    async def test_tokens_differ(
        self, client: httpx.AsyncClient, sessions_key: str, shopper: User
    ) -> None:
        first = await issue(client, sessions_key, user_key=str(shopper.user_key))
        second = await issue(client, sessions_key, user_key=str(shopper.user_key))

        assert first.json()["token"] != second.json()["token"]
        assert first.json()["id"] != second.json()["id"]

    async def test_default_lifetime_eight_hours(
        self, client: httpx.AsyncClient, session: AsyncSession, sessions_key: str, shopper: User
    ) -> None:
        response = await issue(client, sessions_key, user_key=str(shopper.user_key))

        row = await session.scalar(
            select(SsoSession).where(SsoSession.id == uuid.UUID(response.json()["id"]))
        )
        assert row is not None
        assert row.expires_at - row.created_at == timedelta(hours=8)
        assert response.json()["expires_at"].startswith(
            row.expires_at.strftime("%Y-%m-%dT%H:%M:%S")
        )


class TestLifetimeSetting:
    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(session_lifetime_minutes=90)

    async def test_configured_lifetime(
        self, client: httpx.AsyncClient, session: AsyncSession, sessions_key: str, shopper: User
    ) -> None:
        response = await issue(client, sessions_key, user_key=str(shopper.user_key))

        row = await session.scalar(
            select(SsoSession).where(SsoSession.id == uuid.UUID(response.json()["id"]))
        )
        assert row is not None
        assert row.expires_at - row.created_at == timedelta(minutes=90)

    @pytest.mark.parametrize("minutes", [0, 30, 59])
    def test_shorter_than_dr_session_rejected(self, minutes: int) -> None:
        with pytest.raises(ValidationError, match="session_lifetime_minutes"):
            make_settings(session_lifetime_minutes=minutes)

    def test_max_below_lifetime_rejected(self) -> None:
        with pytest.raises(ValidationError, match="SSO_SESSION_MAX_LIFETIME_MINUTES"):
            make_settings(session_lifetime_minutes=600, session_max_lifetime_minutes=300)


class TestCreateFailures:
    async def test_wrong_password_and_unknown_login_alike(
        self, client: httpx.AsyncClient, sessions_key: str, shopper: User
    ) -> None:
        wrong = await issue(
            client, sessions_key, login="shopper@example.com", password="wrong guess"
        )
        unknown = await issue(
            client, sessions_key, login="nobody@example.com", password="wrong guess"
        )

        wrong_body = assert_problem(wrong, 400, "invalid_credentials")
        unknown_body = assert_problem(unknown, 400, "invalid_credentials")
        wrong_body.pop("request_id")
        unknown_body.pop("request_id")
        assert wrong_body == unknown_body
        assert "wrong guess" not in wrong.text
        described = await client.get(wrong_body["type"])
        assert described.status_code == 200
        assert described.json()["status"] == 400

    async def test_unknown_user_key_not_found(
        self, client: httpx.AsyncClient, sessions_key: str
    ) -> None:
        response = await issue(client, sessions_key, user_key=str(uuid.uuid4()))

        body = assert_problem(response, 404, "not_found")
        assert body["field"] == "user_key"

    async def test_unknown_erid_not_found(
        self, client: httpx.AsyncClient, sessions_key: str
    ) -> None:
        response = await issue(client, sessions_key, external_reference_id="NO-SUCH-ERID")

        assert_problem(response, 404, "not_found")

    async def test_disabled_user_conflict(
        self,
        client: httpx.AsyncClient,
        session: AsyncSession,
        hasher: PasswordHasher,
        sessions_key: str,
    ) -> None:
        user = await make_user(session, hasher, login="off@example.com", status="disabled")

        by_key = await issue(client, sessions_key, user_key=str(user.user_key))
        right = await issue(
            client, sessions_key, login="off@example.com", password=DEFAULT_PASSWORD
        )
        wrong = await issue(client, sessions_key, login="off@example.com", password="not it at all")

        assert_problem(by_key, 409, "user_not_active")
        assert (await client.get("/problems/user_not_active")).status_code == 200
        assert_problem(right, 409, "user_not_active")
        assert_problem(wrong, 400, "invalid_credentials")

    async def test_erased_user_conflict(
        self, client: httpx.AsyncClient, admin_key: str, sessions_key: str, shopper: User
    ) -> None:
        await client.post(f"{USERS}/{shopper.user_key}/erase", headers=bearer(admin_key))

        response = await issue(client, sessions_key, user_key=str(shopper.user_key))

        assert_problem(response, 409, "user_erased")

    @pytest.mark.parametrize(
        ("body", "field", "message"),
        [
            ({}, "user_key", "give exactly one of user_key, external_reference_id and login"),
            (
                {"user_key": "USER", "external_reference_id": "ERID"},
                "external_reference_id",
                "got user_key, external_reference_id",
            ),
            ({"login": "shopper@example.com"}, "password", "password is required with login"),
            (
                {"user_key": "USER", "password": "x"},
                "password",
                "only accepted together with login",
            ),
        ],
        ids=["none", "two", "login-without-password", "password-without-login"],
    )
    async def test_invalid_identification(
        self,
        client: httpx.AsyncClient,
        sessions_key: str,
        shopper: User,
        body: dict[str, str],
        field: str,
        message: str,
    ) -> None:
        filled = {
            name: str(shopper.user_key)
            if value == "USER"
            else shopper.external_reference_id
            if value == "ERID"
            else value
            for name, value in body.items()
        }

        response = await issue(client, sessions_key, **filled)

        problem = assert_problem(response, 422, "invalid_value")
        assert problem["field"] == field
        assert message in problem["detail"]

    async def test_unknown_field_rejected(
        self, client: httpx.AsyncClient, sessions_key: str, shopper: User
    ) -> None:
        response = await issue(client, sessions_key, user_key=str(shopper.user_key), ttl=5)

        problem = assert_problem(response, 422, "validation_failed")
        assert problem["field"] == "ttl"

    async def test_malformed_user_key(self, client: httpx.AsyncClient, sessions_key: str) -> None:
        response = await issue(client, sessions_key, user_key="not-a-uuid")

        problem = assert_problem(response, 422, "validation_failed")
        assert problem["field"] == "user_key"


class TestRevokeOne:
    async def test_revoked_token_fails_validation(
        self, client: httpx.AsyncClient, session: AsyncSession, sessions_key: str, shopper: User
    ) -> None:
        created = (await issue(client, sessions_key, user_key=str(shopper.user_key))).json()

        response = await client.delete(f"{SESSIONS}/{created['id']}", headers=bearer(sessions_key))

        assert response.status_code == 204
        assert await validation_code(client, created["token"]) == "21"
        row = await session.scalar(
            select(SsoSession).where(SsoSession.id == uuid.UUID(created["id"]))
        )
        assert row is not None
        assert row.revoked_reason == "revoked_by_api"

    async def test_repeat_revocation_succeeds(
        self, client: httpx.AsyncClient, session: AsyncSession, sessions_key: str, shopper: User
    ) -> None:
        created = (await issue(client, sessions_key, user_key=str(shopper.user_key))).json()
        await client.delete(f"{SESSIONS}/{created['id']}", headers=bearer(sessions_key))
        first = await session.scalar(
            select(SsoSession.revoked_at).where(SsoSession.id == uuid.UUID(created["id"]))
        )

        again = await client.delete(f"{SESSIONS}/{created['id']}", headers=bearer(sessions_key))

        assert again.status_code == 204
        assert (
            await session.scalar(
                select(SsoSession.revoked_at).where(SsoSession.id == uuid.UUID(created["id"]))
            )
            == first
        )

    async def test_other_tokens_unaffected(
        self, client: httpx.AsyncClient, sessions_key: str, shopper: User
    ) -> None:
        first = (await issue(client, sessions_key, user_key=str(shopper.user_key))).json()
        second = (await issue(client, sessions_key, user_key=str(shopper.user_key))).json()

        await client.delete(f"{SESSIONS}/{first['id']}", headers=bearer(sessions_key))

        assert await validation_code(client, second["token"]) is None

    async def test_unknown_id_not_found(self, client: httpx.AsyncClient, sessions_key: str) -> None:
        response = await client.delete(f"{SESSIONS}/{uuid.uuid4()}", headers=bearer(sessions_key))

        assert_problem(response, 404, "not_found")

    async def test_malformed_id_rejected(
        self, client: httpx.AsyncClient, sessions_key: str
    ) -> None:
        response = await client.delete(f"{SESSIONS}/123", headers=bearer(sessions_key))

        assert_problem(response, 422, "validation_failed")


class TestRevokeAllOfUser:
    async def test_every_token_revoked(
        self,
        client: httpx.AsyncClient,
        session: AsyncSession,
        hasher: PasswordHasher,
        sessions_key: str,
        shopper: User,
    ) -> None:
        other = await make_user(session, hasher, login="other@example.com")
        tokens = [
            (await issue(client, sessions_key, user_key=str(shopper.user_key))).json()["token"]
            for _ in range(3)
        ]
        kept = (await issue(client, sessions_key, user_key=str(other.user_key))).json()["token"]

        response = await client.post(
            f"{SESSIONS}/revoke",
            json={"login": "shopper@example.com"},
            headers=bearer(sessions_key),
        )

        assert response.status_code == 200
        assert response.json() == {"revoked": 3}
        assert [await validation_code(client, token) for token in tokens] == ["21"] * 3
        assert await validation_code(client, kept) is None

    async def test_repeat_revokes_none(
        self, client: httpx.AsyncClient, sessions_key: str, shopper: User
    ) -> None:
        await issue(client, sessions_key, user_key=str(shopper.user_key))
        await client.post(
            f"{SESSIONS}/revoke",
            json={"user_key": str(shopper.user_key)},
            headers=bearer(sessions_key),
        )

        again = await client.post(
            f"{SESSIONS}/revoke",
            json={"external_reference_id": shopper.external_reference_id},
            headers=bearer(sessions_key),
        )

        assert again.json() == {"revoked": 0}

    async def test_unknown_user_not_found(
        self, client: httpx.AsyncClient, sessions_key: str
    ) -> None:
        response = await client.post(
            f"{SESSIONS}/revoke", json={"user_key": str(uuid.uuid4())}, headers=bearer(sessions_key)
        )

        assert_problem(response, 404, "not_found")

    async def test_password_not_accepted(
        self, client: httpx.AsyncClient, sessions_key: str, shopper: User
    ) -> None:
        response = await client.post(
            f"{SESSIONS}/revoke",
            json={"login": "shopper@example.com", "password": DEFAULT_PASSWORD},
            headers=bearer(sessions_key),
        )

        assert_problem(response, 422, "validation_failed")


class TestAdminChangesRevoke:
    async def test_disable_revokes(
        self,
        client: httpx.AsyncClient,
        session: AsyncSession,
        admin_key: str,
        sessions_key: str,
        shopper: User,
    ) -> None:
        created = (await issue(client, sessions_key, user_key=str(shopper.user_key))).json()

        await client.post(f"{USERS}/{shopper.user_key}/disable", headers=bearer(admin_key))

        assert await validation_code(client, created["token"]) == "24"
        row = await session.scalar(
            select(SsoSession).where(SsoSession.id == uuid.UUID(created["id"]))
        )
        assert row is not None
        assert row.revoked_reason == "user_disabled"

    async def test_enabling_again_keeps_revocation(
        self, client: httpx.AsyncClient, admin_key: str, sessions_key: str, shopper: User
    ) -> None:
        created = (await issue(client, sessions_key, user_key=str(shopper.user_key))).json()
        await client.post(f"{USERS}/{shopper.user_key}/disable", headers=bearer(admin_key))

        await client.post(f"{USERS}/{shopper.user_key}/enable", headers=bearer(admin_key))

        assert await validation_code(client, created["token"]) == "21"

    async def test_password_change_revokes(
        self, client: httpx.AsyncClient, admin_key: str, sessions_key: str, shopper: User
    ) -> None:
        created = (await issue(client, sessions_key, user_key=str(shopper.user_key))).json()

        changed = await client.put(
            f"{USERS}/{shopper.user_key}/password",
            json={"password": "a whole new password"},
            headers=bearer(admin_key),
        )

        assert changed.status_code == 200, changed.text
        assert await validation_code(client, created["token"]) == "21"

    async def test_erase_revokes(
        self,
        client: httpx.AsyncClient,
        session: AsyncSession,
        admin_key: str,
        sessions_key: str,
        shopper: User,
    ) -> None:
        created = (await issue(client, sessions_key, user_key=str(shopper.user_key))).json()

        erased = await client.post(f"{USERS}/{shopper.user_key}/erase", headers=bearer(admin_key))

        assert erased.status_code == 200, erased.text
        assert await validation_code(client, created["token"]) == "25"
        row = await session.scalar(
            select(SsoSession).where(SsoSession.id == uuid.UUID(created["id"]))
        )
        assert row is not None
        assert row.revoked_reason == "user_erased"


class TestSingleSignOnFlow:
    """The flow of the README: the site issues a token, then DR validates, registers, fetches."""

    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(
            rum_stored_attributes="hasAcceptedTermsNConditions",
            rum_returned_attributes="hasAcceptedTermsNConditions",
        )

    async def test_full_flow(
        self, client: httpx.AsyncClient, sessions_key: str, shopper: User
    ) -> None:
        issued = await issue(
            client, sessions_key, login="shopper@example.com", password=DEFAULT_PASSWORD
        )
        token = issued.json()["token"]

        validated = await client.post(
            "/rum/session", content=session_request(token), headers=basic_auth()
        )
        registered = await client.post(
            "/rum/create-user",
            content=create_request(
                "new.shopper@example.com",
                "a long enough password",
                attributes=[("hasAcceptedTermsNConditions", "true")],
            ),
            headers=basic_auth(),
        )
        new_erid = child_text(parse(registered.content), "userKey", "externalReferenceID")
        assert new_erid is not None
        profile = await client.post(
            "/rum/user-profile", content=profile_request(new_erid), headers=basic_auth()
        )

        assert issued.status_code == 201
        assert (
            child_text(parse(validated.content), "userKey", "externalReferenceID")
            == shopper.external_reference_id
        )
        assert child_text(parse(registered.content), "successful") == "true"
        profile_root = parse(profile.content)
        assert not is_nil(profile_root, "userInfo")
        assert child_text(profile_root, "userInfo", "email") == "new.shopper@example.com"
        assert child_text(profile_root, "userInfo", "shippingAddress", "country") == "US"
        assert child_text(profile_root, "extendedAttributes", "item", "value") == "true"


class TestLoginLockout:
    """The sessions API checks passwords under the same lockout as RemoteLogin."""

    async def test_locked_account_rejects_correct_password(
        self, client: httpx.AsyncClient, session: AsyncSession, hasher: PasswordHasher
    ) -> None:
        await make_user(session, hasher, login="locked-api@example.com")
        headers = bearer(await new_key(session, "sessions", name="merchant site"))

        for _ in range(5):
            wrong = await client.post(
                "/api/v1/sessions",
                json={"login": "locked-api@example.com", "password": "wrong guess 1"},
                headers=headers,
            )
            assert wrong.status_code == 400
        right = await client.post(
            "/api/v1/sessions",
            json={"login": "locked-api@example.com", "password": DEFAULT_PASSWORD},
            headers=headers,
        )

        assert right.status_code == 400
        assert right.json()["code"] == "invalid_credentials"
