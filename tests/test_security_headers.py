"""Security headers: every response is uncacheable, unframeable and sniff-proof, with a CSP."""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.security.headers import API_POLICY, SecurityHeadersMiddleware, script_hashes
from tests.admin_support import bearer, read_key
from tests.rum_messages import basic_auth, login_request

__all__ = ["read_key"]

INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def assert_common_headers(response: httpx.Response) -> None:
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"


def script_sources(policy: str) -> list[str]:
    (directive,) = [part.strip() for part in policy.split(";") if "script-src" in part]
    return directive.split()[1:]


class TestApiResponses:
    async def test_admin_json(self, client: httpx.AsyncClient, read_key: str) -> None:
        response = await client.get("/admin/v1/users", headers=bearer(read_key))

        assert response.status_code == 200
        assert_common_headers(response)
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["content-security-policy"] == API_POLICY

    async def test_problem_details(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/admin/v1/users")

        assert response.status_code == 401
        assert_common_headers(response)
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["content-security-policy"] == API_POLICY

    async def test_callback_xml(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/rum/login", content=login_request("nobody@example.com", "x"), headers=basic_auth()
        )

        assert response.status_code == 200
        assert_common_headers(response)
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["content-security-policy"] == API_POLICY

    async def test_limit_rejection(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/admin/v1/users", headers={"x-padding": "a" * 20_000})

        assert response.status_code == 431
        assert_common_headers(response)
        assert response.headers["cache-control"] == "no-store"


    async def test_unhandled_exception(self, app: FastAPI) -> None:
        async def explode() -> None:
            raise RuntimeError("unexpected")

        app.add_api_route("/admin/v1/test-headers-explode", explode)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            response = await http.get("/admin/v1/test-headers-explode")

        assert response.status_code == 500
        assert_common_headers(response)
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["content-security-policy"] == API_POLICY


class TestDocsPages:
    async def test_swagger_inline_script_hashed(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/docs")

        assert response.status_code == 200
        assert_common_headers(response)
        inline = INLINE_SCRIPT.findall(response.text)
        assert len(inline) == 1
        digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
        sources = script_sources(response.headers["content-security-policy"])
        assert sources == ["'self'", f"'sha256-{digest}'"]
        assert "'unsafe-inline'" not in sources

    async def test_redoc_only_own_scripts(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/redoc")

        assert response.status_code == 200
        assert_common_headers(response)
        policy = response.headers["content-security-policy"]
        assert script_sources(policy) == ["'self'"]
        assert "frame-ancestors 'none'" in policy
        assert "cdn" not in policy

    async def test_static_assets_cacheable(self, client: httpx.AsyncClient) -> None:
        page = await client.get("/redoc")
        (script,) = re.findall(r'<script src="([^"]+)"', page.text)

        response = await client.get(script)

        assert response.status_code == 200
        assert_common_headers(response)
        assert "no-store" not in response.headers.get("cache-control", "")


class TestMiddleware:
    @staticmethod
    async def serve(
        headers: list[tuple[bytes, bytes]], path: str = "/x", chunks: tuple[bytes, ...] = (b"",)
    ) -> tuple[dict[bytes, bytes], bytes]:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for index, chunk in enumerate(chunks):
                more = index < len(chunks) - 1
                await send({"type": "http.response.body", "body": chunk, "more_body": more})

        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        scope = {"type": "http", "path": path, "root_path": "", "headers": []}
        await SecurityHeadersMiddleware(app)(scope, receive, send)
        body = b"".join(message.get("body", b"") for message in sent[1:])
        return dict(sent[0]["headers"]), body

    async def test_route_cache_control_kept(self) -> None:
        headers, _ = await self.serve([(b"cache-control", b"max-age=60")])

        assert headers[b"cache-control"] == b"max-age=60"
        assert headers[b"x-content-type-options"] == b"nosniff"

    async def test_docs_page_in_parts(self) -> None:
        chunks = (b"<html><script>one()</scr", b"ipt><script>two()</script></html>")

        headers, body = await self.serve([], path="/docs", chunks=chunks)

        assert body == b"".join(chunks)
        sources = script_sources(headers[b"content-security-policy"].decode())
        assert sources == ["'self'", *script_hashes(body)]
        assert len(sources) == 3

    @pytest.mark.parametrize("page", [b"", b"<p>no scripts</p>"])
    def test_no_inline_scripts(self, page: bytes) -> None:
        assert script_hashes(page) == []
