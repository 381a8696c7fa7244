"""uvicorn's HTTP protocols with bounds on a request head that is still arriving.

httptools (llhttp, in C) parses requests with far less CPU than h11. But uvicorn (0.55) buffers
the URL and headers that httptools reports without any limit, so a client that trickles an
endless header line grows the worker's memory until the connection drops. The httptools
protocol here counts the bytes read while a head is open, and once they pass the limit it sends
431 and closes the connection. h11 has that bound of its own, and its protocol here answers
with 431 too. The app still checks a head that arrives whole, and sends its own 431 in the
API's or the callbacks' error format.

uvicorn also waits without limit for a head to arrive, and for the first byte of a new
connection, under either parser. So a client that sends a byte now and then keeps a connection
and its buffers for good. Both protocols here give the head SSO_REQUEST_TIMEOUT_SECONDS from the
connection's start or from the first byte after the previous request, line breaks included.
One timer per server checks the open heads, so a head is cut off up to a tenth of the limit
late, at most one second.

The responses that the protocols send themselves (400 for a request that is not valid HTTP,
408, 431) carry the security headers of the app's responses.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Iterable
from typing import Any, Final

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.ops.logging import new_request_id
from app.security.headers import API_RESPONSE_HEADERS
from app.settings import get_settings

logger = logging.getLogger(__name__)

# The limit when uvicorn's config sets none, as SSO_MAX_HEADER_BYTES's default.
DEFAULT_MAX_HEAD_BYTES = 16_384
# Import paths for `uvicorn.run(http=...)`: a path, unlike a class, reaches spawned workers.
PROTOCOL_PATHS: Final = {
    "httptools": f"{__name__}:BoundedHttpToolsProtocol",
    "h11": f"{__name__}:BoundedH11Protocol",
}

_MAX_TICK_SECONDS: Final = 1.0
_MIN_TICK_SECONDS: Final = 0.01


def _closing_response(
    status_line: bytes, message: bytes, headers: Iterable[tuple[bytes, bytes]] = ()
) -> bytes:
    """Return a plain-text response that closes the connection, with `headers` and the security
    headers that the app's own responses carry."""
    return (
        b"HTTP/1.1 " + status_line + b"\r\n"
        + b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        + b"content-type: text/plain; charset=utf-8\r\n"
        b"content-length: " + str(len(message)).encode("ascii") + b"\r\n"
        + b"".join(name + b": " + value + b"\r\n" for name, value in API_RESPONSE_HEADERS)
        + b"connection: close\r\n"
        b"\r\n" + message
    )


# The status line and text of each response that the protocols send themselves.
_HEAD_TOO_LARGE: Final = (
    b"431 Request Header Fields Too Large",
    b"the request line and headers are too large: send fewer or shorter headers",
)
_HEAD_TIMEOUT: Final = (
    b"408 Request Timeout",
    b"the request line and headers did not arrive within the time limit: send the complete head "
    b"without long pauses",
)
_BAD_REQUEST: Final = (
    b"400 Bad Request", b"the request is not valid HTTP/1.1: check the request line and headers"
)


class WarningBudget:
    """At most `count` warnings per `period_seconds`, so that a flood of bad connections cannot
    flood the log. The first warning of a new period gives the number left out before it."""

    __slots__ = ("_count", "_left_out", "_period", "_window_start", "_written")

    def __init__(self, count: int, period_seconds: float) -> None:
        self._count = count
        self._period = period_seconds
        self._window_start = float("-inf")
        self._written = 0
        self._left_out = 0

    def take(self, now: float) -> int | None:
        """Return the number of warnings left out before this one, or None to leave it out."""
        if now - self._window_start >= self._period:
            self._window_start = now
            self._written = 0
        if self._written >= self._count:
            self._left_out += 1
            return None
        self._written += 1
        left_out, self._left_out = self._left_out, 0
        return left_out


# Warnings about heads cut off for their size or time, in each worker.
_head_warnings = WarningBudget(count=20, period_seconds=60.0)


class _HeadTimeLimit:
    """The bounds on a request head's size and arrival time, for a uvicorn protocol.

    It comes before uvicorn's protocol class in the bases. The protocol starts `_head_started`
    when a head's clock starts and clears it when the head is complete, and `_head_partial`
    returns whether any bytes of a head have arrived.
    """

    # Set by uvicorn's protocol classes.
    config: Any
    connections: set[Any]
    server_state: Any
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    client: tuple[str, int] | None
    cycle: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        configured = self.config.h11_max_incomplete_event_size
        self.max_head_bytes: int = configured or DEFAULT_MAX_HEAD_BYTES
        self.head_timeout_seconds: float = get_settings().request_timeout_seconds
        # Loop time at which the awaited head's clock started; None while no head is awaited.
        self._head_started: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._head_started = self.loop.time()
        _HeadTimer.watch(self)

    def _head_partial(self) -> bool:
        raise NotImplementedError

    def _warn_head_too_large(self, request_id: str) -> None:
        left_out = _head_warnings.take(time.monotonic())
        if left_out is not None:
            logger.warning(
                "http.head_too_large limit=%s client=%s request_id=%s warnings_left_out=%s",
                self.max_head_bytes, self.client[0] if self.client else None, request_id,
                left_out,
            )

    def _respond_and_close(self, response: tuple[bytes, bytes], request_id: str) -> None:
        """Send one of the protocol's own responses, with the Date header that uvicorn adds to
        every response and `request_id` as X-Request-ID, then close the connection."""
        headers = [*self.server_state.default_headers, (b"x-request-id", request_id.encode())]
        self.transport.write(_closing_response(*response, headers))
        self.transport.close()

    def check_head_time(self, now: float) -> None:
        """Close the connection if the head it awaits has taken longer than the limit.

        While an earlier request's response is still due, that request's own time limit
        applies, and the head waits.
        """
        started = self._head_started
        if started is None or now - started <= self.head_timeout_seconds:
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            return
        self._head_started = None
        if self.transport.is_closing():
            return
        partial = self._head_partial()
        request_id = new_request_id()
        client = self.client[0] if self.client else None
        left_out = _head_warnings.take(time.monotonic())
        if left_out is not None:
            logger.warning(
                "http.head_timeout limit_seconds=%s client=%s partial_head=%s request_id=%s "
                "warnings_left_out=%s",
                self.head_timeout_seconds, client, partial, request_id, left_out,
            )
        # A connection that sent nothing, or only line breaks, is closed without a response.
        if partial:
            self._respond_and_close(_HEAD_TIMEOUT, request_id)
        else:
            self.transport.close()


class BoundedHttpToolsProtocol(_HeadTimeLimit, HttpToolsProtocol):
    """`HttpToolsProtocol` that closes a connection whose open request head passes a limit.

    The limit is uvicorn's `h11_max_incomplete_event_size`, which `sso-provider serve` sets to
    SSO_MAX_HEADER_BYTES for either parser. It also applies to the bytes of a message that
    bring no body: the trailer after a chunked body, and long chunk headers. httptools buffers
    those too. The count is of whole reads, and a read that delivers body bytes or completes
    the head starts it again. So when a head begins in the middle of a read that also carried
    an earlier request's bytes, counting starts with the next read, and the memory held stays
    below the limit plus one read.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_open = False
        self._between_messages = True
        self._heads_begun = 0
        self._progress = False
        self._open_bytes = 0

    def on_message_begin(self) -> None:
        self._head_open = True
        self._between_messages = False
        self._heads_begun += 1
        self._open_bytes = 0
        if self._head_started is None:
            self._head_started = self.loop.time()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._progress = True
        self._head_started = None
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._progress = True
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._between_messages = True
        super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        begun = self._heads_begun
        idle = self._between_messages
        if idle and self._head_started is None:
            # Bytes between messages start the next head's clock, even if llhttp skips them
            # (CRLF) without beginning a message.
            self._head_started = self.loop.time()
        self._progress = False
        super().data_received(data)
        if self._between_messages or self.transport.is_closing():
            return
        if self._heads_begun == begun and not self._progress:
            # The message was already open and this read brought no body: head, trailer or
            # chunk framing only.
            self._open_bytes += len(data)
        elif idle and self._heads_begun == begun + 1 and not self._progress:
            # The head began with this read, so every byte of it belongs to the head.
            self._open_bytes = len(data)
        else:
            self._open_bytes = 0
        if self._open_bytes > self.max_head_bytes:
            self._reject()

    def _reject(self) -> None:
        request_id = new_request_id()
        self._warn_head_too_large(request_id)
        cycle = self.cycle
        if self._head_open:
            # An earlier request on this connection may still be running, and a 431 now would
            # reach the client as that request's response.
            may_respond = cycle is None or cycle.response_complete
        else:
            may_respond = cycle is not None and not cycle.response_started
        if may_respond:
            self._respond_and_close(_HEAD_TOO_LARGE, request_id)
        else:
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        self._respond_and_close(_BAD_REQUEST, new_request_id())

    def on_response_complete(self) -> None:
        if self._head_started is not None:
            # A head that arrived while a response was due gets the whole limit from now, as
            # uvicorn stops reading a connection while a response is due.
            self._head_started = self.loop.time()
        super().on_response_complete()

    def _head_partial(self) -> bool:
        return self._head_open


class BoundedH11Protocol(_HeadTimeLimit, H11Protocol):
    """`H11Protocol` with the head time limit, and 431 for a head that passes h11's bound.

    h11 keeps the bytes of a head that is not complete in its receive buffer and raises an
    error once they pass `h11_max_incomplete_event_size`. uvicorn responds to that error, like any
    request that is not valid HTTP, with 400. This protocol sends 431 when the buffer has passed
    the bound. A head is awaited while h11's state for the client is IDLE.
    """

    def data_received(self, data: bytes) -> None:
        if self._head_started is None and self.conn.their_state is h11.IDLE:
            self._head_started = self.loop.time()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._head_started = None
        elif self._head_started is None and self.conn.trailing_data[0]:
            # The read ended a request whose response was already sent, and began the next head.
            self._head_started = self.loop.time()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # uvicorn has started the next cycle and parsed any pipelined bytes. A head that is
        # still incomplete gets the whole limit from now, as uvicorn stops reading a
        # connection while a response is due.
        awaiting = self.conn.their_state is h11.IDLE
        buffered = bool(self.conn.trailing_data[0])
        self._head_started = self.loop.time() if awaiting and buffered else None

    def send_400_response(self, msg: str) -> None:
        request_id = new_request_id()
        if len(self.conn.trailing_data[0]) <= self.max_head_bytes:
            self._respond_and_close(_BAD_REQUEST, request_id)
            return
        self._warn_head_too_large(request_id)
        self._respond_and_close(_HEAD_TOO_LARGE, request_id)

    def _head_partial(self) -> bool:
        # Unlike llhttp, h11 rejects line breaks before a request line (with the 400 above), so
        # any byte in its buffer belongs to a head.
        return bool(self.conn.trailing_data[0])


class _HeadTimer:
    """Checks the open heads of one server's connections, every tick while any are open.

    Keyed by the server's set of connections, which uvicorn shares among its protocols, so
    one timer serves them all. It keeps only a weak reference to its loop.
    """

    __slots__ = ("_connections", "_handle", "_loop", "_tick")

    def __init__(self, protocol: _HeadTimeLimit) -> None:
        self._connections = protocol.connections
        self._loop = weakref.ref(protocol.loop)
        tenth = protocol.head_timeout_seconds / 10
        self._tick = max(min(tenth, _MAX_TICK_SECONDS), _MIN_TICK_SECONDS)
        self._handle: asyncio.TimerHandle | None = None

    @classmethod
    def watch(cls, protocol: _HeadTimeLimit) -> None:
        """Make sure the timer of `protocol`'s server is running."""
        timers = _head_timers.setdefault(protocol.loop, {})
        timer = timers.get(id(protocol.connections))
        if timer is None or timer._connections is not protocol.connections:
            timer = cls(protocol)
            timers[id(protocol.connections)] = timer
        if timer._handle is None:
            timer._schedule()

    def _schedule(self) -> None:
        loop = self._loop()
        if loop is not None and not loop.is_closed():
            self._handle = loop.call_later(self._tick, self._check)

    def _check(self) -> None:
        self._handle = None
        loop = self._loop()
        if loop is None:
            return
        now = loop.time()
        for protocol in tuple(self._connections):
            if isinstance(protocol, _HeadTimeLimit):
                protocol.check_head_time(now)
        if self._connections:
            self._schedule()


# The head timers of each event loop, by the identity of their server's set of connections.
_head_timers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, _HeadTimer]] = (
    weakref.WeakKeyDictionary()
)
