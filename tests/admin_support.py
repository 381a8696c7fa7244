"""Fixtures and helpers for the admin API tests: API keys, headers and audit queries."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.admin.keys import create_api_key
from app.models import AuditEvent
from app.problems import PROBLEM_MEDIA_TYPE

USERS = "/admin/v1/users"
AUDIT = "/admin/v1/audit-events"

PROBLEM_KEYS = {
    "type",
    "title",
    "status",
    "detail",
    "instance",
    "code",
    "field",
    "errors",
    "request_id",
}


async def new_key(session: AsyncSession, *scopes: str, name: str = "test key") -> str:
    """Create and commit an API key with `scopes`; return the key itself."""
    _, key = await create_api_key(session, name=name, scopes=scopes)
    await session.commit()
    return key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def write_key(session: AsyncSession) -> str:
    return await new_key(session, "admin:write", name="writer")


@pytest.fixture
async def read_key(session: AsyncSession) -> str:
    return await new_key(session, "admin:read", name="reader")


def user_body(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"login": f"user-{uuid.uuid4().hex[:12]}@example.com"}
    body.update(fields)
    return body


async def create_via_api(client: httpx.AsyncClient, key: str, **fields: Any) -> dict[str, Any]:
    response = await client.post(USERS, json=user_body(**fields), headers=bearer(key))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def assert_problem(
    response: httpx.Response, status: int, code: str, field: str | None = None
) -> dict[str, Any]:
    """Check that `response` is a problem details response; return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body: dict[str, Any] = response.json()
    assert set(body) == PROBLEM_KEYS
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"] == f"/problems/{code}"
    assert body["instance"] == response.request.url.path
    if field is not None:
        assert body["field"] == field
        assert field in [error["field"] for error in body["errors"]]
    return body


async def audit_events_for(session: AsyncSession, user_key: str | uuid.UUID) -> list[AuditEvent]:
    rows = await session.scalars(
        select(AuditEvent)
        .where(AuditEvent.target_user_key == uuid.UUID(str(user_key)))
        .order_by(AuditEvent.id)
    )
    return list(rows.all())


async def audit_count(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(AuditEvent)) or 0)
