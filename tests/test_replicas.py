"""Three service processes on one database behave as one service.

Each replica is a real `uvicorn app.main:create_app --factory` process on its own loopback
port. Lockout, source-address throttling, session tokens and the audit trail live in
PostgreSQL, so a guess on one replica counts on the others, a token issued by one validates on
another, and every replica lists the same audit and login events.

The replicas trust 127.0.0.1 as a proxy, so each part of the test sends its own
X-Forwarded-For address and the address counters of one part do not affect the next.
"""

from __future__ import annotations

import asyncio
import itertools
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.engine import URL

from app.admin.keys import create_api_key
from app.db.engine import create_engine, create_sessionmaker
from app.identity.passwords import PasswordHasher
from app.models import AuditEvent, LoginEvent
from tests.conftest import make_settings
from tests.factories import DEFAULT_PASSWORD, make_user
from tests.rum_messages import basic_auth, child_text, login_request, parse, session_request
from tests.service_process import ServiceProcess

pytestmark = pytest.mark.slow

REPLICAS = 3
ADDRESS_LIMIT = 6

# Each part of the test sends its own X-Forwarded-For address, trusted from 127.0.0.1.
REPLICA_ENVIRONMENT = {
    "SSO_TRUSTED_PROXIES": "127.0.0.1/32",
    "SSO_THROTTLE_ADDRESS_MAX_FAILURES": str(ADDRESS_LIMIT),
}

_addresses = (f"198.51.100.{number}" for number in itertools.count(10))


@pytest.fixture
def replicas(fresh_database_url: URL) -> Iterator[list[ServiceProcess]]:
    logs = Path(tempfile.mkdtemp(prefix="sso-replicas-"))
    started = [
        ServiceProcess(fresh_database_url, logs / f"replica{n}.log", **REPLICA_ENVIRONMENT)
        for n in range(REPLICAS)
    ]
    try:
        for replica in started:
            replica.wait_until_ready()
        yield started
    finally:
        for replica in started:
            replica.stop()


@pytest.fixture
async def clients(replicas: list[ServiceProcess]) -> AsyncIterator[list[httpx.AsyncClient]]:
    opened = [httpx.AsyncClient(base_url=replica.base_url, timeout=30) for replica in replicas]
    try:
        yield opened
    finally:
        for client in opened:
            await client.aclose()


@pytest.fixture
async def setup(fresh_database_url: URL) -> AsyncIterator[dict[str, Any]]:
    """Users and API keys written straight to the shared database."""
    settings = make_settings(argon2_memory_cost_kib=1024, argon2_time_cost=1)
    engine = create_engine(fresh_database_url, settings)
    sessionmaker = create_sessionmaker(engine)
    hasher = PasswordHasher(settings)
    try:
        async with sessionmaker() as session:
            _, admin_key = await create_api_key(
                session, name="replica admin", scopes=["admin:write"]
            )
            _, sessions_key = await create_api_key(
                session, name="replica site", scopes=["sessions"]
            )
            await session.commit()
        yield {
            "sessionmaker": sessionmaker,
            "hasher": hasher,
            "admin": {"Authorization": f"Bearer {admin_key}"},
            "sessions": {"Authorization": f"Bearer {sessions_key}"},
        }
    finally:
        hasher.close()
        await engine.dispose()


async def guess(
    client: httpx.AsyncClient, login: str, password: str, address: str
) -> httpx.Response:
    headers = {**basic_auth(), "X-Forwarded-For": address}
    return await client.post("/rum/login", content=login_request(login, password), headers=headers)


def successful(response: httpx.Response) -> bool:
    return child_text(parse(response.content), "successful") == "true"


async def test_replicas_share_state(
    clients: list[httpx.AsyncClient], setup: dict[str, Any]
) -> None:
    sessionmaker = setup["sessionmaker"]
    async with sessionmaker() as session:
        shopper = await make_user(session, setup["hasher"], login="shared@example.com")
        racer = await make_user(session, setup["hasher"], login="racer@example.com")

    # Lockout: five wrong guesses spread over the replicas lock the account on all of them.
    address = next(_addresses)
    for number in range(5):
        response = await guess(clients[number % REPLICAS], shopper.login, "wrong pw 1", address)
        assert response.status_code == 200
    refused = [await guess(client, shopper.login, DEFAULT_PASSWORD, next(_addresses))
               for client in clients]
    assert [successful(response) for response in refused] == [False] * REPLICAS
    lockout = await clients[2].get(
        f"/admin/v1/users/{shopper.user_key}/lockout", headers=setup["admin"]
    )
    assert lockout.json()["locked"] is True
    unlocked = await clients[1].post(
        f"/admin/v1/users/{shopper.user_key}/unlock", headers=setup["admin"]
    )
    assert unlocked.json()["locked"] is False
    assert successful(await guess(clients[0], shopper.login, DEFAULT_PASSWORD, next(_addresses)))

    # Thirty parallel guesses on all replicas at once, each from its own address: exactly
    # the account's limit of five gets through.
    racing = await asyncio.gather(
        *(guess(clients[n % REPLICAS], racer.login, f"race {n}", next(_addresses))
          for n in range(30))
    )
    assert all(response.status_code == 200 for response in racing)
    async with sessionmaker() as session:
        reasons = (
            await session.scalars(
                select(LoginEvent.reason).where(LoginEvent.user_key == racer.user_key)
            )
        ).all()
    assert reasons.count("wrong_password") == 5
    assert reasons.count("locked") == 25

    # Throttling: failures from one address on every replica add up to one block.
    address = next(_addresses)
    for number in range(ADDRESS_LIMIT):
        response = await guess(clients[number % REPLICAS], f"spray{number}@example.com",
                               "wrong pw", address)
        assert response.status_code == 200
    blocked = [await guess(client, shopper.login, DEFAULT_PASSWORD, address) for client in clients]
    assert [response.status_code for response in blocked] == [429] * REPLICAS
    listed = await clients[0].get("/admin/v1/blocked-addresses", headers=setup["admin"])
    assert address in [item["source_address"] for item in listed.json()["items"]]

    # Session tokens: issued on one replica, valid on another, revoked on a third.
    created = await clients[0].post(
        "/api/v1/sessions", json={"user_key": str(shopper.user_key)}, headers=setup["sessions"]
    )
    assert created.status_code == 201, created.text
    token, session_id = created.json()["token"], created.json()["id"]
    validation = await clients[1].post(
        "/rum/session", content=session_request(token), headers=basic_auth()
    )
    assert successful(validation)
    assert child_text(parse(validation.content), "userKey", "externalReferenceID") == (
        shopper.external_reference_id
    )
    revoked = await clients[2].delete(f"/api/v1/sessions/{session_id}", headers=setup["sessions"])
    assert revoked.status_code == 204
    after_revoke = await clients[0].post(
        "/rum/session", content=session_request(token), headers=basic_auth()
    )
    assert not successful(after_revoke)

    # Audit: every replica lists the same trail, whichever replica wrote each event.
    pages = [
        await client.get(
            "/admin/v1/audit-events",
            params={"target_user_key": str(shopper.user_key)},
            headers=setup["admin"],
        )
        for client in clients
    ]
    trails = [[item["id"] for item in page.json()["items"]] for page in pages]
    assert trails[0] == trails[1] == trails[2]
    actions = [item["action"] for item in pages[0].json()["items"]]
    assert actions.count("user.locked") == 1
    assert actions.count("user.unlock") == 1
    events = [
        await client.get(
            "/admin/v1/login-events",
            params={"user_key": str(shopper.user_key), "limit": 200},
            headers=setup["admin"],
        )
        for client in clients
    ]
    assert events[0].json() == events[1].json() == events[2].json()
    async with sessionmaker() as session:
        stored = (
            await session.scalars(
                select(AuditEvent.action).where(AuditEvent.target_user_key == shopper.user_key)
            )
        ).all()
    assert sorted(stored) == sorted(actions)
