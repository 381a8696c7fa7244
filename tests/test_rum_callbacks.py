"""RemoteLogin and RemoteUserFetch over HTTP, against the real user store."""

from __future__ import annotations

import base64

import httpx
import pytest
from passlib.hash import bcrypt, pbkdf2_sha256
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.identity.passwords import PasswordHasher
from app.identity.schemas import Address
from app.identity.service import erase_user
from app.models import AuditEvent, LoginEvent, User
from app.settings import Settings
from tests.conftest import RUM_PASSWORD, RUM_USERNAME, make_settings
from tests.factories import DEFAULT_PASSWORD, make_user
from tests.rum_messages import (
    COMMON_NS,
    RUM_NS,
    basic_auth,
    child_text,
    is_nil,
    login_request,
    parse,
    profile_request,
)

SAMPLE_ERID = "D05B4D68-F49D-11DA-8019-88F835DA4C6C"


@pytest.fixture
async def demo_user(session: AsyncSession, hasher: PasswordHasher) -> User:
    return await make_user(
        session,
        hasher,
        login="demo@digitalriver.com",
        password="123123ab",
        external_reference_id=SAMPLE_ERID,
        email="demo@digitalriver.com",
        first_name="Émile",
        last_name="Durand",
        locale="fr_FR",
        home_phone="+33 1 23 45 67 89",
        shipping_address=Address(
            name1="Émile Durand",
            company_name="Héritage & Fils",
            line1="12 rue de la Paix",
            line2="Bâtiment B",
            line3="3e étage",
            city="Paris",
            state="IDF",
            postal_code="75002",
            country="FR",
            country_name="France",
            email="ship@example.com",
            phone_number="+33 1 00 00 00 00",
        ),
        billing_address=Address(line1="1 Main St", city="Minnetonka", country="US", name2="AP"),
    )


class TestLogin:
    async def test_success_returns_user_key(self, client: httpx.AsyncClient, demo_user: User) -> None:
        response = await client.post(
            "/rum/login", content=login_request("demo@digitalriver.com", "123123ab"), headers=basic_auth()
        )

        assert response.status_code == 200
        assert response.headers["content-type"] == "text/xml; charset=UTF-8"
        root = parse(response.content)
        assert root.tag == f"{{{RUM_NS}}}LoginResponse"
        assert child_text(root, "successful") == "true"
        assert child_text(root, "userKey", "loginID") == "demo@digitalriver.com"
        assert child_text(root, "userKey", "externalReferenceID") == SAMPLE_ERID
        assert child_text(root, "userKey", "siteID") == "headwtr"
        assert root.find(f"{{{COMMON_NS}}}userKey") is not None
        assert root.find("successful") is not None

    async def test_login_case_and_form_insensitive(
        self, client: httpx.AsyncClient, session: AsyncSession, hasher: PasswordHasher
    ) -> None:
        await make_user(session, hasher, login="Émile@Example.com")

        response = await client.post(
            "/rum/login",
            content=login_request("E\u0301MILE@example.com", DEFAULT_PASSWORD),
            headers=basic_auth(),
        )

        assert child_text(parse(response.content), "successful") == "true"

    async def test_site_id_echoed_from_request(self, client: httpx.AsyncClient, demo_user: User) -> None:
        response = await client.post(
            "/rum/login",
            content=login_request("demo@digitalriver.com", "123123ab", site_id="othersite"),
            headers=basic_auth(),
        )

        assert child_text(parse(response.content), "userKey", "siteID") == "othersite"

    async def test_unknown_and_wrong_password_identical(
        self, client: httpx.AsyncClient, demo_user: User
    ) -> None:
        wrong = await client.post(
            "/rum/login", content=login_request("demo@digitalriver.com", "nope-nope"), headers=basic_auth()
        )
        unknown = await client.post(
            "/rum/login", content=login_request("nobody@example.com", "123123ab"), headers=basic_auth()
        )

        assert wrong.status_code == unknown.status_code == 200
        assert wrong.content == unknown.content
        per_request = {"x-request-id"}
        assert {k: v for k, v in wrong.headers.items() if k not in per_request} == {
            k: v for k, v in unknown.headers.items() if k not in per_request
        }
        root = parse(wrong.content)
        assert child_text(root, "successful") == "false"
        assert child_text(root, "errorCode") == "5"
        assert child_text(root, "errorMessage") == "Invalid login"

    async def test_disabled_told_only_after_correct_password(
        self, client: httpx.AsyncClient, session: AsyncSession, hasher: PasswordHasher
    ) -> None:
        await make_user(session, hasher, login="off@example.com", status="disabled")

        wrong = await client.post(
            "/rum/login", content=login_request("off@example.com", "wrong password"), headers=basic_auth()
        )
        right = await client.post(
            "/rum/login", content=login_request("off@example.com", DEFAULT_PASSWORD), headers=basic_auth()
        )

        assert child_text(parse(wrong.content), "errorCode") == "5"
        assert child_text(parse(right.content), "errorCode") == "6"
        assert child_text(parse(right.content), "errorMessage") == "User not active"

    @pytest.mark.parametrize(
        "legacy_hash",
        [bcrypt.using(rounds=4).hash(DEFAULT_PASSWORD), pbkdf2_sha256.using(rounds=1000).hash(DEFAULT_PASSWORD)],
        ids=["bcrypt", "pbkdf2_sha256"],
    )
    async def test_legacy_hash_rehashed_on_login(
        self, client: httpx.AsyncClient, session: AsyncSession, hasher: PasswordHasher, legacy_hash: str
    ) -> None:
        user = await make_user(session, hasher, login="old@example.com", password=None, password_hash=legacy_hash)

        response = await client.post(
            "/rum/login", content=login_request("old@example.com", DEFAULT_PASSWORD), headers=basic_auth()
        )
        stored = await session.scalar(select(User.password_hash).where(User.id == user.id))

        assert child_text(parse(response.content), "successful") == "true"
        assert stored is not None and stored.startswith("$argon2id$")

    async def test_outcomes_recorded_without_secrets(
        self, client: httpx.AsyncClient, session: AsyncSession, demo_user: User
    ) -> None:
        await client.post(
            "/rum/login", content=login_request("demo@digitalriver.com", "123123ab"), headers=basic_auth()
        )
        await client.post(
            "/rum/login", content=login_request("demo@digitalriver.com", "bad-guess-1"), headers=basic_auth()
        )

        events = (await session.scalars(select(LoginEvent).order_by(LoginEvent.id))).all()
        assert [(e.kind, e.outcome, e.reason) for e in events[-2:]] == [
            ("login", "success", None),
            ("login", "failure", "wrong_password"),
        ]
        assert all(e.user_key == demo_user.user_key for e in events[-2:])
        assert "bad-guess-1" not in repr([vars(e) for e in events])

    async def test_root_endpoint_dispatches_login(self, client: httpx.AsyncClient, demo_user: User) -> None:
        response = await client.post(
            "/rum", content=login_request("demo@digitalriver.com", "123123ab"), headers=basic_auth()
        )

        assert child_text(parse(response.content), "successful") == "true"


async def make_disabled_user(
    session: AsyncSession, hasher: PasswordHasher, password_hash: str
) -> User:
    return await make_user(
        session, hasher, login="off@example.com", status="disabled", password=None,
        password_hash=password_hash,
    )


class TestDisabledUserRehash:
    """A disabled user's correct password upgrades an outdated hash, on both login paths."""

    @pytest.fixture(params=[0, 1000], ids=["driver path", "address throttling"])
    def settings(self, request: pytest.FixtureRequest) -> Settings:
        return make_settings(throttle_address_max_failures=request.param)

    async def test_correct_password_rehashes(
        self, client: httpx.AsyncClient, session: AsyncSession, hasher: PasswordHasher
    ) -> None:
        legacy_hash = bcrypt.using(rounds=4).hash(DEFAULT_PASSWORD)
        user = await make_disabled_user(session, hasher, legacy_hash)

        wrong = await client.post(
            "/rum/login", content=login_request("off@example.com", "wrong password"),
            headers=basic_auth(),
        )
        after_wrong = await session.scalar(select(User.password_hash).where(User.id == user.id))
        right = await client.post(
            "/rum/login", content=login_request("off@example.com", DEFAULT_PASSWORD),
            headers=basic_auth(),
        )
        upgraded = await session.scalar(select(User.password_hash).where(User.id == user.id))
        reasons = (
            await session.scalars(
                select(LoginEvent.reason).where(LoginEvent.user_key == user.user_key)
                .order_by(LoginEvent.id)
            )
        ).all()

        assert child_text(parse(wrong.content), "errorCode") == "5"
        assert after_wrong == legacy_hash
        assert child_text(parse(right.content), "errorCode") == "6"
        assert upgraded is not None
        assert upgraded.startswith("$argon2id$")
        assert hasher.context.verify(DEFAULT_PASSWORD, upgraded)
        assert list(reasons) == ["wrong_password", "disabled"]


class TestLockoutStartRehash:
    """The attempt that starts a lockout still upgrades a disabled user's outdated hash."""

    @pytest.fixture(params=[0, 1000], ids=["driver path", "address throttling"])
    def settings(self, request: pytest.FixtureRequest) -> Settings:
        return make_settings(
            throttle_account_max_failures=2, throttle_address_max_failures=request.param
        )

    async def test_correct_password_rehashes(
        self, client: httpx.AsyncClient, session: AsyncSession, hasher: PasswordHasher
    ) -> None:
        user = await make_disabled_user(
            session, hasher, bcrypt.using(rounds=4).hash(DEFAULT_PASSWORD)
        )

        await client.post(
            "/rum/login", content=login_request("off@example.com", "wrong password"),
            headers=basic_auth(),
        )
        # The second failure in the window starts the lockout.
        right = await client.post(
            "/rum/login", content=login_request("off@example.com", DEFAULT_PASSWORD),
            headers=basic_auth(),
        )
        upgraded = await session.scalar(select(User.password_hash).where(User.id == user.id))
        locks = await session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "user.locked")
        )

        assert child_text(parse(right.content), "successful") == "false"
        assert locks == 1
        assert upgraded is not None
        assert upgraded.startswith("$argon2id$")
        assert hasher.context.verify(DEFAULT_PASSWORD, upgraded)


class TestProfile:
    async def test_every_field_returned(self, client: httpx.AsyncClient, demo_user: User) -> None:
        response = await client.post(
            "/rum/user-profile", content=profile_request(SAMPLE_ERID), headers=basic_auth()
        )

        assert response.status_code == 200
        root = parse(response.content)
        assert root.tag == f"{{{RUM_NS}}}GetUserProfileResponse"
        assert child_text(root, "userInfo", "userKey", "externalReferenceID") == SAMPLE_ERID
        assert child_text(root, "userInfo", "userKey", "loginID") == "demo@digitalriver.com"
        assert child_text(root, "userInfo", "userKey", "siteID") == "headwtr"
        assert is_nil(root, "userInfo", "userKey", "userID")
        assert child_text(root, "userInfo", "firstName") == "Émile"
        assert child_text(root, "userInfo", "lastName") == "Durand"
        assert child_text(root, "userInfo", "email") == "demo@digitalriver.com"
        assert child_text(root, "userInfo", "locale") == "fr_FR"
        assert child_text(root, "userInfo", "homePhone") == "+33 1 23 45 67 89"
        shipping = {
            "name1": "Émile Durand",
            "companyName": "Héritage & Fils",
            "line1": "12 rue de la Paix",
            "line2": "Bâtiment B",
            "line3": "3e étage",
            "city": "Paris",
            "state": "IDF",
            "postalCode": "75002",
            "country": "FR",
            "countryName": "France",
            "email": "ship@example.com",
            "phoneNumber": "+33 1 00 00 00 00",
        }
        for name, value in shipping.items():
            assert child_text(root, "userInfo", "shippingAddress", name) == value, name
        assert is_nil(root, "userInfo", "shippingAddress", "name2")
        assert child_text(root, "userInfo", "billingAddress", "city") == "Minnetonka"
        assert child_text(root, "userInfo", "billingAddress", "name2") == "AP"
        assert is_nil(root, "userInfo", "billingAddress", "line2")
        assert (child_text(root, "errorMessage") or "") == ""

    async def test_lookup_by_erid_any_case(self, client: httpx.AsyncClient, demo_user: User) -> None:
        response = await client.post(
            "/rum/user-profile", content=profile_request(SAMPLE_ERID.lower()), headers=basic_auth()
        )

        assert child_text(parse(response.content), "userInfo", "userKey", "externalReferenceID") == SAMPLE_ERID

    async def test_get_user_request_synonym(self, client: httpx.AsyncClient, demo_user: User) -> None:
        response = await client.post(
            "/rum/user-profile",
            content=profile_request(SAMPLE_ERID, root="GetUserRequest"),
            headers=basic_auth(),
        )

        assert child_text(parse(response.content), "userInfo", "firstName") == "Émile"

    async def test_site_id_falls_back_to_setting(self, client: httpx.AsyncClient, demo_user: User) -> None:
        response = await client.post(
            "/rum/user-profile", content=profile_request(SAMPLE_ERID, site_id=None), headers=basic_auth()
        )

        assert child_text(parse(response.content), "userInfo", "userKey", "siteID") == "headwtr"

    async def test_unknown_erid_nil_user_info(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/rum/user-profile", content=profile_request("NO-SUCH-ERID"), headers=basic_auth()
        )

        root = parse(response.content)
        assert response.status_code == 200
        assert is_nil(root, "userInfo")
        assert child_text(root, "errorMessage") == "User not found"

    async def test_disabled_user_not_active(
        self, client: httpx.AsyncClient, session: AsyncSession, hasher: PasswordHasher
    ) -> None:
        user = await make_user(session, hasher, status="disabled")

        response = await client.post(
            "/rum/user-profile", content=profile_request(user.external_reference_id), headers=basic_auth()
        )

        root = parse(response.content)
        assert is_nil(root, "userInfo")
        assert child_text(root, "errorMessage") == "User not active"

    async def test_erased_user_not_found_and_recorded(
        self, client: httpx.AsyncClient, session: AsyncSession, hasher: PasswordHasher
    ) -> None:
        user = await make_user(session, hasher)
        erid = user.external_reference_id
        await erase_user(session, user)
        await session.commit()

        response = await client.post("/rum/user-profile", content=profile_request(erid), headers=basic_auth())
        event = await session.scalar(select(LoginEvent).order_by(LoginEvent.id.desc()).limit(1))

        assert child_text(parse(response.content), "errorMessage") == "User not found"
        assert event is not None
        assert (event.kind, event.reason, event.external_reference_id) == ("profile", "erased", erid)


class TestCallerCredentials:
    """Basic credentials written as most clients write them, and in other accepted forms."""

    @pytest.mark.parametrize(
        "authorization",
        [
            "Basic " + base64.b64encode(f"{RUM_USERNAME}:{RUM_PASSWORD}".encode()).decode(),
            "basic " + base64.b64encode(f"{RUM_USERNAME}:{RUM_PASSWORD}".encode()).decode(),
            "BASIC  " + base64.b64encode(f"{RUM_USERNAME}:{RUM_PASSWORD}".encode()).decode(),
        ],
        ids=["canonical", "lower-case scheme", "upper-case scheme, two spaces"],
    )
    async def test_accepted_forms(self, client: httpx.AsyncClient, authorization: str) -> None:
        response = await client.post(
            "/rum/user-profile", content=profile_request(SAMPLE_ERID),
            headers={"Authorization": authorization, "Content-Type": "text/xml"},
        )

        assert response.status_code == 200

    async def test_canonical_header_with_extra_byte_rejected(
        self, client: httpx.AsyncClient
    ) -> None:
        token = base64.b64encode(f"{RUM_USERNAME}:{RUM_PASSWORD}".encode()).decode()
        response = await client.post(
            "/rum/user-profile", content=profile_request(SAMPLE_ERID),
            headers={"Authorization": f"Basic {token}x", "Content-Type": "text/xml"},
        )

        assert response.status_code == 401


class TestCallerNameWithColon:
    """A configured user name with a colon never matches: RFC 7617 splits at the first one."""

    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(rum_username="dr:callbacks")

    async def test_colon_name_rejected(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/rum/user-profile", content=profile_request(SAMPLE_ERID),
            headers=basic_auth("dr:callbacks", RUM_PASSWORD),
        )

        assert response.status_code == 401


class TestRequestErrors:
    async def test_missing_credentials_401(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/rum/login", content=login_request("a@example.com", "x"))

        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Basic")
        assert child_text(parse(response.content), "code") == "unauthorized"

    @pytest.mark.parametrize(
        ("username", "password"),
        [("digitalriver", "wrong-password"), ("someone", "callback-secret-for-tests"), ("", "")],
    )
    async def test_wrong_credentials_401(
        self, client: httpx.AsyncClient, username: str, password: str
    ) -> None:
        response = await client.post(
            "/rum/login", content=login_request("a@example.com", "x"), headers=basic_auth(username, password)
        )

        assert response.status_code == 401

    async def test_malformed_xml_400(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/rum/login", content=b"<ns1:LoginRequest", headers=basic_auth())

        assert response.status_code == 400
        assert child_text(parse(response.content), "code") == "malformed"

    async def test_unknown_root_400(self, client: httpx.AsyncClient) -> None:
        body = f'<ns1:DeleteEverything xmlns:ns1="{RUM_NS}"/>'.encode()

        response = await client.post("/rum", content=body, headers=basic_auth())

        assert response.status_code == 400
        root = parse(response.content)
        assert child_text(root, "code") == "unknown_root"
        assert "DeleteEverything" in (child_text(root, "message") or "")

    async def test_missing_login_id_400(self, client: httpx.AsyncClient) -> None:
        body = f'<ns1:LoginRequest xmlns:ns1="{RUM_NS}"><password>x</password></ns1:LoginRequest>'.encode()

        response = await client.post("/rum/login", content=body, headers=basic_auth())

        assert response.status_code == 400
        root = parse(response.content)
        assert child_text(root, "code") == "missing_field"
        assert "loginID" in (child_text(root, "message") or "")

    async def test_wrong_endpoint_400(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/rum/login", content=profile_request(SAMPLE_ERID), headers=basic_auth()
        )

        assert response.status_code == 400
        assert child_text(parse(response.content), "code") == "wrong_endpoint"

    async def test_body_too_large_413(self, client: httpx.AsyncClient) -> None:
        body = login_request("a@example.com", "x" * 70_000)

        response = await client.post("/rum/login", content=body, headers=basic_auth())

        assert response.status_code == 413

    async def test_non_xml_content_type_415(self, client: httpx.AsyncClient) -> None:
        headers = basic_auth() | {"Content-Type": "application/json"}

        response = await client.post("/rum/login", content=b"{}", headers=headers)

        assert response.status_code == 415

    async def test_billion_laughs_rejected(self, client: httpx.AsyncClient) -> None:
        body = (
            b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
            b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
            b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
            b"<lolz>&lol3;</lolz>"
        )

        response = await client.post("/rum", content=body, headers=basic_auth())

        assert response.status_code == 400
        assert child_text(parse(response.content), "code") == "dtd_forbidden"
        assert b"lollol" not in response.content

    async def test_external_entity_rejected(self, client: httpx.AsyncClient) -> None:
        body = (
            b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
            b'<ns1:LoginRequest xmlns:ns1="' + RUM_NS.encode() + b'"><userKey><loginID>&xxe;</loginID>'
            b"</userKey><password>x</password></ns1:LoginRequest>"
        )

        response = await client.post("/rum", content=body, headers=basic_auth())

        assert response.status_code == 400
        assert b"root:" not in response.content


class TestAllowedNetworks:
    async def test_caller_outside_networks_403(
        self, client: httpx.AsyncClient, app: object
    ) -> None:
        settings: Settings = app.state.settings  # type: ignore[attr-defined]
        app.state.settings = settings.model_copy(  # type: ignore[attr-defined]
            update={"rum_allowed_networks": [__import__("ipaddress").ip_network("10.0.0.0/8")]}
        )

        response = await client.post(
            "/rum/login", content=login_request("a@example.com", "x"), headers=basic_auth()
        )

        assert response.status_code == 403
