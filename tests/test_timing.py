"""No user enumeration by timing: four kinds of failed login take the same time.

Unknown login, wrong password, disabled user (with the correct password) and locked account
each run at least 200 times, interleaved in a shuffled order so that drift in machine load
hits all kinds alike. argon2id keeps its production parameters, so the hash dominates every
request as it does in service. The medians must differ by less than 10%.
"""

from __future__ import annotations

import random
import statistics
import time
import uuid

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.identity.passwords import PasswordHasher
from app.security.throttle import account_subject
from app.settings import Settings
from tests.conftest import make_settings
from tests.factories import DEFAULT_PASSWORD, make_user
from tests.rum_messages import basic_auth, child_text, login_request, parse

pytestmark = pytest.mark.slow

ATTEMPTS_PER_KIND = 200
WARM_UP_ROUNDS = 5
MAX_RELATIVE_SPREAD = 0.10


@pytest.fixture
def settings() -> Settings:
    # Counting stays on, but no limit is reached during the run, except for the account that
    # is locked on purpose.
    return make_settings(throttle_account_max_failures=1000, throttle_address_max_failures=0)


async def test_failure_kinds_take_same_time(
    client: httpx.AsyncClient, session: AsyncSession, hasher: PasswordHasher, settings: Settings
) -> None:
    defaults = Settings.model_fields
    assert settings.argon2_memory_cost_kib == defaults["argon2_memory_cost_kib"].default
    assert settings.argon2_time_cost == defaults["argon2_time_cost"].default
    suffix = uuid.uuid4().hex[:8]
    await make_user(session, hasher, login=f"wrong-{suffix}@example.com")
    await make_user(session, hasher, login=f"disabled-{suffix}@example.com", status="disabled")
    locked = await make_user(session, hasher, login=f"locked-{suffix}@example.com")
    await session.execute(
        text(
            "INSERT INTO throttle_counters (scope, subject, lockouts, locked_until) "
            "VALUES ('account', :subject, 1, now() + interval '1 hour')"
        ),
        {"subject": account_subject(locked.login)},
    )
    await session.commit()

    kinds = {
        "unknown_login": (f"unknown-{suffix}@example.com", DEFAULT_PASSWORD, "5"),
        "wrong_password": (f"wrong-{suffix}@example.com", "not the password", "5"),
        "disabled": (f"disabled-{suffix}@example.com", DEFAULT_PASSWORD, "6"),
        "locked": (f"locked-{suffix}@example.com", DEFAULT_PASSWORD, "5"),
    }
    bodies = {kind: login_request(login, password) for kind, (login, password, _) in kinds.items()}
    headers = basic_auth()
    durations: dict[str, list[float]] = {kind: [] for kind in kinds}
    order = list(kinds)
    shuffler = random.Random(6)  # noqa: S311 - test ordering, not a secret

    for round_number in range(WARM_UP_ROUNDS + ATTEMPTS_PER_KIND):
        shuffler.shuffle(order)
        for kind in order:
            started = time.perf_counter()
            response = await client.post("/rum/login", content=bodies[kind], headers=headers)
            elapsed = time.perf_counter() - started
            assert response.status_code == 200
            assert child_text(parse(response.content), "errorCode") == kinds[kind][2], kind
            if round_number >= WARM_UP_ROUNDS:
                durations[kind].append(elapsed)

    medians = {kind: statistics.median(values) for kind, values in durations.items()}
    spread = max(medians.values()) / min(medians.values()) - 1
    report = ", ".join(f"{kind} {value * 1000:.1f} ms" for kind, value in medians.items())
    assert all(len(values) == ATTEMPTS_PER_KIND for values in durations.values())
    assert spread < MAX_RELATIVE_SPREAD, f"medians differ by {spread:.1%}: {report}"
