"""The time limit on a request head's arrival, in uvicorn with each bounded protocol.

A uvicorn server runs in a thread on loopback with a minimal ASGI app, so that a request can
take longer than the limit. `tests/test_request_limits.py` checks the same limit through
`sso-provider serve`.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from app.ops import http_protocol
from tests.conftest import make_settings

LIMIT_SECONDS = 1.0
REQUEST_ID_HEADER = re.compile(rb"\r\nx-request-id: [0-9a-f]{32}\r\n")
SLOW_SECONDS = 1.6


async def slow_or_fast(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        await asyncio.sleep(SLOW_SECONDS)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


@pytest.fixture(
    params=[http_protocol.BoundedHttpToolsProtocol, http_protocol.BoundedH11Protocol],
    ids=["httptools", "h11"],
)
def port(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    settings = make_settings(request_timeout_seconds=LIMIT_SECONDS)
    monkeypatch.setattr(http_protocol, "get_settings", lambda: settings)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = int(probe.getsockname()[1])
    config = uvicorn.Config(
        slow_or_fast,
        host="127.0.0.1",
        port=free,
        http=request.param,
        log_level="error",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield free
    finally:
        server.should_exit = True
        thread.join(10)


def read_until_closed(connection: socket.socket, seconds: float) -> tuple[bytes, float | None]:
    """Read for up to `seconds`; return the bytes and when the server closed, or None."""
    started = time.monotonic()
    connection.settimeout(0.05)
    received = b""
    while time.monotonic() - started < seconds:
        try:
            chunk = connection.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            return received, time.monotonic() - started
        received += chunk
    return received, None


def test_line_breaks_between_requests_cut_off(port: int) -> None:
    # llhttp skips line breaks between messages without starting one.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(get("/"))
        time.sleep(0.1)
        started = time.monotonic()
        closed_at = None
        while time.monotonic() - started < 5:
            try:
                connection.sendall(b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                closed_at = time.monotonic() - started
                break
            time.sleep(0.2)
        received, _ = read_until_closed(connection, 1)

    assert received.startswith(b"HTTP/1.1 200 ")
    assert closed_at is not None
    assert closed_at < LIMIT_SECONDS + 1.5


def test_head_behind_slow_request_waits(port: int) -> None:
    # uvicorn stops reading while the slow response is due, so the rest of the third head
    # stays unread for longer than the limit, and must not count against it.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(get("/slow") + get("/") + b"GET / HT")
        time.sleep(0.05)
        connection.sendall(b"TP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        received, closed_after = read_until_closed(connection, SLOW_SECONDS + 3)

    assert received.count(b"HTTP/1.1 200 ") == 3
    assert closed_after is not None


def test_partial_head_gets_408(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(b"GET / HTTP/1.1\r\nHost: 12")
        received, closed_after = read_until_closed(connection, LIMIT_SECONDS + 3)

    assert received.startswith(b"HTTP/1.1 408 ")
    assert b"x-content-type-options: nosniff\r\n" in received
    assert b"connection: close\r\n" in received
    assert REQUEST_ID_HEADER.search(received)
    assert b"\r\ndate: " in received
    assert closed_after is not None
    assert closed_after >= LIMIT_SECONDS


def test_silent_connection_closed(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        received, closed_after = read_until_closed(connection, LIMIT_SECONDS + 3)

    assert received == b""
    assert closed_after is not None


def test_invalid_request_gets_400_with_headers(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(b"GET / HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n")
        received, closed_after = read_until_closed(connection, 3)

    assert received.startswith(b"HTTP/1.1 400 ")
    assert b"x-content-type-options: nosniff\r\n" in received
    assert b"cache-control: no-store\r\n" in received
    assert b"connection: close\r\n" in received
    assert REQUEST_ID_HEADER.search(received)
    assert b"\r\ndate: " in received
    assert closed_after is not None


def test_head_after_unread_body_cut_off(port: int) -> None:
    # The app responds before the body arrives, and the read that ends the body begins the
    # next head, which then stalls.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\n\r\n")
        time.sleep(0.2)
        connection.sendall(b"bodyGET / HTTP/1.1\r\nHost: 12")
        received, closed_after = read_until_closed(connection, LIMIT_SECONDS + 3)

    assert received.startswith(b"HTTP/1.1 200 ")
    assert received.count(b"HTTP/1.1 408 ") == 1
    assert closed_after is not None
