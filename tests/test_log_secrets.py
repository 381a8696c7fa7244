"""No password, token, key or password hash reaches a log line, across every flow that carries one.

The whole flow runs with debug logging in JSON: an admin creates a user and an API key is used,
Digital River logs the user in (right and wrong passwords, wrong callback credentials), the site
issues a session token that Digital River validates, a shopper registers through Digital River,
and a profile is fetched. Every captured line must parse as JSON and contain none of the secrets.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import User
from app.ops.logging import configure_logging
from tests.admin_support import USERS, bearer, new_key
from tests.conftest import RUM_PASSWORD, RUM_USERNAME, make_settings
from tests.ops_helpers import json_lines, service_log_text
from tests.rum_messages import (
    basic_auth,
    child_text,
    create_request,
    login_request,
    parse,
    profile_request,
    session_request,
)

ADMIN_SET_PASSWORD = "admin-set Passw0rd for Émile"
WRONG_PASSWORD = "a wrong guess 0f the password"
REGISTERED_PASSWORD = "registered through DR: s3cret phrase"
WRONG_CALLBACK_PASSWORD = "not-the-callback-password-123"


@pytest.fixture
def captured(app: FastAPI) -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging(make_settings(log_format="json", log_level="debug"), stream=stream)
    try:
        yield stream
    finally:
        configure_logging(make_settings())


async def test_no_secret_in_any_log_line(
    client: httpx.AsyncClient, session: AsyncSession, captured: io.StringIO
) -> None:
    api_key = await new_key(session, "admin:write", "admin:read", "sessions", name="flow")
    secrets = [
        ADMIN_SET_PASSWORD,
        WRONG_PASSWORD,
        REGISTERED_PASSWORD,
        WRONG_CALLBACK_PASSWORD,
        RUM_PASSWORD,
        api_key,
        basic_auth()["Authorization"].split()[1],
    ]

    created = await client.post(
        USERS,
        json={"login": "flow.user@example.com", "password": ADMIN_SET_PASSWORD},
        headers=bearer(api_key),
    )
    assert created.status_code == 201, created.text
    erid = created.json()["external_reference_id"]

    for password, expected in ((ADMIN_SET_PASSWORD, "true"), (WRONG_PASSWORD, "false")):
        login = await client.post(
            "/rum/login",
            content=login_request("flow.user@example.com", password),
            headers=basic_auth(),
        )
        assert child_text(parse(login.content), "successful") == expected

    wrong_caller = base64.b64encode(f"{RUM_USERNAME}:{WRONG_CALLBACK_PASSWORD}".encode()).decode()
    secrets.append(wrong_caller)
    rejected = await client.post(
        "/rum/login",
        content=login_request("flow.user@example.com", ADMIN_SET_PASSWORD),
        headers={"Authorization": f"Basic {wrong_caller}"},
    )
    assert rejected.status_code == 401

    issued = await client.post(
        "/api/v1/sessions",
        json={"login": "flow.user@example.com", "password": ADMIN_SET_PASSWORD},
        headers=bearer(api_key),
    )
    assert issued.status_code == 201, issued.text
    token = issued.json()["token"]
    secrets.append(token)
    validated = await client.post(
        "/rum/session", content=session_request(token), headers=basic_auth()
    )
    assert child_text(parse(validated.content), "successful") == "true"
    invalid_token = token[::-1]
    secrets.append(invalid_token)
    not_validated = await client.post(
        "/rum/session", content=session_request(invalid_token), headers=basic_auth()
    )
    assert child_text(parse(not_validated.content), "successful") == "false"

    registered = await client.post(
        "/rum/create-user",
        content=create_request("registered@example.com", REGISTERED_PASSWORD),
        headers=basic_auth(),
    )
    assert child_text(parse(registered.content), "successful") == "true", registered.text
    login_new = await client.post(
        "/rum/login",
        content=login_request("registered@example.com", REGISTERED_PASSWORD),
        headers=basic_auth(),
    )
    assert child_text(parse(login_new.content), "successful") == "true"

    profile = await client.post(
        "/rum/user-profile", content=profile_request(erid), headers=basic_auth()
    )
    assert profile.status_code == 200

    hashes = await session.scalars(
        select(User.password_hash).where(User.password_hash.is_not(None))
    )
    secrets.extend(hashes)

    records = json_lines(captured)
    access = [record for record in records if record["event"] == "http.request"]
    assert len(access) == 10
    assert all(record.get("request_id") for record in access)
    logged = service_log_text(captured)
    for secret in secrets:
        assert secret not in logged, f"a secret reached the logs: {secret[:6]}…"
    assert "$argon2id$" not in logged
