"""RemoteCreateUser over HTTP: new users, field checks, conflicts, retries and concurrency."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, text, update
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.engine import Database, create_engine, create_sessionmaker
from app.identity.passwords import PasswordHasher
from app.identity.schemas import UserCreate
from app.identity.service import address_of, create_user, find_user
from app.main import create_app
from app.models import LoginEvent, User, UserAttribute
from app.settings import Settings
from tests.conftest import make_settings
from tests.factories import DEFAULT_PASSWORD, make_user
from tests.rum_messages import (
    RUM_NS,
    basic_auth,
    child_text,
    create_request,
    login_request,
    parse,
)

PASSWORD = "correct horse battery"


async def register(
    client: httpx.AsyncClient, body: bytes, path: str = "/rum/create-user"
) -> dict[str, str | None]:
    response = await client.post(path, content=body, headers=basic_auth())
    assert response.status_code == 200, response.text
    root = parse(response.content)
    assert root.tag == f"{{{RUM_NS}}}CreateUserProfileResponse"
    result = {"successful": child_text(root, "successful")}
    if result["successful"] == "true":
        result["erid"] = child_text(root, "userKey", "externalReferenceID")
        result["login"] = child_text(root, "userKey", "loginID")
        result["site"] = child_text(root, "userKey", "siteID")
    else:
        result["code"] = child_text(root, "errorCode")
        result["message"] = child_text(root, "errorMessage")
    return result


async def users_with_login(session: AsyncSession, login: str) -> int:
    count = await session.scalar(
        select(func.count()).select_from(User).where(User.login_normalized == login.casefold())
    )
    return count or 0


class TestNewUser:
    async def test_created_with_new_erid(
        self, client: httpx.AsyncClient, session: AsyncSession, hasher: PasswordHasher
    ) -> None:
        result = await register(client, create_request("jane.doe@example.com", PASSWORD))

        assert result["successful"] == "true"
        assert result["login"] == "jane.doe@example.com"
        assert result["site"] == "headwtr"
        assert result["erid"] is not None
        assert uuid.UUID(result["erid"]).version == 4
        user = await find_user(session, login="jane.doe@example.com")
        assert user is not None
        assert user.external_reference_id == result["erid"]
        assert user.created_via == "rum"
        assert user.status == "active"
        assert user.password_hash is not None
        assert (await hasher.verify(PASSWORD, user.password_hash)).valid

    async def test_profile_fields_stored(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        body = create_request(
            "emile@example.com",
            PASSWORD,
            user_info={"firstName": "Émile", "lastName": "Durand & Fils", "locale": "fr_FR"},
            billing={"line1": "1 rue de Rivoli", "city": "Paris", "country": "FR"},
        )

        await register(client, body)
        user = await find_user(session, login="emile@example.com")

        assert user is not None
        assert user.first_name == "Émile"
        assert user.last_name == "Durand & Fils"
        assert user.email == "emile@example.com"
        assert user.locale == "fr_FR"
        assert user.home_phone == "952-555-0100"
        shipping = address_of(user, "shipping")
        billing = address_of(user, "billing")
        assert shipping is not None and shipping.postal_code == "55343"
        assert shipping.country == "US"
        assert billing is not None and billing.city == "Paris"

    async def test_create_user_request_root(self, client: httpx.AsyncClient) -> None:
        body = create_request("synonym@example.com", PASSWORD, root="CreateUserRequest")

        result = await register(client, body, path="/rum")

        assert result["successful"] == "true"

    async def test_wrong_endpoint_rejected(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/rum/login", content=create_request("x@example.com", PASSWORD), headers=basic_auth()
        )

        assert response.status_code == 400
        assert child_text(parse(response.content), "code") == "wrong_endpoint"

    async def test_empty_address_not_stored(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        body = create_request("noaddress@example.com", PASSWORD, shipping={"line1": None})

        await register(client, body)
        user = await find_user(session, login="noaddress@example.com")

        assert user is not None
        assert user.addresses == []

    async def test_event_recorded_without_password(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        result = await register(client, create_request("events@example.com", PASSWORD))

        event = await session.scalar(select(LoginEvent).order_by(LoginEvent.id.desc()).limit(1))

        assert event is not None
        assert (event.kind, event.outcome, event.reason) == ("registration", "success", None)
        assert event.external_reference_id == result["erid"]
        assert PASSWORD not in repr(vars(event))


class TestConflicts:
    async def test_login_of_admin_user_taken(
        self, client: httpx.AsyncClient, session: AsyncSession, hasher: PasswordHasher
    ) -> None:
        await make_user(session, hasher, login="taken@example.com", password=PASSWORD)

        result = await register(client, create_request("taken@example.com", PASSWORD))

        assert result == {"successful": "false", "code": "5", "message": "Email already used"}
        assert await users_with_login(session, "taken@example.com") == 1

    async def test_other_password_is_conflict(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        first = await register(client, create_request("twice@example.com", PASSWORD))

        second = await register(client, create_request("twice@example.com", "another password"))

        assert first["successful"] == "true"
        assert second == {"successful": "false", "code": "5", "message": "Email already used"}

    async def test_login_differing_in_case_is_taken(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        await register(client, create_request("case@example.com", PASSWORD))

        result = await register(client, create_request("CASE@Example.com", "a different one"))

        assert result["code"] == "5"
        assert await users_with_login(session, "case@example.com") == 1

    async def test_conflict_event_reason(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        await register(client, create_request("reason@example.com", PASSWORD))
        await register(client, create_request("reason@example.com", "something else"))

        event = await session.scalar(select(LoginEvent).order_by(LoginEvent.id.desc()).limit(1))

        assert event is not None
        assert (event.kind, event.outcome, event.reason) == (
            "registration",
            "failure",
            "login_taken",
        )


class TestRepeatedRegistration:
    async def test_retry_after_lost_response(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        body = create_request("retry@example.com", PASSWORD)
        # DR never saw this answer, so it asks the shopper again and sends the same request.
        first = await register(client, body)

        second = await register(client, body)

        assert first["successful"] == second["successful"] == "true"
        assert second["erid"] == first["erid"]
        assert await users_with_login(session, "retry@example.com") == 1
        event = await session.scalar(select(LoginEvent).order_by(LoginEvent.id.desc()).limit(1))
        assert event is not None
        assert (event.outcome, event.reason) == ("success", "repeated")

    async def test_retry_with_other_login_case(self, client: httpx.AsyncClient) -> None:
        first = await register(client, create_request("mixed@example.com", PASSWORD))

        second = await register(client, create_request("Mixed@Example.COM", PASSWORD))

        assert second["erid"] == first["erid"]
        assert second["login"] == "mixed@example.com"

    async def test_retry_after_window_is_conflict(
        self, client: httpx.AsyncClient, session: AsyncSession, hasher: PasswordHasher
    ) -> None:
        user = await make_user(
            session, hasher, login="late@example.com", password=PASSWORD, created_via="rum"
        )
        await session.execute(
            update(User)
            .where(User.id == user.id)
            .values(created_at=func.now() - text("interval '601 seconds'"))
        )
        await session.commit()

        result = await register(client, create_request("late@example.com", PASSWORD))

        assert result["code"] == "5"

    async def test_retry_within_window_succeeds(
        self, client: httpx.AsyncClient, session: AsyncSession, hasher: PasswordHasher
    ) -> None:
        user = await make_user(
            session, hasher, login="early@example.com", password=PASSWORD, created_via="rum"
        )
        await session.execute(
            update(User)
            .where(User.id == user.id)
            .values(created_at=func.now() - text("interval '590 seconds'"))
        )
        await session.commit()

        result = await register(client, create_request("early@example.com", PASSWORD))

        assert result["erid"] == user.external_reference_id

    async def test_admin_created_user_not_repeated(
        self, client: httpx.AsyncClient, session: AsyncSession, hasher: PasswordHasher
    ) -> None:
        await make_user(session, hasher, login="admin-made@example.com", password=PASSWORD)

        result = await register(client, create_request("admin-made@example.com", PASSWORD))

        assert result["code"] == "5"

    async def test_disabled_user_not_repeated(
        self, client: httpx.AsyncClient, session: AsyncSession, hasher: PasswordHasher
    ) -> None:
        await make_user(
            session,
            hasher,
            login="off@example.com",
            password=PASSWORD,
            created_via="rum",
            status="disabled",
        )

        result = await register(client, create_request("off@example.com", PASSWORD))

        assert result["code"] == "5"


class TestZeroWindow:
    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(rum_registration_retry_window_seconds=0)

    async def test_repeat_after_a_moment_is_conflict(
        self, client: httpx.AsyncClient, session: AsyncSession, hasher: PasswordHasher
    ) -> None:
        user = await make_user(
            session, hasher, login="zero@example.com", password=PASSWORD, created_via="rum"
        )
        await session.execute(
            update(User)
            .where(User.id == user.id)
            .values(created_at=func.now() - text("interval '1 second'"))
        )
        await session.commit()

        result = await register(client, create_request("zero@example.com", PASSWORD))

        assert result["code"] == "5"


INVALID_FIELDS = [
    pytest.param(
        {"user_info": {"email": "not-an-address"}},
        "userInfo/email: invalid email address",
        id="email-syntax",
    ),
    pytest.param(
        {"user_info": {"email": "jane@@example.com"}},
        "userInfo/email: invalid email address",
        id="email-double-at",
    ),
    pytest.param(
        {"user_info": {"locale": "en-US"}},
        "userInfo/locale: locale must look like en_US",
        id="locale-hyphen",
    ),
    pytest.param(
        {"user_info": {"locale": "EN_us"}},
        "userInfo/locale: locale must look like en_US",
        id="locale-case",
    ),
    pytest.param(
        {"shipping": {"line1": "1 Main St", "country": "XX"}},
        "userInfo/shippingAddress/country: country must be an ISO 3166-1 alpha-2 code",
        id="country-unknown",
    ),
    pytest.param(
        {"shipping": {"line1": "1 Main St", "country": "us"}},
        "userInfo/shippingAddress/country: country must be an ISO 3166-1 alpha-2 code",
        id="country-lower-case",
    ),
    pytest.param(
        {"shipping": {"line1": "1 Main St", "country": "USA"}},
        "userInfo/shippingAddress/country: country must be an ISO 3166-1 alpha-2 code",
        id="country-alpha-3",
    ),
    pytest.param(
        {"billing": {"line1": "1 Main St", "country": "ZZ"}},
        "userInfo/billingAddress/country: country must be an ISO 3166-1 alpha-2 code",
        id="billing-country",
    ),
    pytest.param(
        {"shipping": {"line1": "1 Main St", "postalCode": "9" * 33}},
        "userInfo/shippingAddress/postalCode: String should have at most 32 characters",
        id="postal-code-length",
    ),
    pytest.param(
        {"shipping": {"line1": "1 Main St", "email": "ship@"}},
        "userInfo/shippingAddress/email: invalid email address",
        id="address-email",
    ),
    pytest.param(
        {"shipping": {"companyName": "C" * 201}},
        "userInfo/shippingAddress/companyName: String should have at most 200 characters",
        id="company-name-length",
    ),
    pytest.param(
        {"user_info": {"firstName": "F" * 201}},
        "userInfo/firstName: String should have at most 200 characters",
        id="first-name-length",
    ),
    pytest.param(
        {"user_info": {"lastName": "L" * 201}},
        "userInfo/lastName: String should have at most 200 characters",
        id="last-name-length",
    ),
    pytest.param(
        {"user_info": {"homePhone": "5" * 65}},
        "userInfo/homePhone: String should have at most 64 characters",
        id="home-phone-length",
    ),
    pytest.param(
        {"password": "short"},
        "password: password must be at least 8 characters long",
        id="password-short",
    ),
    pytest.param(
        {"password": "p" * 257},
        "password: password must be at most 256 characters long",
        id="password-long",
    ),
    pytest.param(
        {"login": " padded@example.com"},
        "userInfo/userKey/loginID: login must not start or end with white space",
        id="login-whitespace",
    ),
    pytest.param(
        {"login": "a" * 250 + "@x.com" + "b"},
        "userInfo/userKey/loginID: login is longer than 256 characters",
        id="login-length",
    ),
    pytest.param(
        {"login": "   "},
        "userInfo/userKey/loginID: login must not be empty",
        id="login-blank",
    ),
    pytest.param(
        {"attributes": [("hasAcceptedTermsNConditions", "y" * 4097)]},
        "extendedAttributes: attribute 'hasAcceptedTermsNConditions' is longer than 4096",
        id="attribute-length",
    ),
]


class TestFieldValidation:
    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(rum_stored_attributes="hasAcceptedTermsNConditions")

    @pytest.mark.parametrize(("overrides", "expected"), INVALID_FIELDS)
    async def test_field_named_in_message(
        self,
        client: httpx.AsyncClient,
        session: AsyncSession,
        overrides: dict[str, object],
        expected: str,
    ) -> None:
        login = str(overrides.pop("login", f"field-{uuid.uuid4().hex[:8]}@example.com"))
        password = str(overrides.pop("password", PASSWORD))

        result = await register(client, create_request(login, password, **overrides))  # type: ignore[arg-type]

        assert result["successful"] == "false"
        assert result["code"] == "30"
        assert result["message"] is not None
        assert expected in result["message"]
        assert password not in result["message"]
        total = await session.scalar(
            select(func.count()).select_from(User).where(User.created_via == "rum")
        )
        assert total == 0

    async def test_every_invalid_field_listed(self, client: httpx.AsyncClient) -> None:
        body = create_request(
            "many@example.com",
            "short",
            user_info={"email": "nope", "locale": "english"},
            shipping={"country": "xx"},
        )

        result = await register(client, body)

        message = result["message"] or ""
        assert result["code"] == "30"
        for path in (
            "password",
            "userInfo/email",
            "userInfo/locale",
            "userInfo/shippingAddress/country",
        ):
            assert f"{path}: " in message, path
        assert message.count("; ") == 3

    async def test_missing_login_is_bad_request(self, client: httpx.AsyncClient) -> None:
        body = create_request("placeholder@example.com", PASSWORD).replace(
            b'<loginID xsi:type="xsd:string"', b'<loginID xsi:nil="true"'
        )

        response = await client.post("/rum/create-user", content=body, headers=basic_auth())

        assert response.status_code == 400
        assert child_text(parse(response.content), "code") == "missing_field"

    async def test_invalid_event_reason(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        await register(
            client, create_request("bad-locale@example.com", PASSWORD, user_info={"locale": "x"})
        )

        event = await session.scalar(select(LoginEvent).order_by(LoginEvent.id.desc()).limit(1))

        assert event is not None
        assert (event.kind, event.outcome, event.reason) == (
            "registration",
            "failure",
            "invalid_value",
        )


class TestStoredAttributes:
    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(
            rum_stored_attributes="hasAcceptedTermsNConditions,loyaltyTier",
            rum_returned_attributes="loyaltyTier",
        )

    async def test_only_allowlisted_stored(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        body = create_request(
            "attrs@example.com",
            PASSWORD,
            attributes=[
                ("hasAcceptedTermsNConditions", "true"),
                ("loyaltyTier", "gold"),
                ("crmSession", "F3CB68D6/8443"),
                ("loyaltyTier", "ignored repeat"),
                ("bad name with spaces", "ignored"),
            ],
        )

        result = await register(client, body)
        stored = await session.execute(
            select(UserAttribute.name, UserAttribute.value)
            .join(User, User.id == UserAttribute.user_id)
            .where(User.login == "attrs@example.com")
            .order_by(UserAttribute.name)
        )

        assert result["successful"] == "true"
        assert stored.all() == [("hasAcceptedTermsNConditions", "true"), ("loyaltyTier", "gold")]

    async def test_response_returns_allowlisted(self, client: httpx.AsyncClient) -> None:
        body = create_request(
            "returned@example.com",
            PASSWORD,
            attributes=[("hasAcceptedTermsNConditions", "true"), ("loyaltyTier", "gold")],
        )

        response = await client.post("/rum/create-user", content=body, headers=basic_auth())

        root = parse(response.content)
        items = root.findall(".//{http://integration.digitalriver.com/Common/1.0}item")
        assert len(items) == 1
        assert child_text(items[0], "name") == "loyaltyTier"
        assert child_text(items[0], "value") == "gold"


class TestLoginAfterRegistration:
    async def test_new_user_signs_in(self, client: httpx.AsyncClient) -> None:
        created = await register(client, create_request("signin@example.com", DEFAULT_PASSWORD))

        response = await client.post(
            "/rum/login",
            content=login_request("signin@example.com", DEFAULT_PASSWORD),
            headers=basic_auth(),
        )

        root = parse(response.content)
        assert child_text(root, "successful") == "true"
        assert child_text(root, "userKey", "externalReferenceID") == created["erid"]


async def count_committed_users(app: FastAPI, login: str) -> int:
    async with app.state.database.sessionmaker() as session:
        return await users_with_login(session, login)


class TestConcurrentRegistration:
    async def test_fifty_identical_make_one_user(
        self, committed_client: httpx.AsyncClient, committed_app: FastAPI
    ) -> None:
        body = create_request("rush@example.com", PASSWORD)

        results = await asyncio.gather(*(register(committed_client, body) for _ in range(50)))

        assert [result["successful"] for result in results] == ["true"] * 50
        assert len({result["erid"] for result in results}) == 1
        assert await count_committed_users(committed_app, "rush@example.com") == 1
        async with committed_app.state.database.sessionmaker() as session:
            reasons = (
                await session.scalars(
                    select(LoginEvent.reason).where(LoginEvent.kind == "registration")
                )
            ).all()
        assert sorted(reasons, key=str) == sorted([None] + ["repeated"] * 49, key=str)

    async def test_conflicting_passwords_one_winner(
        self, committed_client: httpx.AsyncClient, committed_app: FastAPI
    ) -> None:
        bodies = [create_request("contest@example.com", f"password number {n}") for n in range(10)]

        results = await asyncio.gather(*(register(committed_client, body) for body in bodies))

        winners = [result for result in results if result["successful"] == "true"]
        losers = [result for result in results if result["successful"] == "false"]
        assert len(winners) == 1
        assert {(result["code"], result["message"]) for result in losers} == {
            ("5", "Email already used")
        }
        assert await count_committed_users(committed_app, "contest@example.com") == 1


@asynccontextmanager
async def replica_client(url: URL, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A second instance of the service on the same database, as another replica would be."""
    engine = create_engine(url, settings)
    database = Database(url=url, engine=engine, sessionmaker=create_sessionmaker(engine))
    application = create_app(settings, database=database)
    try:
        async with application.router.lifespan_context(application):
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://replica") as http:
                yield http
    finally:
        await engine.dispose()


async def wait_for_lock_wait(app: FastAPI) -> None:
    """Return once some backend waits on a lock in an INSERT into users; fail after 10 s."""
    async with app.state.database.sessionmaker() as observer:
        for _ in range(200):
            waiting = await observer.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE 'INSERT INTO users %'"
                )
            )
            await observer.rollback()
            if waiting:
                return
            await asyncio.sleep(0.05)
    raise AssertionError("no INSERT INTO users waited on a lock within 10 s")


class TestRaceAcrossReplicas:
    @pytest.fixture
    def settings(self) -> Settings:
        # The loser's INSERT waits on the winner's lock until the test commits the winner.
        # A long lock timeout keeps a slow machine from turning that wait into a 503.
        return make_settings(db_lock_timeout_ms=30_000)

    async def test_loser_rereads_after_winner_commits(
        self, committed_client: httpx.AsyncClient, committed_app: FastAPI, hasher: PasswordHasher
    ) -> None:
        async with committed_app.state.database.sessionmaker() as winner_session:
            winner = await create_user(
                winner_session,
                hasher,
                UserCreate(login="race@example.com", password=PASSWORD),
                created_via="rum",
            )
            # The winner's row is flushed, not committed: the request cannot see it yet, so it
            # hashes and inserts, and its INSERT waits on the unique index.
            loser = asyncio.create_task(
                register(committed_client, create_request("race@example.com", PASSWORD))
            )
            await wait_for_lock_wait(committed_app)
            await winner_session.commit()

        result = await loser

        assert result["successful"] == "true"
        assert result["erid"] == winner.external_reference_id
        assert await count_committed_users(committed_app, "race@example.com") == 1

    async def test_loser_with_other_password_conflicts(
        self, committed_client: httpx.AsyncClient, committed_app: FastAPI, hasher: PasswordHasher
    ) -> None:
        async with committed_app.state.database.sessionmaker() as winner_session:
            await create_user(
                winner_session,
                hasher,
                UserCreate(login="race2@example.com", password=PASSWORD),
                created_via="rum",
            )
            loser = asyncio.create_task(
                register(committed_client, create_request("race2@example.com", "other password"))
            )
            await wait_for_lock_wait(committed_app)
            await winner_session.commit()

        result = await loser

        assert result == {"successful": "false", "code": "5", "message": "Email already used"}

    async def test_two_replicas_one_user(
        self,
        committed_client: httpx.AsyncClient,
        committed_app: FastAPI,
        fresh_database_url: URL,
        settings: Settings,
    ) -> None:
        body = create_request("replicas@example.com", PASSWORD)

        async with replica_client(fresh_database_url, settings) as other:
            results = await asyncio.gather(
                *(register(client, body) for client in [committed_client, other] * 10)
            )

        assert [result["successful"] for result in results] == ["true"] * 20
        assert len({result["erid"] for result in results}) == 1
        assert await count_committed_users(committed_app, "replicas@example.com") == 1
