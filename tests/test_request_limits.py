"""Source addresses behind trusted proxies, and the header, body and time limits."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession

from app.identity.passwords import PasswordHasher
from app.models import LoginEvent
from app.ops.http_protocol import WarningBudget
from app.security.proxy import source_address
from app.security.throttle import account_subject
from app.settings import Settings
from tests.admin_support import bearer, new_key
from tests.conftest import make_settings
from tests.factories import make_user
from tests.ops_helpers import cli_command
from tests.rum_messages import basic_auth, child_text, login_request, parse, profile_request
from tests.service_process import ServiceProcess

TRUSTED = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")]


async def last_source(session: AsyncSession) -> str | None:
    address = await session.scalar(
        select(LoginEvent.source_address).order_by(LoginEvent.id.desc()).limit(1)
    )
    return None if address is None else str(address)


async def login(client: httpx.AsyncClient, **headers: str) -> httpx.Response:
    return await client.post(
        "/rum/login",
        content=login_request("someone@example.com", "wrong password"),
        headers={**basic_auth(), **headers},
    )


class TestSourceAddress:
    @pytest.mark.parametrize(
        ("peer", "header", "trusted", "expected"),
        [
            # No trusted proxy configured: the header is ignored.
            ("10.0.0.5", ["198.51.100.7"], False, "10.0.0.5"),
            ("::ffff:10.0.0.5", ["198.51.100.7"], False, "10.0.0.5"),
            ("2001:DB8:0::9", [], False, "2001:db8::9"),
            # Trusted peer: the right-most untrusted hop is the client.
            ("10.0.0.5", ["198.51.100.7"], True, "198.51.100.7"),
            ("10.0.0.5", ["203.0.113.66, 198.51.100.7, 10.1.1.1"], True, "198.51.100.7"),
            ("10.0.0.5", ["203.0.113.66", "198.51.100.7"], True, "198.51.100.7"),
            # Untrusted peer: whatever it sends is ignored.
            ("192.0.2.10", ["198.51.100.7"], True, "192.0.2.10"),
            # Garbage stops the walk at the last trusted hop.
            ("10.0.0.5", ["198.51.100.7, not-an-address"], True, "10.0.0.5"),
            ("10.0.0.5", ["198.51.100.7:4711"], True, "198.51.100.7"),
            ("10.0.0.5", ["[2001:db9::1]:443"], True, "2001:db9::1"),
            ("2001:db8::9", ["::ffff:198.51.100.7"], True, "198.51.100.7"),
            ("10.0.0.5", [], True, "10.0.0.5"),
            # Every hop trusted: the left-most one is the best guess.
            ("10.0.0.5", ["10.2.2.2, 10.3.3.3"], True, "10.2.2.2"),
        ],
    )
    def test_resolution(self, peer: str, header: list[str], trusted: bool, expected: str) -> None:
        assert source_address(peer, header, TRUSTED if trusted else []) == expected

    def test_unparsable_peer_gives_none(self) -> None:
        assert source_address("testclient", ["198.51.100.7"], TRUSTED) is None
        assert source_address("testclient", [], []) is None
        assert source_address(None, [], []) is None


class TestForwardedHeaderIgnoredByDefault:
    async def test_event_records_socket_peer(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        await login(client, **{"X-Forwarded-For": "198.51.100.7"})

        assert await last_source(session) == "127.0.0.1"


class TestForwardedHeaderFromTrustedProxy:
    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(trusted_proxies="127.0.0.0/8", rum_allowed_networks="198.51.100.0/24")

    async def test_event_and_allowlist_use_client(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        response = await login(client, **{"X-Forwarded-For": "203.0.113.1, 198.51.100.7"})

        assert response.status_code == 200
        assert await last_source(session) == "198.51.100.7"

    async def test_client_outside_allowlist_403(self, client: httpx.AsyncClient) -> None:
        response = await login(client, **{"X-Forwarded-For": "203.0.113.1"})

        assert response.status_code == 403


class TestCustomAddressHeader:
    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(trusted_proxies="127.0.0.1/32", client_address_header="X-Real-IP")

    async def test_named_header_used(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        await login(client, **{"X-Real-IP": "198.51.100.8", "X-Forwarded-For": "198.51.100.9"})

        assert await last_source(session) == "198.51.100.8"


class TestHeaderLimit:
    async def test_oversized_headers_431_xml_for_callbacks(self, client: httpx.AsyncClient) -> None:
        response = await login(client, **{"X-Padding": "a" * 20_000})

        assert response.status_code == 431
        assert response.headers["content-type"].startswith("text/xml")
        assert child_text(parse(response.content), "code") == "headers_too_large"

    async def test_oversized_headers_431_problem_elsewhere(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.get("/admin/v1/users", headers={"X-Padding": "a" * 20_000})

        assert response.status_code == 431
        assert response.json()["code"] == "headers_too_large"
        assert "16384" in response.json()["detail"]

    async def test_headers_under_limit_pass(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/healthz", headers={"X-Padding": "a" * 10_000})

        assert response.status_code == 200


class TestApiBodyLimit:
    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(max_api_body_bytes=4096)

    async def test_declared_length_over_limit_413(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/admin/v1/users", content=b"{" + b" " * 5000 + b"}",
            headers={"Content-Type": "application/json"},
        )

        assert response.status_code == 413
        assert response.json()["code"] == "body_too_large"

    async def test_streamed_body_over_limit_413(self, client: httpx.AsyncClient) -> None:
        chunks_sent = 0

        async def chunks() -> AsyncIterator[bytes]:
            nonlocal chunks_sent
            for _ in range(1000):
                chunks_sent += 1
                yield b" " * 1024

        response = await client.post(
            "/admin/v1/users", content=chunks(), headers={"Content-Type": "application/json"}
        )

        assert response.status_code == 413
        assert response.json()["code"] == "body_too_large"
        assert "4096" in response.json()["detail"]
        assert chunks_sent < 10

    async def test_callbacks_keep_own_limit(self, client: httpx.AsyncClient) -> None:
        body = login_request("someone@example.com", "x" * 10_000)

        response = await client.post("/rum/login", content=body, headers=basic_auth())

        assert response.status_code == 200


class TestTimeLimit:
    @pytest.fixture
    def settings(self) -> Settings:
        # Fast hashing, so an ordinary login stays well inside the limit on a busy machine.
        return make_settings(
            request_timeout_seconds=1.0, argon2_memory_cost_kib=1024, argon2_time_cost=1
        )

    async def test_slow_body_408(self, committed_client: httpx.AsyncClient) -> None:
        async def slow() -> AsyncIterator[bytes]:
            yield b"<?xml version='1.0'?>"
            await asyncio.sleep(3)
            yield b"<x/>"

        started = time.monotonic()
        response = await committed_client.post("/rum/login", content=slow(), headers=basic_auth())

        assert response.status_code == 408
        assert child_text(parse(response.content), "code") == "body_timeout"
        assert time.monotonic() - started < 2.0

    async def test_slow_handler_503_then_recovers(
        self, committed_client: httpx.AsyncClient, committed_app: FastAPI
    ) -> None:
        database = committed_app.state.database
        hasher: PasswordHasher = committed_app.state.hasher
        async with database.sessionmaker() as session:
            user = await make_user(session, hasher, login="held@example.com")
        subject = account_subject(user.login)

        # Another transaction locks the account's counter row, so the login's count waits.
        async with database.engine.connect() as blocker:
            await blocker.execute(
                text(
                    "INSERT INTO throttle_counters (scope, subject) VALUES ('account', :s)"
                ),
                {"s": subject},
            )
            started = time.monotonic()
            response = await committed_client.post(
                "/rum/login", content=login_request(user.login, "wrong password"),
                headers=basic_auth(),
            )
            elapsed = time.monotonic() - started
            await blocker.rollback()

        after = await committed_client.post(
            "/rum/login", content=login_request(user.login, "wrong password"),
            headers=basic_auth(),
        )

        assert response.status_code == 503
        assert response.headers["Retry-After"] == "5"
        assert child_text(parse(response.content), "code") == "request_timeout"
        assert elapsed < 2.0
        assert after.status_code == 200
        assert child_text(parse(after.content), "errorCode") == "5"


class TestNulCharacters:
    """PostgreSQL text cannot hold U+0000; such input must be a 422, not a database error."""

    async def test_query_parameter_422(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        key = await new_key(session, "admin:read", name="reader")

        response = await client.get(
            "/admin/v1/users?email=a%00b@example.com", headers=bearer(key)
        )

        assert response.status_code == 422
        assert response.json()["code"] == "validation_failed"
        assert response.json()["field"] == "email"

    async def test_json_string_422(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        key = await new_key(session, "admin:write", name="writer")
        bodies = [
            {"first_name": "a\u0000b"},
            {"attributes": {"crmSession": "a\u0000"}},
            {"shipping_address": {"line1": "a\u0000", "city": "Paris", "country": "FR"}},
        ]

        for number, fields in enumerate(bodies):
            response = await client.post(
                "/admin/v1/users",
                json={"login": f"nul{number}@example.com", **fields},
                headers=bearer(key),
            )
            assert response.status_code == 422, response.text
            assert "U+0000" in response.json()["detail"]


def test_head_warnings_limited_per_period() -> None:
    budget = WarningBudget(count=3, period_seconds=60.0)

    first_minute = [budget.take(now) for now in (0.0, 1.0, 2.0, 3.0, 4.0, 59.0)]
    next_minute = [budget.take(now) for now in (60.0, 61.0)]

    assert first_minute == [0, 0, 0, None, None, None]
    # The first warning of the next period reports the three that were left out.
    assert next_minute == [3, 0]


@pytest.mark.slow
class TestServedHeaderLimit:
    """`sso-provider serve` bounds a request head while it arrives, with either HTTP parser."""

    HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 20_000 + b"\r\n\r\n"

    @pytest.mark.parametrize("parser", ["h11", "httptools"])
    def test_oversized_heads_rejected(
        self, parser: str, fresh_database_url: URL, tmp_path: Path
    ) -> None:
        service = ServiceProcess(
            fresh_database_url,
            tmp_path / "serve.log",
            command=[*cli_command(), "serve"],
            SSO_HTTP_PARSER=parser,
        )
        try:
            service.wait_until_ready()
            normal = httpx.get(
                f"{service.base_url}/healthz", headers={"X-Padding": "a" * 8000}, timeout=10
            )
            trickled = self.send_raw(service.port, self.HEAD, piece=1024)
            # A head that never ends: without the bound the server would wait for its end.
            endless = self.send_raw(service.port, self.HEAD[:-4], piece=1024)
            whole = self.send_raw(service.port, self.HEAD, piece=len(self.HEAD))
        finally:
            service.stop()

        assert normal.status_code == 200
        for cut_off in (trickled, endless):
            assert cut_off.startswith(b"HTTP/1.1 431 ")
            assert b"connection: close" in cut_off.lower()
            assert b"x-content-type-options: nosniff\r\n" in cut_off
            assert b"cache-control: no-store\r\n" in cut_off
            assert b"\r\nx-request-id: " in cut_off
        # Arriving in one read, it is parsed whole and the app answers 431.
        assert whole.startswith(b"HTTP/1.1 431 ")
        assert b"headers_too_large" in whole

    def test_httptools_limit_from_setting(self, fresh_database_url: URL, tmp_path: Path) -> None:
        service = ServiceProcess(
            fresh_database_url,
            tmp_path / "serve.log",
            command=[*cli_command(), "serve"],
            SSO_HTTP_PARSER="httptools",
            SSO_MAX_HEADER_BYTES="4096",
        )
        head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: "
        try:
            service.wait_until_ready()
            small = self.send_raw(
                service.port, head + b"a" * 3000 + b"\r\nConnection: close\r\n\r\n", piece=512
            )
            endless = self.send_raw(service.port, head + b"a" * 6000, piece=512)
            # A chunked body's trailer that never ends, after the response was sent: the
            # connection is closed, with no second response on it.
            trailer = self.send_raw(
                service.port,
                b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                + b"0\r\nX-Trailer: " + b"a" * 6000,
                piece=512,
            )
        finally:
            service.stop()

        assert small.startswith(b"HTTP/1.1 200 ")
        assert endless.startswith(b"HTTP/1.1 431 ")
        assert trailer.startswith(b"HTTP/1.1 200 ")
        assert trailer.count(b"HTTP/1.1 ") == 1

    def test_httptools_serves_callbacks_and_pipelined_requests(
        self, fresh_database_url: URL, tmp_path: Path
    ) -> None:
        service = ServiceProcess(
            fresh_database_url,
            tmp_path / "serve.log",
            command=[*cli_command(), "serve"],
            SSO_HTTP_PARSER="httptools",
        )
        body = profile_request("NO-SUCH-ERID")
        authorization = basic_auth()["Authorization"].encode()
        # One read carries a callback with its body and the start of a second request. Later
        # reads carry the rest of the second head, which must not be counted with the first
        # request's bytes or cut off.
        pipelined = (
            b"POST /rum/user-profile HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: " + authorization + b"\r\nContent-Type: text/xml\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            + b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 12_000
            + b"\r\nConnection: close\r\n\r\n"
        )
        try:
            service.wait_until_ready()
            response = httpx.post(
                f"{service.base_url}/rum/user-profile",
                content=body,
                headers={**basic_auth(), "Content-Type": "text/xml"},
                timeout=10,
            )
            both = self.send_raw(service.port, pipelined, piece=2048)
        finally:
            service.stop()

        assert response.status_code == 200
        assert b"User not found" in response.content
        assert both.startswith(b"HTTP/1.1 200 ")
        assert b"User not found" in both
        assert both.count(b"HTTP/1.1 200 ") == 2

    @pytest.mark.parametrize("parser", ["h11", "httptools"])
    def test_slow_or_silent_heads_cut_off(
        self, parser: str, fresh_database_url: URL, tmp_path: Path
    ) -> None:
        service = ServiceProcess(
            fresh_database_url,
            tmp_path / "serve.log",
            command=[*cli_command(), "serve"],
            SSO_HTTP_PARSER=parser,
            SSO_REQUEST_TIMEOUT_SECONDS="1",
        )
        request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        try:
            service.wait_until_ready()
            stalled, stalled_seconds = self.wait_for_close(
                service.port, [b"GET /healthz HTTP/1.1\r\nHost: 127"]
            )
            silent, silent_seconds = self.wait_for_close(service.port, [])
            # The second request's head starts its own clock after a first request was served.
            second, second_seconds = self.wait_for_close(
                service.port, [request, b"GET /healthz HTTP/1.1\r\n"]
            )
            # A head that arrives within the limit is served, even after a pause.
            paused = self.send_after_pause(service.port, request, pause=0.5)
        finally:
            service.stop()

        assert stalled.startswith(b"HTTP/1.1 408 ")
        assert b"x-content-type-options: nosniff\r\n" in stalled
        assert 1.0 <= stalled_seconds < 3.0
        assert silent == b""
        assert 1.0 <= silent_seconds < 3.0
        assert second.startswith(b"HTTP/1.1 200 ")
        assert second.count(b"HTTP/1.1 408 ") == 1
        assert 1.0 <= second_seconds < 3.0
        assert paused.startswith(b"HTTP/1.1 200 ")
        assert "http.head_timeout" in service.log_text()

    @staticmethod
    def wait_for_close(
        port: int, pieces: list[bytes], *, pause: float = 0.1
    ) -> tuple[bytes, float]:
        """Send `pieces`, `pause` seconds apart, and read until the server closes the connection.

        Returns the bytes received and the seconds from connecting to the close. Sending stops
        early if the server has already closed the connection.
        """
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            started = time.monotonic()
            for piece in pieces:
                try:
                    raw.sendall(piece)
                except (BrokenPipeError, ConnectionResetError):
                    break
                time.sleep(pause)
            received = b""
            while chunk := raw.recv(4096):
                received += chunk
            return received, time.monotonic() - started

    @staticmethod
    def send_after_pause(port: int, data: bytes, *, pause: float) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            time.sleep(pause)
            raw.sendall(data)
            return raw.recv(4096)

    @classmethod
    def send_raw(cls, port: int, data: bytes, *, piece: int) -> bytes:
        pieces = [data[offset : offset + piece] for offset in range(0, len(data), piece)]
        received, _ = cls.wait_for_close(port, pieces, pause=0.005)
        return received
