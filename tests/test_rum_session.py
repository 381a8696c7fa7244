"""RemoteSessionValidation over HTTP: each failure kind, several tokens, renewal and attributes."""

from __future__ import annotations

import hashlib
import logging
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.identity.passwords import PasswordHasher
from app.identity.service import erase_user, find_user, set_password
from app.models import LoginEvent, SsoSession, User
from app.sessions.service import create_session, generate_token, revoke_session
from app.settings import Settings
from tests.conftest import make_settings
from tests.factories import DEFAULT_PASSWORD, make_user
from tests.rum_messages import (
    COMMON_NS,
    RUM_NS,
    basic_auth,
    child_text,
    create_request,
    login_request,
    parse,
    profile_request,
    session_request,
)

INVALID_SESSION = "Invalid session"


async def issue(session: AsyncSession, user: User, settings: Settings) -> tuple[Any, str]:
    issued = await create_session(session, user, settings)
    await session.commit()
    return issued.id, issued.token


async def validate(
    client: httpx.AsyncClient, body: bytes, path: str = "/rum/session"
) -> dict[str, str | None]:
    response = await client.post(path, content=body, headers=basic_auth())
    assert response.status_code == 200, response.text
    root = parse(response.content)
    assert root.tag == f"{{{RUM_NS}}}ValidateSessionResponse"
    if child_text(root, "successful") == "true":
        return {
            "successful": "true",
            "erid": child_text(root, "userKey", "externalReferenceID"),
            "login": child_text(root, "userKey", "loginID"),
            "site": child_text(root, "userKey", "siteID"),
        }
    return {
        "successful": "false",
        "code": child_text(root, "errorCode"),
        "message": child_text(root, "errorMessage"),
    }


async def last_event(session: AsyncSession) -> LoginEvent:
    event = await session.scalar(select(LoginEvent).order_by(LoginEvent.id.desc()).limit(1))
    assert event is not None
    return event


@pytest.fixture
async def shopper(session: AsyncSession, hasher: PasswordHasher) -> User:
    return await make_user(session, hasher, login="shopper@example.com")


@pytest.fixture
async def other_shopper(session: AsyncSession, hasher: PasswordHasher) -> User:
    return await make_user(session, hasher, login="other@example.com")


class TestValidToken:
    async def test_identifies_owner(
        self, client: httpx.AsyncClient, session: AsyncSession, shopper: User, settings: Settings
    ) -> None:
        _, token = await issue(session, shopper, settings)

        result = await validate(client, session_request(token))

        assert result == {
            "successful": "true",
            "erid": shopper.external_reference_id,
            "login": "shopper@example.com",
            "site": "headwtr",
        }

    async def test_root_endpoint_dispatches(
        self, client: httpx.AsyncClient, session: AsyncSession, shopper: User, settings: Settings
    ) -> None:
        _, token = await issue(session, shopper, settings)

        result = await validate(client, session_request(token), path="/rum")

        assert result["erid"] == shopper.external_reference_id

    async def test_site_id_falls_back_to_setting(
        self, client: httpx.AsyncClient, session: AsyncSession, shopper: User, settings: Settings
    ) -> None:
        _, token = await issue(session, shopper, settings)

        result = await validate(client, session_request(token, site_id=None))

        assert result["site"] == "headwtr"

    async def test_validation_stamped(
        self, client: httpx.AsyncClient, session: AsyncSession, shopper: User, settings: Settings
    ) -> None:
        session_id, token = await issue(session, shopper, settings)

        await validate(client, session_request(token))
        stamped = await session.scalar(
            select(SsoSession.last_validated_at).where(SsoSession.id == session_id)
        )

        assert stamped is not None

    async def test_only_digest_stored(
        self, client: httpx.AsyncClient, session: AsyncSession, shopper: User, settings: Settings
    ) -> None:
        session_id, token = await issue(session, shopper, settings)

        row = await session.scalar(select(SsoSession).where(SsoSession.id == session_id))

        assert row is not None
        assert row.token_hash == hashlib.sha256(token.encode()).digest()
        assert token.encode() not in repr(vars(row)).encode()

    async def test_token_is_256_bits_url_safe(
        self, session: AsyncSession, shopper: User, settings: Settings
    ) -> None:
        _, token = await issue(session, shopper, settings)

        assert len(token) == 43
        assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")

    async def test_wrong_endpoint_rejected(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/rum/session", content=login_request("x@example.com", "secret12"), headers=basic_auth()
        )

        assert response.status_code == 400
        assert child_text(parse(response.content), "code") == "wrong_endpoint"


class TestFailureKinds:
    async def assert_failure(
        self, client: httpx.AsyncClient, session: AsyncSession, token: str, code: str, reason: str
    ) -> None:
        result = await validate(client, session_request(token))

        assert result == {"successful": "false", "code": code, "message": INVALID_SESSION}
        event = await last_event(session)
        assert (event.kind, event.outcome, event.reason) == ("session", "failure", reason)

    async def test_expired(
        self, client: httpx.AsyncClient, session: AsyncSession, shopper: User, settings: Settings
    ) -> None:
        session_id, token = await issue(session, shopper, settings)
        await session.execute(
            update(SsoSession)
            .where(SsoSession.id == session_id)
            .values(expires_at=func.now() - timedelta(seconds=1))
        )
        await session.commit()

        await self.assert_failure(client, session, token, "20", "expired")

    async def test_revoked(
        self, client: httpx.AsyncClient, session: AsyncSession, shopper: User, settings: Settings
    ) -> None:
        session_id, token = await issue(session, shopper, settings)
        await revoke_session(session, session_id, "test")
        await session.commit()

        await self.assert_failure(client, session, token, "21", "revoked")

    async def test_password_change_revokes(
        self,
        client: httpx.AsyncClient,
        session: AsyncSession,
        hasher: PasswordHasher,
        shopper: User,
        settings: Settings,
    ) -> None:
        session_id, token = await issue(session, shopper, settings)
        await session.execute(
            update(SsoSession)
            .where(SsoSession.id == session_id)
            .values(created_at=func.now() - timedelta(minutes=5))
        )
        user = await find_user(session, user_key=shopper.user_key)
        assert user is not None
        # Changed without revoke_user_sessions: the validation still rejects the older token.
        await set_password(session, hasher, user, "a brand new password")
        await session.commit()

        await self.assert_failure(client, session, token, "21", "revoked")

    async def test_unknown(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        await self.assert_failure(client, session, generate_token(), "22", "unknown")

    @pytest.mark.parametrize(
        "token",
        ["short", "x" * 44, "a" * 42 + "!", "a" * 42 + "=", "é" * 43, "   "],
        ids=["short", "long", "symbol", "padding", "non-ascii", "blank"],
    )
    async def test_malformed(
        self, client: httpx.AsyncClient, session: AsyncSession, token: str
    ) -> None:
        await self.assert_failure(client, session, token, "23", "malformed")

    async def test_user_disabled(
        self, client: httpx.AsyncClient, session: AsyncSession, shopper: User, settings: Settings
    ) -> None:
        _, token = await issue(session, shopper, settings)
        await session.execute(update(User).where(User.id == shopper.id).values(status="disabled"))
        await session.commit()

        await self.assert_failure(client, session, token, "24", "user_disabled")

    async def test_user_erased(
        self, client: httpx.AsyncClient, session: AsyncSession, shopper: User, settings: Settings
    ) -> None:
        _, token = await issue(session, shopper, settings)
        user = await find_user(session, user_key=shopper.user_key)
        assert user is not None
        await erase_user(session, user)
        await session.commit()

        await self.assert_failure(client, session, token, "25", "user_erased")

    async def test_no_token(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        body = session_request(None, attributes=[("crmSession", "F3CB68D6/8443")])

        result = await validate(client, body)

        assert result == {"successful": "false", "code": "26", "message": INVALID_SESSION}
        assert (await last_event(session)).reason == "no_token"

    async def test_neither_token_nor_attributes_is_bad_request(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.post(
            "/rum/session", content=session_request(None), headers=basic_auth()
        )

        assert response.status_code == 400
        assert child_text(parse(response.content), "code") == "missing_field"

    async def test_failure_kinds_share_one_message(
        self, client: httpx.AsyncClient, session: AsyncSession, shopper: User, settings: Settings
    ) -> None:
        session_id, revoked = await issue(session, shopper, settings)
        await revoke_session(session, session_id, "test")
        await session.commit()

        answers = [
            await client.post("/rum/session", content=session_request(token), headers=basic_auth())
            for token in (revoked, generate_token(), "bad")
        ]

        messages = {child_text(parse(answer.content), "errorMessage") for answer in answers}
        codes = [child_text(parse(answer.content), "errorCode") for answer in answers]
        assert messages == {INVALID_SESSION}
        assert codes == ["21", "22", "23"]


class TestSeveralTokens:
    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(rum_session_token_attributes="siteSession,legacySession")

    async def test_attribute_token_used(
        self, client: httpx.AsyncClient, session: AsyncSession, shopper: User, settings: Settings
    ) -> None:
        _, token = await issue(session, shopper, settings)

        result = await validate(client, session_request(None, attributes=[("siteSession", token)]))

        assert result["erid"] == shopper.external_reference_id

    async def test_first_valid_wins(
        self,
        client: httpx.AsyncClient,
        session: AsyncSession,
        shopper: User,
        other_shopper: User,
        settings: Settings,
    ) -> None:
        _, first = await issue(session, shopper, settings)
        _, second = await issue(session, other_shopper, settings)
        body = session_request(
            generate_token(),
            attributes=[("crmSession", "x"), ("legacySession", first), ("siteSession", second)],
        )

        result = await validate(client, body)

        assert result["erid"] == shopper.external_reference_id

    async def test_session_token_before_attributes(
        self,
        client: httpx.AsyncClient,
        session: AsyncSession,
        shopper: User,
        other_shopper: User,
        settings: Settings,
    ) -> None:
        _, first = await issue(session, shopper, settings)
        _, second = await issue(session, other_shopper, settings)

        result = await validate(
            client, session_request(second, attributes=[("siteSession", first)])
        )

        assert result["erid"] == other_shopper.external_reference_id

    async def test_unconfigured_attribute_ignored(
        self, client: httpx.AsyncClient, session: AsyncSession, shopper: User, settings: Settings
    ) -> None:
        _, token = await issue(session, shopper, settings)

        result = await validate(client, session_request(None, attributes=[("crmSession", token)]))

        assert result["code"] == "26"

    async def test_first_failure_reported(
        self, client: httpx.AsyncClient, session: AsyncSession, shopper: User, settings: Settings
    ) -> None:
        session_id, revoked = await issue(session, shopper, settings)
        await revoke_session(session, session_id, "test")
        await session.commit()
        body = session_request(
            revoked, attributes=[("siteSession", "bad"), ("legacySession", generate_token())]
        )

        result = await validate(client, body)

        assert result["code"] == "21"

    async def test_malformed_first_reported(self, client: httpx.AsyncClient) -> None:
        body = session_request("bad", attributes=[("siteSession", generate_token())])

        result = await validate(client, body)

        assert result["code"] == "23"


class TestUserKeyHint:
    async def test_mismatch_logged_identity_from_token(
        self,
        client: httpx.AsyncClient,
        session: AsyncSession,
        shopper: User,
        other_shopper: User,
        settings: Settings,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        _, token = await issue(session, shopper, settings)
        body = session_request(
            token, login_id="other@example.com", erid=other_shopper.external_reference_id
        )

        with caplog.at_level(logging.INFO):
            result = await validate(client, body)

        assert result["erid"] == shopper.external_reference_id
        assert "rum.session_hint_mismatch" in caplog.text
        assert "loginID,externalReferenceID" in caplog.text
        assert "other@example.com" not in caplog.text
        assert token not in caplog.text
        event = await last_event(session)
        assert (event.outcome, event.reason) == ("success", "user_key_hint_mismatch")
        assert event.user_key == shopper.user_key

    async def test_matching_hint_not_logged(
        self,
        client: httpx.AsyncClient,
        session: AsyncSession,
        shopper: User,
        settings: Settings,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        _, token = await issue(session, shopper, settings)
        body = session_request(
            token, login_id="SHOPPER@example.com", erid=shopper.external_reference_id.lower()
        )

        with caplog.at_level(logging.INFO):
            result = await validate(client, body)

        assert result["successful"] == "true"
        assert "rum.session_hint_mismatch" not in caplog.text
        assert (await last_event(session)).reason is None


class TestEventsHoldNoToken:
    async def test_token_absent_from_events(
        self, client: httpx.AsyncClient, session: AsyncSession, shopper: User, settings: Settings
    ) -> None:
        _, token = await issue(session, shopper, settings)

        await validate(client, session_request(token))
        await validate(
            client, session_request(token[:-1] + "A" if token[-1] != "A" else token[:-1] + "B")
        )

        events = (
            await session.scalars(select(LoginEvent).where(LoginEvent.kind == "session"))
        ).all()
        assert len(events) == 2
        assert token not in repr([vars(event) for event in events])
        assert token[:20] not in repr([vars(event) for event in events])


async def push_times(
    session: AsyncSession, session_id: Any, *, created_ago: str, expires_in: str
) -> None:
    """Move a session's issue and expiry times, and its user's password change before both."""
    user_id = select(SsoSession.user_id).where(SsoSession.id == session_id).scalar_subquery()
    await session.execute(
        update(User)
        .where(User.id == user_id)
        .values(password_changed_at=func.now() - text("interval '1 day'"))
    )
    await session.execute(
        update(SsoSession)
        .where(SsoSession.id == session_id)
        .values(
            created_at=func.now() - text(f"interval '{created_ago}'"),
            expires_at=func.now() + text(f"interval '{expires_in}'"),
        )
    )
    await session.commit()


async def expiry_of(session: AsyncSession, session_id: Any) -> Any:
    return await session.scalar(select(SsoSession.expires_at).where(SsoSession.id == session_id))


class TestSlidingRenewal:
    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(
            session_sliding_renewal=True,
            session_lifetime_minutes=60,
            session_max_lifetime_minutes=180,
        )

    async def test_expiry_moves_forward(
        self, client: httpx.AsyncClient, session: AsyncSession, shopper: User, settings: Settings
    ) -> None:
        session_id, token = await issue(session, shopper, settings)
        await push_times(session, session_id, created_ago="30 minutes", expires_in="30 minutes")
        now = await session.scalar(select(func.now()))
        assert now is not None

        result = await validate(client, session_request(token))

        assert result["successful"] == "true"
        assert await expiry_of(session, session_id) == now + timedelta(minutes=60)

    async def test_capped_at_max_lifetime(
        self, client: httpx.AsyncClient, session: AsyncSession, shopper: User, settings: Settings
    ) -> None:
        session_id, token = await issue(session, shopper, settings)
        await push_times(session, session_id, created_ago="170 minutes", expires_in="5 minutes")
        now = await session.scalar(select(func.now()))
        assert now is not None

        result = await validate(client, session_request(token))

        assert result["successful"] == "true"
        assert await expiry_of(session, session_id) == now + timedelta(minutes=10)

    async def test_never_shortened(
        self, client: httpx.AsyncClient, session: AsyncSession, shopper: User, settings: Settings
    ) -> None:
        session_id, token = await issue(session, shopper, settings)
        await push_times(session, session_id, created_ago="1 minute", expires_in="90 minutes")
        before = await expiry_of(session, session_id)

        result = await validate(client, session_request(token))

        assert result["successful"] == "true"
        assert await expiry_of(session, session_id) == before


class TestFixedLifetime:
    async def test_default_lifetime_eight_hours(
        self, session: AsyncSession, shopper: User, settings: Settings
    ) -> None:
        session_id, _ = await issue(session, shopper, settings)

        row = await session.scalar(select(SsoSession).where(SsoSession.id == session_id))

        assert row is not None
        assert row.expires_at - row.created_at == timedelta(hours=8)

    async def test_expiry_unchanged_by_validation(
        self, client: httpx.AsyncClient, session: AsyncSession, shopper: User, settings: Settings
    ) -> None:
        session_id, token = await issue(session, shopper, settings)
        await push_times(session, session_id, created_ago="30 minutes", expires_in="30 minutes")
        before = await expiry_of(session, session_id)

        result = await validate(client, session_request(token))

        assert result["successful"] == "true"
        assert await expiry_of(session, session_id) == before


def attribute_items(body: bytes) -> dict[str, str | None]:
    root = parse(body)
    items = root.findall(f".//{{{COMMON_NS}}}extendedAttributes/{{{COMMON_NS}}}item")
    return {child_text(item, "name") or "": child_text(item, "value") for item in items}


class TestAttributesRoundTrip:
    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(
            rum_stored_attributes="hasAcceptedTermsNConditions,loyaltyTier,internalNote",
            rum_returned_attributes="loyaltyTier,hasAcceptedTermsNConditions",
        )

    async def test_through_all_four_calls(
        self, client: httpx.AsyncClient, session: AsyncSession, settings: Settings
    ) -> None:
        expected = {"loyaltyTier": "gold & silver", "hasAcceptedTermsNConditions": "true"}
        create_body = create_request(
            "roundtrip@example.com",
            DEFAULT_PASSWORD,
            attributes=[
                ("hasAcceptedTermsNConditions", "true"),
                ("internalNote", "stored, never returned"),
                ("loyaltyTier", "gold & silver"),
                ("crmSession", "neither stored nor returned"),
            ],
        )

        created = await client.post("/rum/create-user", content=create_body, headers=basic_auth())
        erid = child_text(parse(created.content), "userKey", "externalReferenceID")
        assert erid is not None
        login = await client.post(
            "/rum/login",
            content=login_request("roundtrip@example.com", DEFAULT_PASSWORD),
            headers=basic_auth(),
        )
        profile = await client.post(
            "/rum/user-profile", content=profile_request(erid), headers=basic_auth()
        )
        user = await find_user(session, external_reference_id=erid)
        assert user is not None
        _, token = await issue(session, user, settings)
        validated = await client.post(
            "/rum/session", content=session_request(token), headers=basic_auth()
        )

        assert attribute_items(created.content) == expected
        assert attribute_items(login.content) == expected
        assert attribute_items(profile.content) == expected
        assert attribute_items(validated.content) == expected
        assert list(attribute_items(login.content)) == [
            "loyaltyTier",
            "hasAcceptedTermsNConditions",
        ]
        assert {attribute.name for attribute in user.attributes} == {
            "hasAcceptedTermsNConditions",
            "internalNote",
            "loyaltyTier",
        }

    async def test_nothing_returned_without_allowlist(
        self, client: httpx.AsyncClient, session: AsyncSession, hasher: PasswordHasher
    ) -> None:
        await make_user(
            session, hasher, login="plain@example.com", attributes={"unlisted": "value"}
        )

        login = await client.post(
            "/rum/login",
            content=login_request("plain@example.com", DEFAULT_PASSWORD),
            headers=basic_auth(),
        )

        assert child_text(parse(login.content), "successful") == "true"
        assert attribute_items(login.content) == {}
