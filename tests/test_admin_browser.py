"""The /docs page in headless Chromium: offline, authorized with a key, create and read a user.

The service runs as a real uvicorn process on a free loopback port, against a fresh migrated
database. Every browser request to a host other than loopback is aborted and recorded.

Needs Debian's `chromium` package at /usr/bin/chromium and the `playwright` Python package
(Playwright's own browser download is never used). Without them the test is skipped, unless
SSO_REQUIRE_BROWSER=1, which turns the skip into a failure.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy.engine import URL

from tests.conftest import RUM_PASSWORD, RUM_USERNAME

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
STARTUP_ATTEMPTS = 120
STARTUP_INTERVAL_SECONDS = 0.25
UI_TIMEOUT_MS = 20_000

pytestmark = pytest.mark.slow


def _unavailable(reason: str) -> None:
    if os.environ.get("SSO_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}, and SSO_REQUIRE_BROWSER=1 requires the browser test to run")
    pytest.skip(f"{reason}: install Debian's chromium package to run the browser test")


def _require_browser() -> None:
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        _unavailable("the playwright package is not installed")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _service_environment(database_url: URL) -> dict[str, str]:
    environment = dict(os.environ)
    environment.update(
        {
            "SSO_DATABASE_URL": database_url.render_as_string(hide_password=False),
            "SSO_ENVIRONMENT": "development",
            "SSO_RUM_USERNAME": RUM_USERNAME,
            "SSO_RUM_PASSWORD": RUM_PASSWORD,
            "SSO_LOG_FORMAT": "console",
        }
    )
    return environment


@pytest.fixture
async def service(fresh_database_url: URL) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """Start uvicorn on a free loopback port; yield its base URL and environment."""
    port = _free_port()
    environment = _service_environment(fresh_database_url)
    log = tempfile.TemporaryFile()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "uvicorn",
        "app.main:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base_url) as http:
            for _ in range(STARTUP_ATTEMPTS):
                if process.returncode is not None:
                    break
                try:
                    if (await http.get("/openapi.json")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(STARTUP_INTERVAL_SECONDS)
            else:
                pytest.fail("the service did not serve /openapi.json in time")
        if process.returncode is not None:
            log.seek(0)
            pytest.fail(f"the service exited early:\n{log.read().decode(errors='replace')}")
        yield base_url, environment
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout=15)
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()


def _create_key(environment: dict[str, str]) -> dict[str, Any]:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "keys",
            "create",
            "--name",
            "docs page",
            "--scope",
            "admin:write",
        ],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    created: dict[str, Any] = json.loads(completed.stdout)
    return created


async def _execute(page: Any, operation_id: str) -> tuple[str, str]:
    """Run the open "Try it out" form of an operation; return the status and response body."""
    operation = page.locator(f"#operations-Users-{operation_id}")
    await operation.locator("button.execute").click()
    response = operation.locator(".live-responses-table .response").first
    await response.wait_for()
    status = (await response.locator(".response-col_status").inner_text()).strip()
    body = await response.locator(".response-col_description pre").first.inner_text()
    return status, body


async def _open_try_it_out(page: Any, operation_id: str) -> Any:
    operation = page.locator(f"#operations-Users-{operation_id}")
    await operation.locator(".opblock-summary").first.click()
    await operation.locator("button.try-out__btn").click()
    return operation


async def test_docs_page_creates_and_reads_user(service: tuple[str, dict[str, str]]) -> None:
    _require_browser()
    from playwright.async_api import async_playwright

    base_url, environment = service
    key = (await asyncio.to_thread(_create_key, environment))["key"]
    login = "browser.user@example.com"
    blocked: list[str] = []
    violations: list[str] = []

    async def only_loopback(route: Any) -> None:
        url = route.request.url
        if urlsplit(url).scheme in ("http", "https", "ws", "wss") and not _is_loopback(url):
            blocked.append(url)
            await route.abort()
        else:
            await route.continue_()

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            context = await browser.new_context()
            await context.route("**/*", only_loopback)
            page = await context.new_page()
            page.set_default_timeout(UI_TIMEOUT_MS)
            page.on(
                "console",
                lambda message: violations.append(message.text)
                if "Content Security Policy" in message.text
                else None,
            )

            await page.goto(f"{base_url}/docs")
            await page.locator("#operations-Users-createUser").wait_for()

            await page.locator("button.authorize").first.click()
            modal = page.locator(".modal-ux")
            await modal.locator("input").first.fill(key)
            await modal.locator("button.authorize").click()
            await modal.locator("button.btn-done").click()

            create = await _open_try_it_out(page, "createUser")
            await create.locator("textarea.body-param__text").fill(
                json.dumps(
                    {"login": login, "first_name": "Browser", "password": "typed in a browser"}
                )
            )
            status, body = await _execute(page, "createUser")
            assert status == "201", body
            created = json.loads(body)
            assert created["login"] == login

            read = await _open_try_it_out(page, "getUser")
            await read.locator('input[placeholder="user_key"]').fill(created["user_key"])
            status, body = await _execute(page, "getUser")
            assert status == "200", body
            assert json.loads(body)["user_key"] == created["user_key"]
            assert json.loads(body)["first_name"] == "Browser"

            assert blocked == []

            await page.goto(f"{base_url}/redoc")
            await page.locator("h2", has_text="Create a user").first.wait_for()
        finally:
            await browser.close()

    # ReDoc 2 always shows Redocly's logo from its CDN in the menu footer. The pages' Content
    # Security Policy stops that request in the browser, which reports it, and the image is
    # hidden. Nothing else may break the policy.
    assert blocked == []
    assert all(REDOC_LOGO in violation for violation in violations), violations
