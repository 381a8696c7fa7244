"""Problem details (RFC 9457): one shape for every error outside the callback paths."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.engine import Database, create_engine, create_sessionmaker
from app.main import create_app
from app.problems import PROBLEM_MEDIA_TYPE, PROBLEM_TYPES
from app.settings import Settings
from tests.admin_support import USERS, assert_problem, bearer, read_key, write_key

__all__ = ["read_key", "write_key"]


@pytest.fixture
async def lenient_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client that receives the 500 response instead of the re-raised server exception."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


class TestProblemShape:
    async def test_domain_error(self, client: httpx.AsyncClient, read_key: str) -> None:
        response = await client.get(
            f"{USERS}/00000000-0000-4000-8000-000000000000",
            headers={**bearer(read_key), "X-Request-ID": "trace-me-1"},
        )

        body = assert_problem(response, 404, "not_found", "user_key")
        assert body["title"] == "Not found"
        assert body["detail"] == "no user with user_key 00000000-0000-4000-8000-000000000000"
        assert body["request_id"] == "trace-me-1"
        assert body["errors"] == [
            {"field": "user_key", "location": None, "message": body["detail"], "code": "not_found"}
        ]

    async def test_every_invalid_field_listed(
        self, client: httpx.AsyncClient, write_key: str
    ) -> None:
        response = await client.post(
            USERS,
            json={"email": "nope", "locale": "xx", "billing_address": {"country": "ZZ"}},
            headers=bearer(write_key),
        )

        body = assert_problem(response, 422, "validation_failed")
        fields = {error["field"] for error in body["errors"]}
        assert fields == {"login", "email", "locale", "billing_address.country"}
        assert all(error["location"] == "body" for error in body["errors"])
        assert {error["code"] for error in body["errors"]} >= {"missing", "value_error"}
        assert "4 errors" in body["detail"]

    async def test_single_error_detail_names_field(
        self, client: httpx.AsyncClient, write_key: str
    ) -> None:
        response = await client.post(USERS, json={}, headers=bearer(write_key))

        body = assert_problem(response, 422, "validation_failed", "login")
        assert body["detail"] == "login: Field required"

    async def test_unknown_path(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/admin/v1/nothing-here")

        body = assert_problem(response, 404, "not_found")
        assert "/admin/v1/nothing-here" in body["detail"]

    async def test_method_not_allowed(self, client: httpx.AsyncClient) -> None:
        response = await client.delete(USERS)

        assert_problem(response, 405, "method_not_allowed")
        assert response.headers["allow"]
        described = await client.get("/problems/method_not_allowed")
        assert described.status_code == 200
        assert described.json()["status"] == 405

    async def test_title_stable_per_code(self) -> None:
        for code, problem in PROBLEM_TYPES.items():
            assert problem.code == code
            assert problem.type == f"/problems/{code}"
            assert 400 <= problem.status < 600


class TestUnexpectedErrors:
    async def test_generic_body_and_logged(
        self,
        app: FastAPI,
        lenient_client: httpx.AsyncClient,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        async def explode() -> None:
            raise RuntimeError("SELECT password_hash FROM users -- internal detail")

        app.add_api_route("/admin/v1/test-explode", explode)

        with caplog.at_level(logging.ERROR, logger="app.problems"):
            response = await lenient_client.get(
                "/admin/v1/test-explode", headers={"X-Request-ID": "boom-1"}
            )

        body = assert_problem(response, 500, "internal_error")
        assert "SELECT" not in response.text
        assert "password_hash" not in response.text
        assert "Traceback" not in response.text
        assert "boom-1" in body["detail"]
        assert response.headers.get_list("x-request-id") == ["boom-1"]
        logged = [record for record in caplog.records if record.name == "app.problems"]
        assert logged
        assert logged[0].exc_info is not None
        assert "boom-1" in logged[0].getMessage()

    async def test_database_error_hides_sql(
        self, app: FastAPI, lenient_client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        async def bad_sql() -> None:
            await session.execute(text("SELECT secret_column FROM no_such_table"))

        app.add_api_route("/admin/v1/test-bad-sql", bad_sql)

        response = await lenient_client.get("/admin/v1/test-bad-sql")

        body = assert_problem(response, 500, "internal_error")
        assert "no_such_table" not in response.text
        assert "secret_column" not in response.text
        assert response.headers.get_list("x-request-id") == [body["request_id"]]

    async def test_database_down_is_503(self, settings: Settings, shared_database_url: URL) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed_port = probe.getsockname()[1]
        url = shared_database_url.set(host="127.0.0.1", port=closed_port, query={})
        engine = create_engine(url, settings)
        service = create_app(
            settings,
            database=Database(url=url, engine=engine, sessionmaker=create_sessionmaker(engine)),
        )
        transport = httpx.ASGITransport(app=service, raise_app_exceptions=False)
        try:
            async with service.router.lifespan_context(service):
                async with httpx.AsyncClient(
                    transport=transport, base_url="http://testserver"
                ) as http:
                    response = await http.get(USERS, headers=bearer("sso_" + "k" * 43))
        finally:
            await engine.dispose()

        body = assert_problem(response, 503, "service_unavailable")
        assert response.headers["retry-after"] == "5"
        assert response.headers.get_list("x-request-id") == [body["request_id"]]


class TestCallbackPathsExcluded:
    async def test_rum_not_found_is_not_problem(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/rum/no-such-callback")

        assert response.status_code == 404
        assert response.headers["content-type"] != PROBLEM_MEDIA_TYPE

    async def test_prefix_match_is_exact(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/rumours")

        assert_problem(response, 404, "not_found")


class TestProblemTypes:
    async def test_known_code_described(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/problems/precondition_failed")

        assert response.status_code == 200
        assert response.json()["status"] == 412
        assert response.json()["type"] == "/problems/precondition_failed"
        assert "If-Match" in response.json()["description"]

    async def test_unknown_code(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/problems/made_up")

        assert_problem(response, 404, "not_found")
