"""Brute-force protection: account lockout, source-address blocks, admin unlock, audit."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.identity.passwords import PasswordHasher
from app.models import AuditEvent, LoginEvent, ThrottleCounter, User
from app.security.throttle import (
    ACCOUNT,
    ThrottlePolicy,
    account_policy,
    account_subject,
    address_subject,
    count_failure,
    lockout_status,
    worst_case_failures_per_hour,
)
from app.settings import Settings
from tests.admin_support import bearer, new_key
from tests.conftest import make_settings
from tests.factories import DEFAULT_PASSWORD, make_user
from tests.rum_messages import basic_auth, child_text, login_request, parse

LOGIN = "/rum/login"


async def attempt(client: httpx.AsyncClient, login: str, password: str) -> httpx.Response:
    return await client.post(LOGIN, content=login_request(login, password), headers=basic_auth())


def lockout_total() -> float:
    return REGISTRY.get_sample_value("sso_lockouts_total") or 0.0


async def reasons_for(session: AsyncSession, user_key: uuid.UUID) -> list[str | None]:
    rows = await session.scalars(
        select(LoginEvent.reason).where(LoginEvent.user_key == user_key).order_by(LoginEvent.id)
    )
    return list(rows.all())


@pytest.fixture
async def shopper(session: AsyncSession, hasher: PasswordHasher) -> User:
    return await make_user(session, hasher, login=f"guess-{uuid.uuid4().hex[:8]}@example.com")


class TestAccountLockout:
    async def test_correct_password_refused_when_locked(
        self, client: httpx.AsyncClient, session: AsyncSession, shopper: User
    ) -> None:
        before = lockout_total()
        for _ in range(5):
            response = await attempt(client, shopper.login, "wrong password 1")
            assert child_text(parse(response.content), "errorCode") == "5"

        response = await attempt(client, shopper.login, DEFAULT_PASSWORD)

        assert response.status_code == 200
        assert child_text(parse(response.content), "successful") == "false"
        assert child_text(parse(response.content), "errorCode") == "5"
        assert await reasons_for(session, shopper.user_key) == ["wrong_password"] * 5 + ["locked"]
        assert lockout_total() == before + 1

    async def test_locked_body_identical_to_unknown_login(
        self, client: httpx.AsyncClient, shopper: User
    ) -> None:
        unknown = await attempt(client, "nobody-here@example.com", "whatever 12")
        for _ in range(5):
            await attempt(client, shopper.login, "wrong password 1")

        locked = await attempt(client, shopper.login, DEFAULT_PASSWORD)

        assert locked.status_code == unknown.status_code
        assert locked.content == unknown.content
        assert locked.headers["content-type"] == unknown.headers["content-type"]

    async def test_lockout_written_to_audit_events(
        self, client: httpx.AsyncClient, session: AsyncSession, shopper: User
    ) -> None:
        for _ in range(5):
            await attempt(client, shopper.login, "wrong password 1")

        rows = (
            await session.scalars(
                select(AuditEvent).where(AuditEvent.target_user_key == shopper.user_key)
            )
        ).all()

        assert [row.action for row in rows] == ["user.locked"]
        assert rows[0].actor_key_id is None
        assert rows[0].details["lockouts"] == 1
        assert datetime.fromisoformat(rows[0].details["locked_until"]) > datetime.now(UTC)

    async def test_success_clears_failures(
        self, client: httpx.AsyncClient, session: AsyncSession, shopper: User
    ) -> None:
        for _ in range(4):
            await attempt(client, shopper.login, "wrong password 1")
        ok = await attempt(client, shopper.login, DEFAULT_PASSWORD)
        for _ in range(4):
            await attempt(client, shopper.login, "wrong password 2")

        again = await attempt(client, shopper.login, DEFAULT_PASSWORD)

        assert child_text(parse(ok.content), "successful") == "true"
        assert child_text(parse(again.content), "successful") == "true"

    async def test_unknown_login_counted_like_known(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        login = f"ghost-{uuid.uuid4().hex[:8]}@example.com"
        for _ in range(5):
            await attempt(client, login, "wrong password 1")

        status = await lockout_status(session, ACCOUNT, account_subject(login))

        assert status is not None
        assert status.locked
        stored = await session.scalar(
            select(func.count())
            .select_from(ThrottleCounter)
            .where(ThrottleCounter.subject.contains("ghost"))
        )
        assert stored == 0

    async def test_login_variants_share_one_counter(
        self, client: httpx.AsyncClient, shopper: User
    ) -> None:
        variants = [shopper.login.upper(), shopper.login, shopper.login.title()]
        for index in range(5):
            await attempt(client, variants[index % 3], "wrong password 1")

        response = await attempt(client, shopper.login, DEFAULT_PASSWORD)

        assert child_text(parse(response.content), "successful") == "false"

    async def test_disabled_user_locked_answer_invalid_login(
        self, client: httpx.AsyncClient, session: AsyncSession, hasher: PasswordHasher
    ) -> None:
        user = await make_user(session, hasher, status="disabled")
        for _ in range(5):
            await attempt(client, user.login, "wrong password 1")

        response = await attempt(client, user.login, DEFAULT_PASSWORD)

        assert child_text(parse(response.content), "errorCode") == "5"


class TestConcurrentAttempts:
    @pytest.fixture
    def settings(self) -> Settings:
        # 30 requests at once on two cores queue for connections and hashing threads, and a
        # slow machine could make some wait past the default 2 s pool timeout.
        return make_settings(db_pool_timeout_seconds=30)

    async def test_parallel_guesses_capped_at_limit(
        self, committed_client: httpx.AsyncClient, committed_app: object
    ) -> None:
        database = committed_app.state.database  # type: ignore[attr-defined]
        hasher = committed_app.state.hasher  # type: ignore[attr-defined]
        async with database.sessionmaker() as session:
            user = await make_user(session, hasher)

        responses = await asyncio.gather(
            *(attempt(committed_client, user.login, f"guess {n}") for n in range(30))
        )

        assert all(response.status_code == 200 for response in responses)
        async with database.sessionmaker() as session:
            reasons = await reasons_for(session, user.user_key)
        assert reasons.count("wrong_password") == 5
        assert reasons.count("locked") == 25


class TestLockoutGrowth:
    """The counter functions with a simulated clock, against the real table."""

    POLICY = ThrottlePolicy(
        max_failures=5, window_seconds=900, base_seconds=60, max_seconds=900, reset_seconds=86_400
    )

    async def allowed_guesses(
        self, session: AsyncSession, subject: str, start: datetime, end: datetime
    ) -> int:
        """Return how many guesses get through between `start` and `end` for an attacker who
        guesses once a second and, when refused, waits exactly until the lockout ends."""
        allowed = 0
        now = start
        while now < end:
            counted = await count_failure(session, ACCOUNT, subject, self.POLICY, now=now)
            if counted is None:
                status = await lockout_status(session, ACCOUNT, subject, now=now)
                assert status is not None and status.locked_until is not None
                now = status.locked_until
                continue
            allowed += 1
            now += timedelta(seconds=1)
        return allowed

    async def test_default_policy_under_100_per_hour(self) -> None:
        policy = account_policy(make_settings())

        assert policy == self.POLICY
        assert worst_case_failures_per_hour(policy, hour=1) == 35
        assert worst_case_failures_per_hour(policy, hour=2) == 20

    async def test_steady_guessing_matches_worst_case(self, session: AsyncSession) -> None:
        subject = f"simulated-{uuid.uuid4().hex}"
        start = datetime(2026, 1, 1, tzinfo=UTC)

        hour = timedelta(hours=1)
        first_hour = await self.allowed_guesses(session, subject, start, start + hour)
        second_hour = await self.allowed_guesses(
            session, subject, start + hour, start + 2 * hour
        )

        assert first_hour == worst_case_failures_per_hour(self.POLICY, hour=1)
        assert second_hour == worst_case_failures_per_hour(self.POLICY, hour=2)
        assert first_hour + second_hour < 100

    async def test_lockout_doubles_then_caps(self, session: AsyncSession) -> None:
        subject = f"simulated-{uuid.uuid4().hex}"
        now = datetime(2026, 1, 1, tzinfo=UTC)
        lengths = []
        for _ in range(7):
            for _ in range(5):
                counted = await count_failure(session, ACCOUNT, subject, self.POLICY, now=now)
                assert counted is not None
            assert counted.locked_until is not None
            lengths.append((counted.locked_until - now).total_seconds())
            now = counted.locked_until

        assert lengths == [60, 120, 240, 480, 900, 900, 900]

    async def test_lockout_count_resets_after_quiet_day(self, session: AsyncSession) -> None:
        subject = f"simulated-{uuid.uuid4().hex}"
        now = datetime(2026, 1, 1, tzinfo=UTC)
        for _ in range(3):
            for _ in range(5):
                counted = await count_failure(session, ACCOUNT, subject, self.POLICY, now=now)
            assert counted is not None and counted.locked_until is not None
            now = counted.locked_until
        later = now + timedelta(days=1, seconds=1)

        for _ in range(5):
            counted = await count_failure(session, ACCOUNT, subject, self.POLICY, now=later)

        assert counted is not None and counted.locked_until is not None
        assert (counted.locked_until - later).total_seconds() == 60
        assert counted.lockouts == 1

    async def test_failures_expire_with_window(self, session: AsyncSession) -> None:
        subject = f"simulated-{uuid.uuid4().hex}"
        now = datetime(2026, 1, 1, tzinfo=UTC)
        for _ in range(4):
            await count_failure(session, ACCOUNT, subject, self.POLICY, now=now)

        counted = await count_failure(
            session, ACCOUNT, subject, self.POLICY, now=now + timedelta(seconds=900)
        )

        assert counted is not None
        assert counted.failures == 1
        assert counted.locked_until is None

    async def test_locked_attempts_leave_row_unchanged(self, session: AsyncSession) -> None:
        subject = f"simulated-{uuid.uuid4().hex}"
        now = datetime(2026, 1, 1, tzinfo=UTC)
        for _ in range(5):
            await count_failure(session, ACCOUNT, subject, self.POLICY, now=now)
        before = await lockout_status(session, ACCOUNT, subject, now=now)

        refused = await count_failure(
            session, ACCOUNT, subject, self.POLICY, now=now + timedelta(seconds=30)
        )
        after = await lockout_status(session, ACCOUNT, subject, now=now)

        assert refused is None
        assert before == after

    async def test_limit_of_one_locks_at_once(self, session: AsyncSession) -> None:
        policy = ThrottlePolicy(1, 60, 30, 60, 3600)
        subject = f"simulated-{uuid.uuid4().hex}"

        counted = await count_failure(session, ACCOUNT, subject, policy)

        assert counted is not None
        assert counted.locked_until is not None
        assert await count_failure(session, ACCOUNT, subject, policy) is None


class TestAdminUnlock:
    async def test_lockout_visible_then_lifted(
        self, client: httpx.AsyncClient, session: AsyncSession, shopper: User
    ) -> None:
        key = await new_key(session, "admin:write", name="support")
        for _ in range(5):
            await attempt(client, shopper.login, "wrong password 1")
        path = f"/admin/v1/users/{shopper.user_key}"

        shown = await client.get(f"{path}/lockout", headers=bearer(key))
        lifted = await client.post(f"{path}/unlock", headers=bearer(key))
        login = await attempt(client, shopper.login, DEFAULT_PASSWORD)

        assert shown.status_code == 200, shown.text
        assert shown.json()["locked"] is True
        assert shown.json()["lockouts"] == 1
        assert lifted.status_code == 200, lifted.text
        assert lifted.json()["locked"] is False
        assert lifted.json()["lockouts"] == 0
        assert child_text(parse(login.content), "successful") == "true"
        actions = (
            await session.scalars(
                select(AuditEvent.action)
                .where(AuditEvent.target_user_key == shopper.user_key)
                .order_by(AuditEvent.id)
            )
        ).all()
        assert list(actions) == ["user.locked", "user.unlock"]

    async def test_unlock_needs_write_scope(
        self, client: httpx.AsyncClient, session: AsyncSession, shopper: User
    ) -> None:
        key = await new_key(session, "admin:read", name="reader")

        response = await client.post(
            f"/admin/v1/users/{shopper.user_key}/unlock", headers=bearer(key)
        )

        assert response.status_code == 403
        assert response.json()["code"] == "insufficient_scope"

    async def test_unknown_user_404(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        key = await new_key(session, "admin:read", name="reader")

        response = await client.get(f"/admin/v1/users/{uuid.uuid4()}/lockout", headers=bearer(key))

        assert response.status_code == 404
        assert response.json()["field"] == "user_key"

    async def test_unlocked_user_shows_zero(
        self, client: httpx.AsyncClient, session: AsyncSession, shopper: User
    ) -> None:
        key = await new_key(session, "admin:read", name="reader")

        response = await client.get(
            f"/admin/v1/users/{shopper.user_key}/lockout", headers=bearer(key)
        )

        assert response.status_code == 200
        assert response.json()["locked"] is False
        assert response.json()["failures"] == 0


class TestLoginEventsApi:
    async def test_filters_by_user_and_reason(
        self, client: httpx.AsyncClient, session: AsyncSession, shopper: User
    ) -> None:
        key = await new_key(session, "admin:read", name="reader")
        await attempt(client, shopper.login, "wrong password 1")
        await attempt(client, shopper.login, DEFAULT_PASSWORD)

        response = await client.get(
            "/admin/v1/login-events",
            params={"user_key": str(shopper.user_key), "outcome": "failure"},
            headers=bearer(key),
        )

        assert response.status_code == 200, response.text
        items = response.json()["items"]
        assert [item["reason"] for item in items] == ["wrong_password"]
        assert items[0]["source_address"] == "127.0.0.1"
        assert items[0]["kind"] == "login"
        assert "password" not in response.text.replace("wrong_password", "")

    async def test_pages_with_cursor(
        self, client: httpx.AsyncClient, session: AsyncSession, shopper: User
    ) -> None:
        key = await new_key(session, "admin:read", name="reader")
        for _ in range(3):
            await attempt(client, shopper.login, "wrong password 1")
        params = {"user_key": str(shopper.user_key), "limit": "2"}

        first = await client.get("/admin/v1/login-events", params=params, headers=bearer(key))
        cursor = first.json()["next_cursor"]
        second = await client.get(
            "/admin/v1/login-events", params={**params, "cursor": cursor}, headers=bearer(key)
        )

        assert len(first.json()["items"]) == 2
        assert cursor is not None
        assert len(second.json()["items"]) == 1
        assert second.json()["next_cursor"] is None

    async def test_bad_address_filter_422(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        key = await new_key(session, "admin:read", name="reader")

        response = await client.get(
            "/admin/v1/login-events", params={"source_address": "not-an-ip"}, headers=bearer(key)
        )

        assert response.status_code == 422
        assert response.json()["field"] == "source_address"


class TestAddressThrottle:
    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(throttle_address_max_failures=3)

    async def test_blocked_address_gets_429(
        self, client: httpx.AsyncClient, session: AsyncSession, shopper: User
    ) -> None:
        for number in range(3):
            await attempt(client, f"spray-{number}@example.com", "wrong password 1")

        response = await attempt(client, shopper.login, DEFAULT_PASSWORD)

        assert response.status_code == 429
        assert 1 <= int(response.headers["Retry-After"]) <= 60
        assert child_text(parse(response.content), "code") == "too_many_requests"
        reasons = (
            await session.scalars(
                select(LoginEvent.reason).where(LoginEvent.reason == "throttled")
            )
        ).all()
        assert reasons == ["throttled"]

    async def test_blocked_attempts_do_not_count_for_account(
        self, client: httpx.AsyncClient, session: AsyncSession, shopper: User
    ) -> None:
        for _ in range(3):
            await attempt(client, shopper.login, "wrong password 1")
        for _ in range(5):
            await attempt(client, shopper.login, "wrong password 2")

        status = await lockout_status(session, ACCOUNT, account_subject(shopper.login))

        assert status is not None
        assert status.failures == 3
        assert not status.locked

    async def test_block_audited_listed_and_lifted(
        self, client: httpx.AsyncClient, session: AsyncSession, shopper: User
    ) -> None:
        key = await new_key(session, "admin:write", name="support")
        for number in range(3):
            await attempt(client, f"spray-{number}@example.com", "wrong password 1")

        listed = await client.get("/admin/v1/blocked-addresses", headers=bearer(key))
        lifted = await client.post(
            "/admin/v1/blocked-addresses/unblock",
            json={"source_address": "127.0.0.1"},
            headers=bearer(key),
        )
        login = await attempt(client, shopper.login, DEFAULT_PASSWORD)

        assert [item["source_address"] for item in listed.json()["items"]] == ["127.0.0.1"]
        assert lifted.status_code == 200, lifted.text
        assert lifted.json()["locked"] is False
        assert child_text(parse(login.content), "successful") == "true"
        actions = (
            await session.scalars(
                select(AuditEvent.action)
                .where(AuditEvent.action.in_(["address.blocked", "address.unblock"]))
                .order_by(AuditEvent.id)
            )
        ).all()
        assert list(actions) == ["address.blocked", "address.unblock"]

    async def test_unblock_rejects_non_address(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        key = await new_key(session, "admin:write", name="support")

        response = await client.post(
            "/admin/v1/blocked-addresses/unblock",
            json={"source_address": "localhost"},
            headers=bearer(key),
        )

        assert response.status_code == 422
        assert response.json()["field"] == "source_address"


class TestAddressThrottleOff:
    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(throttle_address_max_failures=0)

    async def test_zero_limit_never_blocks(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        for number in range(8):
            response = await attempt(client, f"spray-{number}@example.com", "wrong password 1")
            assert response.status_code == 200

        rows = await session.scalar(
            select(func.count())
            .select_from(ThrottleCounter)
            .where(ThrottleCounter.scope == "address")
        )
        assert rows == 0


class TestSubjects:
    @pytest.mark.parametrize(
        ("address", "subject"),
        [
            ("203.0.113.7", "203.0.113.7"),
            ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
            ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
            ("::ffff:198.51.100.1", "198.51.100.1"),
            (None, "unknown"),
            ("testclient", "unknown"),
        ],
    )
    def test_address_subject(self, address: str | None, subject: str) -> None:
        assert address_subject(address) == subject

    def test_account_subject_normalises_and_hides_login(self) -> None:
        subject = account_subject("Shopper@Example.com")

        assert subject == account_subject("shopper@example.com")
        assert "shopper" not in subject
        assert len(subject) == 64

    def test_invalid_login_still_keyed(self) -> None:
        assert account_subject(" padded ") != account_subject("padded")
