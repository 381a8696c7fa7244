"""Hostile request bodies sent to the callback endpoint over HTTP.

Every case must get a clear response within a second, and none may open a file or a network
connection while it is served. A process-wide audit hook (`sys.addaudithook`) records `open`,
`socket.connect` and name-lookup events, but only while a request of this module is in flight,
and a real TCP listener on 127.0.0.1 is the target of the network entities, so a fetch would
show up both as an audit event and as an accepted connection.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from app.settings import Settings
from tests.conftest import make_settings
from tests.rum_messages import basic_auth, child_text, login_request, parse

RAISED_BODY_LIMIT = 2 * 1024 * 1024
MEGABYTE = 1024 * 1024

# Audit events that mean a file or the network was touched.
_WATCHED_EVENTS = frozenset(
    {"open", "socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "urllib.Request"}
)
# Module files that a first import may open: code, not data named by a request.
_CODE_SUFFIXES = (".py", ".pyc", ".so")


class _AuditRecorder:
    """Collects watched audit events between `start` and `stop`; idle otherwise."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[Any, ...]]] | None = None

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        events = self.events
        if events is None or event not in _WATCHED_EVENTS:
            return
        if event == "open" and isinstance(args[0], str) and args[0].endswith(_CODE_SUFFIXES):
            return
        events.append((event, args))

    def start(self) -> None:
        self.events = []

    def stop(self) -> list[tuple[str, tuple[Any, ...]]]:
        events, self.events = self.events or [], None
        return events


# Audit hooks cannot be removed, so one idle recorder is installed for the whole run.
RECORDER = _AuditRecorder()
sys.addaudithook(RECORDER)


class Listener:
    """A TCP server on 127.0.0.1 that counts the connections it accepts."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.socket.settimeout(0.05)
        self.port = self.socket.getsockname()[1]
        self.connections = 0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                connection, _ = self.socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            connection.close()

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)
        self.socket.close()


@pytest.fixture(scope="module")
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


@dataclass(frozen=True)
class Answer:
    response: httpx.Response
    seconds: float
    events: list[tuple[str, tuple[Any, ...]]]


async def send(client: httpx.AsyncClient, body: bytes | AsyncIterator[bytes]) -> Answer:
    headers = basic_auth()
    RECORDER.start()
    started = time.monotonic()
    try:
        response = await client.post("/rum/login", content=body, headers=headers)
    finally:
        seconds = time.monotonic() - started
        events = RECORDER.stop()
    return Answer(response, seconds, events)


def error_code(response: httpx.Response) -> str | None:
    return child_text(parse(response.content), "code")


def login_document(inner_doctype: str = "", *, password: str = "guess") -> bytes:  # noqa: S107
    """A RemoteLogin body with `inner_doctype` between the XML declaration and the root."""
    body = login_request("victim@example.com", password).decode()
    declaration_end = body.index("?>") + 2
    return (body[:declaration_end] + inner_doctype + body[declaration_end:]).encode()


def billion_laughs() -> bytes:
    entities = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{level} "{f"&lol{level - 1};" * 10}">' for level in range(1, 10)
    ]
    return login_document(f"<!DOCTYPE LoginRequest [{''.join(entities)}]>", password="&lol9;")


def quadratic_blowup() -> bytes:
    doctype = f'<!DOCTYPE LoginRequest [<!ENTITY a "{"x" * 20_000}">]>'
    return login_document(doctype, password="&a;" * 10_000)


def external_file_entity() -> bytes:
    doctype = '<!DOCTYPE LoginRequest [<!ENTITY secret SYSTEM "file:///etc/passwd">]>'
    return login_document(doctype, password="&secret;")


def external_network_entity(port: int) -> bytes:
    doctype = f'<!DOCTYPE LoginRequest [<!ENTITY remote SYSTEM "http://127.0.0.1:{port}/x">]>'
    return login_document(doctype, password="&remote;")


def parameter_entity(port: int) -> bytes:
    doctype = (
        f'<!DOCTYPE LoginRequest [<!ENTITY % remote SYSTEM "http://127.0.0.1:{port}/evil.dtd">'
        "%remote;]>"
    )
    return login_document(doctype)


def external_dtd(port: int) -> bytes:
    return login_document(f'<!DOCTYPE LoginRequest SYSTEM "http://127.0.0.1:{port}/x.dtd">')


def dtd_only() -> bytes:
    return b'<?xml version="1.0"?><!DOCTYPE LoginRequest [<!ELEMENT LoginRequest ANY>]>'


def deep_nesting(levels: int) -> bytes:
    body = login_request("victim@example.com", "guess").decode()
    root_end = body.index(">", body.index("<ns1:LoginRequest")) + 1
    nested = "<a>" * levels + "</a>" * levels
    return (body[:root_end] + nested + body[root_end:]).encode()


def many_elements(count: int) -> bytes:
    body = login_request("victim@example.com", "guess").decode()
    root_end = body.index(">", body.index("<ns1:LoginRequest")) + 1
    return (body[:root_end] + "<a/>" * count + body[root_end:]).encode()


def utf16(declared: str | None, *, bom: bool) -> bytes:
    text = login_request("émile@example.com", "pässword1").decode()
    if declared is None:
        text = text.replace(' encoding="UTF-8"', "")
    else:
        text = text.replace('encoding="UTF-8"', f'encoding="{declared}"')
    return (b"\xff\xfe" if bom else b"") + text.encode("utf-16-le")


BASE = login_request("émile@example.com", "pässword1")

# (case id, body builder taking the listener port, expected status, expected error code)
CORPUS: list[tuple[str, Any, int, str | None]] = [
    ("billion_laughs", lambda port: billion_laughs(), 400, "dtd_forbidden"),
    ("quadratic_blowup", lambda port: quadratic_blowup(), 400, "dtd_forbidden"),
    ("external_entity_file", lambda port: external_file_entity(), 400, "dtd_forbidden"),
    ("external_entity_network", external_network_entity, 400, "dtd_forbidden"),
    ("parameter_entity", parameter_entity, 400, "dtd_forbidden"),
    ("external_dtd", external_dtd, 400, "dtd_forbidden"),
    ("dtd_only_document", lambda port: dtd_only(), 400, "dtd_forbidden"),
    ("text_node_1mb", lambda port: login_document(password="x" * MEGABYTE), 400, "text_too_long"),
    ("nesting_10000_deep", lambda port: deep_nesting(10_000), 400, "too_deep"),
    ("elements_100000", lambda port: many_elements(100_000), 400, "too_many_elements"),
    ("invalid_utf8", lambda port: BASE.replace(b"\xc3\xa4", b"\xc3\x28"), 400, "invalid_encoding"),
    ("utf8_declared_latin1_bytes", lambda port: BASE.decode().encode("latin-1"), 400,
     "invalid_encoding"),
    ("latin1_declared_utf8_bytes",
     lambda port: BASE.replace(b'encoding="UTF-8"', b'encoding="ISO-8859-1"'), 400,
     "encoding_mismatch"),
    ("utf16_declared_for_utf8_bytes",
     lambda port: BASE.replace(b'encoding="UTF-8"', b'encoding="UTF-16"'), 400,
     "encoding_mismatch"),
    ("utf16_bom_declared_utf8", lambda port: utf16("UTF-8", bom=True), 400, "encoding_mismatch"),
    ("utf16_no_bom_undeclared", lambda port: utf16(None, bom=False), 400, "invalid_encoding"),
    ("nul_byte", lambda port: BASE.replace(b"p\xc3\xa4ss", b"p\x00ss"), 400, "malformed"),
    ("declaration_after_whitespace", lambda port: b" \n" + BASE, 400, "malformed"),
    # Well-formed UTF-16 is valid XML: it is read, and the unknown login fails as usual.
    ("utf16_with_bom", lambda port: utf16("UTF-16", bom=True), 200, None),
    ("utf16_without_bom_declared", lambda port: utf16("UTF-16", bom=False), 200, None),
    ("utf16_with_bom_undeclared", lambda port: utf16(None, bom=True), 200, None),
]


class TestCorpus:
    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(max_body_bytes=RAISED_BODY_LIMIT)

    @pytest.fixture(autouse=True)
    async def _warm_up(self, client: httpx.AsyncClient) -> None:
        # The first request imports modules lazily; later requests must not open anything.
        await client.post("/rum/login", content=BASE, headers=basic_auth())

    @pytest.mark.parametrize(
        ("build", "status", "code"),
        [case[1:] for case in CORPUS],
        ids=[case[0] for case in CORPUS],
    )
    async def test_case_answered_safely(
        self, client: httpx.AsyncClient, listener: Listener, build: Any, status: int,
        code: str | None,
    ) -> None:
        connections_before = listener.connections

        answer = await send(client, build(listener.port))
        await asyncio.sleep(0.1)  # let a connection attempt, if any, reach the listener

        assert answer.response.status_code == status, answer.response.text[:300]
        assert answer.response.headers["content-type"].startswith("text/xml")
        if code is None:
            assert child_text(parse(answer.response.content), "successful") == "false"
        else:
            assert error_code(answer.response) == code
        assert answer.seconds < 1.0
        assert answer.events == []
        assert listener.connections == connections_before

    def test_recorder_sees_file_open(self) -> None:
        RECORDER.start()
        with open("/etc/hostname", "rb") as handle:
            handle.read(1)
        events = RECORDER.stop()

        assert ("open", "/etc/hostname") in [(name, args[0]) for name, args in events]

    def test_listener_and_recorder_see_connect(self, listener: Listener) -> None:
        before = listener.connections

        RECORDER.start()
        with socket.create_connection(("127.0.0.1", listener.port), timeout=2):
            pass
        events = RECORDER.stop()
        time.sleep(0.2)

        assert listener.connections == before + 1
        assert "socket.connect" in [name for name, _ in events]


class TestDefaultBodyLimit:
    async def test_one_megabyte_text_node_413(self, client: httpx.AsyncClient) -> None:
        answer = await send(client, login_document(password="x" * MEGABYTE))

        assert answer.response.status_code == 413
        assert error_code(answer.response) == "body_too_large"
        assert answer.seconds < 1.0
        assert answer.events == []

    async def test_unannounced_length_413(self, client: httpx.AsyncClient) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(16):
                yield b" " * (64 * 1024)

        answer = await send(client, chunks())

        assert answer.response.status_code == 413
        assert error_code(answer.response) == "body_too_large"


async def peak_bytes(client: httpx.AsyncClient, chunks: list[bytes]) -> int:
    """Return the peak of memory allocated while the service reads and rejects `chunks`.

    The body travels as a stream of pre-built chunks, so the client's buffer is outside the
    measurement and only what the service allocates counts.
    """

    async def stream() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    tracemalloc.start()
    try:
        response = await client.post("/rum/login", content=stream(), headers=basic_auth())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert 400 <= response.status_code < 500, response.text[:300]
    return peak


def split(body: bytes, size: int = 16 * 1024) -> list[bytes]:
    return [body[offset : offset + size] for offset in range(0, len(body), size)]


class TestMemoryDefaultLimits:
    async def test_large_attack_costs_no_more_than_small(self, client: httpx.AsyncClient) -> None:
        await peak_bytes(client, split(many_elements(2_500)))
        small = await peak_bytes(client, split(many_elements(2_500)))

        large = await peak_bytes(client, split(many_elements(250_000)))

        # The large body stops at the 64 KiB body limit; generous bound for allocator noise.
        assert large < small + 512 * 1024


class TestMemoryRaisedLimits:
    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(max_body_bytes=RAISED_BODY_LIMIT)

    @pytest.mark.parametrize(
        "attack",
        [
            lambda size: many_elements(size // 4),
            lambda size: deep_nesting(size // 7),
            lambda size: login_document(password="x" * size),
        ],
        ids=["elements", "nesting", "text"],
    )
    async def test_parsing_stops_at_limits(self, client: httpx.AsyncClient, attack: Any) -> None:
        await peak_bytes(client, split(attack(20 * 1024)))
        small = await peak_bytes(client, split(attack(20 * 1024)))

        large = await peak_bytes(client, split(attack(MEGABYTE)))

        # The body itself is held once (1 MiB, plus its UTF-8 check); a parsed tree of the whole
        # attack would need tens of megabytes.
        assert large < small + 4 * MEGABYTE
