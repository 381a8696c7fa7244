"""The per-request time limit spares the streaming export, which runs as long as the store is large."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.settings import Settings
from tests.admin_support import bearer, new_key
from tests.conftest import make_settings


@pytest.fixture
def settings() -> Settings:
    return make_settings(request_timeout_seconds=0.000001)


async def test_export_not_cut_by_time_limit(client: httpx.AsyncClient, session: AsyncSession) -> None:
    key = await new_key(session, "admin:read")

    export = await client.get("/admin/v1/exports", headers=bearer(key))
    listing = await client.get("/admin/v1/users", headers=bearer(key))

    assert listing.status_code == 503
    assert export.status_code == 200
