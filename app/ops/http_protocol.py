"""uvicorn's httptools protocol with a bound on a request head that is still arriving.

httptools (llhttp, in C) parses requests with far less CPU than h11. But uvicorn (0.55) buffers
the URL and headers that httptools reports without any limit, so a client that trickles an
endless header line grows the worker's memory until the connection drops. This protocol counts
the bytes read while a head is open, and once they pass the limit it sends 431 and closes the
connection. The app still checks a head that arrives whole, and sends its own 431 in the API's
or the callbacks' error format.
"""

from __future__ import annotations

import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.security.headers import API_RESPONSE_HEADERS

logger = logging.getLogger(__name__)

# The limit when uvicorn's config sets none, as SSO_MAX_HEADER_BYTES's default.
DEFAULT_MAX_HEAD_BYTES = 16_384
# Import path for `uvicorn.run(http=...)`: a path, unlike the class, reaches spawned workers.
PROTOCOL_PATH = f"{__name__}:BoundedHttpToolsProtocol"

_MESSAGE = b"the request line and headers are too large: send fewer or shorter headers"
# With the security headers that the app's own responses carry.
_RESPONSE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: " + str(len(_MESSAGE)).encode("ascii") + b"\r\n"
    + b"".join(name + b": " + value + b"\r\n" for name, value in API_RESPONSE_HEADERS)
    + b"connection: close\r\n"
    b"\r\n" + _MESSAGE
)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
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
        configured = self.config.h11_max_incomplete_event_size
        self.max_head_bytes: int = configured or DEFAULT_MAX_HEAD_BYTES
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
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._progress = True
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
        client = self.client[0] if self.client else None
        logger.warning(
            "http.head_too_large limit=%s client=%s", self.max_head_bytes, client
        )
        cycle = self.cycle
        if self._head_open:
            # An earlier request on this connection may still be running, and a 431 now would
            # reach the client as that request's response.
            may_respond = cycle is None or cycle.response_complete
        else:
            may_respond = cycle is not None and not cycle.response_started
        if may_respond:
            self.transport.write(_RESPONSE)
        self.transport.close()
