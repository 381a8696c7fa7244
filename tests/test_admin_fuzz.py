"""Schemathesis fuzzes every /admin operation of the OpenAPI schema against a live service.

One `uvicorn` process serves a migrated database holding a few users and a real admin key.
Schemathesis draws requests from each operation's schema, valid and invalid ones, and checks
that no response is a 5xx and that every response matches the documented status codes,
content types, headers and body schemas. Examples per operation are bounded by
`MAX_EXAMPLES`, so the whole module runs in well under three minutes on two cores.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy.engine import URL

from app.admin.keys import create_api_key
from app.db.engine import create_engine, create_sessionmaker
from app.identity.passwords import PasswordHasher
from app.main import create_app
from tests.conftest import make_settings
from tests.database import TestServer
from tests.factories import make_user
from tests.service_process import ServiceProcess

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 20
# No 5xx, and every response as documented. NOTE: Schemathesis's negative_data_rejection check
# is left out, because it reports two accepted requests that are expected here. The API ignores
# unknown query parameters, as FastAPI does by default. And this test adds a valid
# Authorization header to every request, also to those that Schemathesis generates without one.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
async def fuzz_database_url(test_server: TestServer, template_database: str) -> AsyncIterator[URL]:
    url = await test_server.create("fuzz", template=template_database)
    yield url
    await test_server.drop(url.database or "")


@pytest.fixture(scope="module")
async def admin_headers(fuzz_database_url: URL) -> dict[str, str]:
    """A real admin key, and a few users so that list and lookup operations return rows."""
    fast = make_settings(argon2_memory_cost_kib=1024, argon2_time_cost=1)
    engine = create_engine(fuzz_database_url, fast)
    hasher = PasswordHasher(fast)
    try:
        async with create_sessionmaker(engine)() as session:
            for number in range(3):
                await make_user(session, hasher, login=f"fuzz{number}@example.com")
            _, key = await create_api_key(session, name="fuzzer", scopes=["admin:write"])
            await session.commit()
    finally:
        hasher.close()
        await engine.dispose()
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def service(fuzz_database_url: URL, admin_headers: dict[str, str]) -> Iterator[ServiceProcess]:
    logs = Path(tempfile.mkdtemp(prefix="sso-fuzz-"))
    process = ServiceProcess(fuzz_database_url, logs / "service.log")
    try:
        process.wait_until_ready()
        yield process
    finally:
        process.stop()


def admin_schema() -> Any:
    """The /admin part of the schema the service publishes at /openapi.json.

    Built from the application object at import time, because pytest collects the
    parametrized tests before any fixture starts the service.
    """
    document = create_app(make_settings()).openapi()
    return schemathesis.openapi.from_dict(document).include(path_regex=r"^/admin/")


schema = admin_schema()


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_admin_operation_conforms(
    case: Any, service: ServiceProcess, admin_headers: dict[str, str]
) -> None:
    case.call_and_validate(base_url=service.base_url, headers=admin_headers, checks=CHECKS)
