"""Per-request limits: header size, body size and NUL-free query parameters outside /rum, and a
time limit for every request.

Header size is bounded first by the HTTP server: under `sso-provider serve`, uvicorn's parser
closes the connection once it has buffered SSO_MAX_HEADER_BYTES of a head that is still
incomplete, with a 431 under either parser (`app.ops.http_protocol`). A head that arrives
whole in one read reaches the app, and `RequestLimitsMiddleware` rejects it with a 431, as it
does behind any other server. The callbacks are served ahead of this middleware, by
`app.rum.asgi`, which applies the same header and time limits through the functions here.

The time limit covers reading the body too, so a client that sends its body slowly gets a 408
and one whose request takes too long to serve gets a 503 with `Retry-After`. Errors under /rum
are XML, on every other path problem details.
"""

from __future__ import annotations

import logging
from typing import Any, Final
from urllib.parse import parse_qsl

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.ops.deadlines import time_limit
from app.paths import route_path
from app.problems import (
    PROBLEM_TYPES,
    FieldError,
    ProblemType,
    problem_response,
    problem_responses,
)
from app.rum import xml
from app.settings import Settings

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS: Final = "5"
_XML_MEDIA_TYPE: Final = "text/xml; charset=UTF-8"

for _problem in (
    ProblemType(
        type="/problems/request_timeout",
        code="request_timeout",
        title="Request timed out",
        status=503,
        description="The request was not served within SSO_REQUEST_TIMEOUT_SECONDS, usually "
        "because the database is slow. Retry after the `Retry-After` delay.",
    ),
    ProblemType(
        type="/problems/body_timeout",
        code="body_timeout",
        title="Request body timed out",
        status=408,
        description="The client did not finish sending the request body within "
        "SSO_REQUEST_TIMEOUT_SECONDS.",
    ),
    ProblemType(
        type="/problems/body_too_large",
        code="body_too_large",
        title="Request body too large",
        status=413,
        description="The request body is larger than SSO_MAX_API_BODY_BYTES.",
    ),
    ProblemType(
        type="/problems/headers_too_large",
        code="headers_too_large",
        title="Request headers too large",
        status=431,
        description="The request line and headers are larger than SSO_MAX_HEADER_BYTES.",
    ),
):
    PROBLEM_TYPES.setdefault(_problem.code, _problem)


# Streams that legitimately run as long as the store is large; the time limit would cut them.
UNTIMED_PATHS: Final = frozenset({"/admin/v1/exports"})


def is_callback_path(path: str) -> bool:
    return path == "/rum" or path.startswith("/rum/")


def header_size(scope: Scope) -> int:
    """Return the size of the request line and headers, counted as sent on the wire."""
    size = len(scope.get("method", "")) + len(scope.get("raw_path") or b"") + 12
    size += len(scope.get("query_string") or b"") + 1
    for name, value in scope.get("headers", ()):
        size += len(name) + len(value) + 4
    return size


def headers_too_large_message(limit: int) -> str:
    return (
        f"the request line and headers are larger than {limit} bytes: "
        "send fewer or shorter headers"
    )


def body_timeout_message(seconds: float) -> str:
    return f"the request body was not received within {seconds:g} seconds"


def request_timeout_message(seconds: float) -> str:
    return f"the request was not served within {seconds:g} seconds: retry later"


def log_timeout(path: str, seconds: float, waiting_for_body: bool) -> None:
    logger.warning(
        "request.timed_out path=%s after_seconds=%s waiting_for_body=%s",
        path, seconds, waiting_for_body,
    )


def _parameter_with_nul(scope: Scope) -> str | None:
    """Return the name of the first query parameter whose name or value contains NUL."""
    query = (scope.get("query_string") or b"").decode("latin-1")
    if "%00" not in query and "\x00" not in query:
        return None
    for name, value in parse_qsl(query, keep_blank_values=True, errors="replace"):
        if "\x00" in name or "\x00" in value:
            return name.replace("\x00", "") or "query"
    return None


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class RequestLimitsMiddleware:
    """Pure ASGI middleware enforcing the header, body and time limits."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.timeout = settings.request_timeout_seconds
        self.max_header_bytes = settings.max_header_bytes
        self.max_api_body_bytes = settings.max_api_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        callback = is_callback_path(path)

        if header_size(scope) > self.max_header_bytes:
            await self._reject(
                scope, send, 431, "headers_too_large",
                headers_too_large_message(self.max_header_bytes),
            )
            return
        parameter = None if callback else _parameter_with_nul(scope)
        if parameter is not None:
            # PostgreSQL text cannot hold NUL, so such a value would fail in the database.
            await self._reject(
                scope, send, 422, "validation_failed",
                f"{parameter}: contains a NUL character, which no text value may hold",
                field=parameter,
            )
            return
        declared = _declared_length(scope)
        body_limit = None if callback else self.max_api_body_bytes
        if body_limit is not None and declared is not None and declared > body_limit:
            await self._reject(
                scope, send, 413, "body_too_large",
                f"the request body is larger than {body_limit} bytes",
            )
            return

        response_started = False
        waiting_for_body = False
        body_rejected = False
        received = 0

        async def limited_receive() -> Message:
            nonlocal waiting_for_body, received, body_rejected
            waiting_for_body = True
            message = await receive()
            waiting_for_body = False
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if body_limit is not None and received > body_limit:
                    # Stops the endpoint, and the 413 below replaces its error response.
                    body_rejected = True
                    raise HTTPException(413, f"the request body is larger than {body_limit} bytes")
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal response_started
            if body_rejected:
                return
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            timeout = None if path in UNTIMED_PATHS else self.timeout
            async with time_limit(timeout) as deadline:
                await self.app(scope, limited_receive, tracked_send)
        except HTTPException:
            if not body_rejected:
                raise
        except TimeoutError:
            if not deadline.expired():
                raise
            log_timeout(path, self.timeout, waiting_for_body)
            if response_started:
                # Part of the response is already sent, so the server closes the connection.
                return
            if waiting_for_body:
                await self._reject(
                    scope, send, 408, "body_timeout", body_timeout_message(self.timeout),
                )
            else:
                await self._reject(
                    scope, send, 503, "request_timeout", request_timeout_message(self.timeout),
                    retry_after=True,
                )
            return
        if body_rejected:
            await self._reject(
                scope, send, 413, "body_too_large",
                f"the request body is larger than {body_limit} bytes",
            )

    async def _reject(
        self,
        scope: Scope,
        send: Send,
        status: int,
        code: str,
        message: str,
        *,
        retry_after: bool = False,
        field: str | None = None,
    ) -> None:
        headers = {"Retry-After": RETRY_AFTER_SECONDS} if retry_after else {}
        if status in (408, 413, 431):
            headers["Connection"] = "close"
        request = Request(scope)
        response: Response
        if is_callback_path(route_path(scope)):
            response = Response(
                xml.render_error(code, message), status, headers, media_type=_XML_MEDIA_TYPE
            )
        else:
            errors = (
                [FieldError(field=field, location="query", message=message, code="nul_character")]
                if field is not None
                else []
            )
            response = problem_response(
                request, status=status, code=code, detail=message, field=field, errors=errors,
                headers=headers,
            )
        await response(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


# Answers any JSON endpoint can give because of the limits here, or because FastAPI could not
# decode the body, documented on every operation outside /rum.
_LIMIT_RESPONSES: Final = {
    431: ("The request line and headers are larger than SSO_MAX_HEADER_BYTES "
          "(`headers_too_large`).", False),
    400: ("The body could not be decoded as UTF-8 JSON (`bad_request`).", True),
    408: ("The body did not arrive within SSO_REQUEST_TIMEOUT_SECONDS (`body_timeout`).", True),
    413: ("The body is larger than SSO_MAX_API_BODY_BYTES (`body_too_large`).", True),
}


def document_limit_responses(app: FastAPI) -> None:
    """Add the answers caused by request limits to every operation of the app's OpenAPI schema.

    Only statuses an operation does not document already are added; body-related ones only
    to operations that take a body.
    """
    build_schema = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build_schema()
        for path, item in schema.get("paths", {}).items():
            if is_callback_path(path):
                continue
            for operation in item.values():
                if not isinstance(operation, dict) or "responses" not in operation:
                    continue
                takes_body = "requestBody" in operation
                for status, (description, needs_body) in _LIMIT_RESPONSES.items():
                    if needs_body and not takes_body:
                        continue
                    documented = dict(problem_responses(status)[status])
                    documented["description"] = description
                    operation["responses"].setdefault(str(status), documented)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
