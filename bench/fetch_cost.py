"""CPU time per RemoteUserFetch, split into its parts, and per RemoteLogin, in one process.

    .venv/bin/python bench/fetch_cost.py [--database-url postgresql://postgres@127.0.0.1:5432/postgres]

Each line is CPU milliseconds per call (time.process_time, so other processes on the machine
affect it less than wall time) for: the whole request through the app's ASGI stack without a
server, the floor app's request, and the database steps the service's request makes. Calls run
one at a time against a fresh database seeded as bench/run.py seeds it. The login lines give the
CPU time of the event-loop thread per RemoteLogin (`time.thread_time`), which leaves out the
argon2id verification that runs in a hashing thread.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

from run import (  # noqa: E402
    RUM_USERNAME,
    USER_PASSWORD,
    basic_authorization,
    create_database,
    drop_database,
    migrate,
    seed_users,
)

USERS = 50
PROFILE_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    "<ns1:GetUserProfileRequest "
    'xmlns:ns1="http://integration.digitalriver.com/RemoteUserManagement/1.0" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">'
    '<userKey xsi:type="ns2:UserKey" xmlns:ns2="http://integration.digitalriver.com/Common/1.0">'
    '<userID xsi:nil="true"/><externalReferenceID xsi:type="xsd:string">BENCH-{number:06d}'
    '</externalReferenceID><companyID xsi:type="xsd:string">headwtr</companyID>'
    '<loginID xsi:nil="true"/><siteID xsi:type="xsd:string">headwtr</siteID></userKey>'
    '<sessionToken xsi:nil="true"/><extendedAttributes xsi:nil="true"/></ns1:GetUserProfileRequest>'
)


LOGIN_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    "<ns1:LoginRequest "
    'xmlns:ns1="http://integration.digitalriver.com/RemoteUserManagement/1.0">'
    "<userKey><loginID>bench-user-{number:06d}@example.com</loginID><siteID>headwtr</siteID>"
    "</userKey><password>{password}</password></ns1:LoginRequest>"
)


async def post_profile(app: Any, authorization: str, number: int) -> int:
    """Send one RemoteUserFetch straight to an ASGI app and return the response status."""
    body = PROFILE_BODY.format(number=number % USERS).encode()
    return await post_callback(app, authorization, "/rum/user-profile", body)


async def post_login(app: Any, authorization: str, number: int) -> int:
    """Send one RemoteLogin with the seeded password and return the response status."""
    body = LOGIN_BODY.format(number=number % USERS, password=USER_PASSWORD).encode()
    return await post_callback(app, authorization, "/rum/login", body)


async def post_callback(app: Any, authorization: str, path: str, body: bytes) -> int:
    """Send one callback body straight to an ASGI app and return the response status."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"bench"),
            (b"content-type", b"text/xml; charset=UTF-8"),
            (b"content-length", str(len(body)).encode()),
            (b"authorization", authorization.encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    delivered = False
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await app(scope, receive, send)
    return int(messages[0]["status"])


async def cpu_ms_per_call(
    label: str, call: Callable[[int], Awaitable[object]], count: int
) -> None:
    for number in range(20):
        await call(number)
    started = time.process_time()
    for number in range(count):
        await call(number)
    print(f"{label:58s} {(time.process_time() - started) / count * 1000:7.2f} ms CPU")


async def measure(database_url: str, count: int) -> None:
    import asyncpg
    import floor_app
    from sqlalchemy import func, select, text
    from sqlalchemy.orm import joinedload, selectinload

    from app.db.engine import create_engine, create_sessionmaker
    from app.db.url import to_async_url
    from app.main import create_app
    from app.models import User
    from app.rum.profile_fetch import fetch_profile
    from app.settings import Settings

    password = "fetch-cost-password-0123"
    authorization = basic_authorization(password)
    settings = Settings(
        environment="production",
        database_url=database_url,
        rum_username=RUM_USERNAME,
        rum_password=password,
        log_level="warning",
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        assert await post_profile(app, authorization, 1) == 200
        await cpu_ms_per_call(
            "service: whole RemoteUserFetch (ASGI, no server)",
            lambda number: post_profile(app, authorization, number),
            count,
        )
        database = app.state.database

        async def lookup(number: int) -> None:
            async with database.driver_connection() as connection:
                await fetch_profile(
                    connection,
                    f"BENCH-{number % USERS:06d}",
                    recorded_erid=f"BENCH-{number % USERS:06d}",
                    source_address="127.0.0.1",
                    site_id="headwtr",
                    request_id=None,
                    returned_attributes=(),
                )

        await cpu_ms_per_call("service: checkout + fetch_profile (one statement)", lookup, count)

        assert await post_login(app, authorization, 1) == 200
        logins = max(count // 10, 20)
        started = time.thread_time()
        for number in range(logins):
            await post_login(app, authorization, number)
        per_login = (time.thread_time() - started) / logins * 1000
        print(f"{'service: RemoteLogin, event-loop thread only':58s} {per_login:7.2f} ms CPU")

    engine = create_engine(to_async_url(database_url), settings)
    sessionmaker = create_sessionmaker(engine)
    for label, options in (
        ("ORM: user + selectinload(addresses, attributes)", (
            selectinload(User.addresses), selectinload(User.attributes))),
        ("ORM: user + joinedload(addresses, attributes)", (
            joinedload(User.addresses), joinedload(User.attributes))),
        ("ORM: user row only", ()),
    ):
        query = select(User).options(*options)

        async def orm(number: int, query: Any = query) -> None:
            async with sessionmaker() as session:
                condition = func.lower(User.external_reference_id) == f"bench-{number % USERS:06d}"
                (await session.execute(query.where(condition))).unique().scalar_one()

        await cpu_ms_per_call(label, orm, count)

    async def ping_and_select(number: int) -> None:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    await cpu_ms_per_call("SQLAlchemy: engine.connect() + SELECT 1", ping_and_select, count)
    await engine.dispose()

    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=2)

    async def raw(number: int) -> None:
        await pool.fetchrow(
            "SELECT * FROM users WHERE lower(external_reference_id) = lower($1)",
            f"BENCH-{number % USERS:06d}",
        )

    await cpu_ms_per_call("asyncpg: pool fetchrow, same lookup", raw, count)
    await pool.close()

    os.environ["BENCH_FLOOR_DSN"] = database_url
    os.environ["BENCH_AUTHORIZATION"] = authorization
    startup = iter([{"type": "lifespan.startup"}])

    async def lifespan_receive() -> dict[str, Any]:
        return next(startup)

    lifespan_started = asyncio.Event()

    async def lifespan_send(message: dict[str, Any]) -> None:
        if message["type"] == "lifespan.startup.complete":
            lifespan_started.set()

    lifespan = asyncio.ensure_future(
        floor_app.app({"type": "lifespan"}, lifespan_receive, lifespan_send)
    )
    await asyncio.wait_for(lifespan_started.wait(), timeout=30)
    assert await post_profile(floor_app.app, authorization, 1) == 200
    await cpu_ms_per_call(
        "floor: whole RemoteUserFetch (ASGI, no server)",
        lambda number: post_profile(floor_app.app, authorization, number),
        count,
    )
    await floor_app._state["pool"].close()
    lifespan.cancel()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--calls", type=int, default=500, help="calls per measurement")
    options = parser.parse_args()
    print(f"load average before: {os.getloadavg()}")
    name, url = await create_database(options.database_url)
    try:
        await asyncio.to_thread(migrate, url)
        await seed_users(url, USERS)
        await measure(url, options.calls)
    finally:
        await drop_database(options.database_url, name)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    asyncio.run(main())
