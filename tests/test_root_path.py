"""Behind a server's root path (`uvicorn --root-path /sso`), every path check still applies."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from app.identity.passwords import PasswordHasher
from app.paths import route_path
from app.settings import Settings
from tests.admin_support import bearer, new_key
from tests.conftest import make_settings
from tests.factories import make_user
from tests.rum_messages import basic_auth, child_text, parse, profile_request

ROOT = "/sso"


@pytest.mark.parametrize(
    ("path", "root_path", "expected"),
    [
        ("/sso/rum/login", "/sso", "/rum/login"),
        ("/sso", "/sso", "/"),
        ("/ssox/rum", "/sso", "/ssox/rum"),
        ("/rum", "", "/rum"),
        ("/other/rum", "/sso", "/other/rum"),
    ],
)
def test_route_path_strips_root(path: str, root_path: str, expected: str) -> None:
    assert route_path({"type": "http", "path": path, "root_path": root_path}) == expected


@pytest.fixture
async def rooted(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose requests carry the root path, as uvicorn's scope does."""
    transport = httpx.ASGITransport(app=app, root_path=ROOT)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def test_fetch_under_root_path(
    rooted: httpx.AsyncClient, session: AsyncSession, hasher: PasswordHasher
) -> None:
    await make_user(session, hasher, external_reference_id="ROOTED-1")

    response = await rooted.post(
        f"{ROOT}/rum/user-profile", content=profile_request("ROOTED-1"), headers=basic_auth()
    )

    assert response.status_code == 200
    assert response.headers["x-content-type-options"] == "nosniff"
    assert child_text(parse(response.content), "userInfo", "userKey", "externalReferenceID") == (
        "ROOTED-1"
    )


async def test_callback_limit_errors_stay_xml(rooted: httpx.AsyncClient) -> None:
    headers = {**basic_auth(), "X-Padding": "a" * 20_000}

    response = await rooted.post(
        f"{ROOT}/rum/user-profile", content=profile_request("ROOTED-1"), headers=headers
    )

    assert response.status_code == 431
    assert response.headers["content-type"].startswith("text/xml")
    assert child_text(parse(response.content), "code") == "headers_too_large"


async def test_callback_handler_errors_stay_xml(rooted: httpx.AsyncClient) -> None:
    response = await rooted.post(
        f"{ROOT}/rum/user-profile", content=b"<not-xml", headers=basic_auth()
    )

    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/xml")
    assert child_text(parse(response.content), "code") == "malformed"


class TestUntimedExport:
    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(request_timeout_seconds=0.000001)

    async def test_export_not_cut_under_root_path(
        self, rooted: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        key = await new_key(session, "admin:read")

        export = await rooted.get(f"{ROOT}/admin/v1/exports", headers=bearer(key))
        listing = await rooted.get(f"{ROOT}/admin/v1/users", headers=bearer(key))

        assert listing.status_code == 503
        assert export.status_code == 200
