"""`POST /admin/v1/imports`: authorisation, formats, the report and problem details."""

from __future__ import annotations

import json

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import User
from tests.admin_support import assert_problem, bearer, new_key

IMPORTS = "/admin/v1/imports"
GOOD = "login,external_reference_id\nweb1@example.com,WEB-1\nweb2@example.com,WEB-2\n"
BAD = GOOD + "web3@example.com,web-1\n"


async def _users(session: AsyncSession) -> int:
    return (
        await session.scalar(
            select(func.count()).select_from(User).where(User.created_via == "import")
        )
        or 0
    )


async def test_csv_import_returns_summary(session: AsyncSession, client: httpx.AsyncClient) -> None:
    key = await new_key(session, "admin:write")
    response = await client.post(
        IMPORTS, content=GOOD, headers={**bearer(key), "Content-Type": "text/csv"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["errors"] == []
    assert body["summary"]["rows_imported"] == 2
    assert await _users(session) == 2


async def test_rejected_import_is_problem(session: AsyncSession, client: httpx.AsyncClient) -> None:
    key = await new_key(session, "admin:write")
    response = await client.post(
        IMPORTS, params={"format": "csv"}, content=BAD, headers=bearer(key)
    )
    assert_problem(response, 422, "import_rejected")
    errors = response.json()["errors"]
    assert [(e["location"], e["field"], e["code"]) for e in errors] == [
        ("row 2", "external_reference_id", "duplicate_in_file"),
        ("row 4", "external_reference_id", "duplicate_in_file"),
    ]
    assert await _users(session) == 0


async def test_skip_invalid_and_dry_run(session: AsyncSession, client: httpx.AsyncClient) -> None:
    key = await new_key(session, "admin:write")
    headers = {**bearer(key), "Content-Type": "text/csv"}
    response = await client.post(IMPORTS, params={"dry_run": "true"}, content=BAD, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["summary"]["rows_rejected"] == 2
    assert await _users(session) == 0

    response = await client.post(
        IMPORTS, params={"skip_invalid": "true"}, content=BAD, headers=headers
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["summary"]["rows_imported"] == 1
    assert [e["row"] for e in body["errors"]] == [2, 4]
    assert await _users(session) == 1


async def test_ndjson_by_content_type(session: AsyncSession, client: httpx.AsyncClient) -> None:
    key = await new_key(session, "admin:write")
    body = json.dumps({"login": "nd@example.com", "shipping_address": {"country": "US"}}) + "\n"
    response = await client.post(
        IMPORTS, content=body, headers={**bearer(key), "Content-Type": "application/x-ndjson"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["summary"]["rows_imported"] == 1


async def test_unreadable_file_is_problem(session: AsyncSession, client: httpx.AsyncClient) -> None:
    key = await new_key(session, "admin:write")
    response = await client.post(
        IMPORTS, content="login,nickname\n", headers={**bearer(key), "Content-Type": "text/csv"}
    )
    assert_problem(response, 422, "invalid_file")
    assert "nickname" in response.json()["detail"]

    response = await client.post(IMPORTS, content=GOOD, headers=bearer(key))
    assert_problem(response, 422, "invalid_file")


async def test_import_needs_write_scope(session: AsyncSession, client: httpx.AsyncClient) -> None:
    reader = await new_key(session, "admin:read")
    response = await client.post(
        IMPORTS, content=GOOD, headers={**bearer(reader), "Content-Type": "text/csv"}
    )
    assert_problem(response, 403, "insufficient_scope")
    response = await client.post(IMPORTS, content=GOOD, headers={"Content-Type": "text/csv"})
    assert response.status_code == 401
    assert await _users(session) == 0
