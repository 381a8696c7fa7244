"""The ASGI layer that serves Digital River's callbacks ahead of the framework.

A POST to one of the exact callback paths is served here, outside FastAPI's and Starlette's
middleware, routing and error handling, where each layer wraps `send` once more or builds its
own request object. Serving the callbacks here raised the profile fetch rate from about 1,900
to 2,400 per second in `bench/run.sh --workers 1`. This layer gives a callback everything those
layers give it, through the same functions. The request id, the access line and the metrics
come from `app.ops.logging`, the source address from `app.security.proxy`, and the header size
limit and the time limit from `app.security.limits`. The security headers come from
`app.security.headers`, and the response to an unexpected error from `app.problems`. Every
other request goes to the app unchanged, and the OpenAPI document still describes the callback
routes.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.ops.deadlines import time_limit
from app.ops.logging import begin_request, end_request
from app.paths import route_path
from app.problems import unexpected_error
from app.rum.routes import ACCEPTED_MESSAGES, RETRY_AFTER_SECONDS, serve_callback, xml_error
from app.security.headers import API_RESPONSE_HEADERS
from app.security.limits import (
    body_timeout_message,
    header_size,
    headers_too_large_message,
    log_timeout,
    request_timeout_message,
)
from app.security.proxy import SourceAddressResolver
from app.settings import Settings


class CallbackServer:
    """Pure ASGI middleware that serves the callback routes, outermost in the app."""

    def __init__(
        self, app: ASGIApp, fastapi_app: FastAPI, settings: Settings, routes: list[Any]
    ) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        # The path of each POST route with the messages it accepts. The route itself is what
        # the framework's router would have matched, which labels the request's metrics.
        self.routes = {
            route.path: (route, ACCEPTED_MESSAGES[route.path])
            for route in routes
            if isinstance(route, APIRoute) and "POST" in (route.methods or ())
        }
        self.source_address = SourceAddressResolver(settings)
        self.timeout = settings.request_timeout_seconds
        self.max_header_bytes = settings.max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        served = self.routes.get(route_path(scope)) if scope["type"] == "http" else None
        if served is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        route, accepted = served
        request_id_header = begin_request(scope)
        started = time.perf_counter()
        status = 500
        error: str | None = None
        try:
            # What the framework's layers would have set: the endpoint reads the app's state
            # through `request.app`, and the metrics label the request with the route's path.
            scope["app"] = self.fastapi_app
            scope["route"] = route
            scope["state"]["source_address"] = self.source_address(scope)
            status, error = await self._serve(scope, receive, send, accepted, request_id_header)
        except Exception as exc:
            # Sending failed, for example; the server logs it, and the access line names it.
            error = type(exc).__name__
            raise
        finally:
            end_request(scope, status, started, error)

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        accepted: tuple[type[Any], ...] | None,
        request_id_header: tuple[bytes, bytes],
    ) -> tuple[int, str | None]:
        """Respond to one callback within the time limit; return the status and any error class."""
        error: str | None = None
        sent_status: int | None = None
        waiting_for_body = False

        async def timed_receive() -> Message:
            nonlocal waiting_for_body
            waiting_for_body = True
            message = await receive()
            # Left set when the time limit cancels the wait, which the 408 below reports.
            waiting_for_body = False
            return message

        async def respond(response: Response) -> None:
            nonlocal sent_status
            sent_status = response.status_code
            headers = [*response.raw_headers, *API_RESPONSE_HEADERS, request_id_header]
            await send(
                {"type": "http.response.start", "status": response.status_code, "headers": headers}
            )
            await send({"type": "http.response.body", "body": response.body})

        if header_size(scope) > self.max_header_bytes:
            response = xml_error(
                431, "headers_too_large", headers_too_large_message(self.max_header_bytes),
                {"Connection": "close"},
            )
            await respond(response)
            return response.status_code, None
        try:
            async with time_limit(self.timeout) as deadline:
                request = Request(scope, timed_receive, send)
                try:
                    response = await serve_callback(request, accepted)
                except Exception as exc:
                    response = await unexpected_error(request, exc)
                    if response.status_code == 500:
                        # As with the framework's error middleware, a bug gets its class on the
                        # access line. An outage that gets a 503 does not.
                        error = type(exc).__name__
                await respond(response)
                return response.status_code, error
        except TimeoutError:
            if not deadline.expired():
                raise
            log_timeout(route_path(scope), self.timeout, waiting_for_body)
            if sent_status is not None:
                # Part of the response is already sent, so the server closes the connection.
                return sent_status, None
            if waiting_for_body:
                response = xml_error(
                    408, "body_timeout", body_timeout_message(self.timeout),
                    {"Connection": "close"},
                )
            else:
                response = xml_error(
                    503, "request_timeout", request_timeout_message(self.timeout),
                    {"Retry-After": RETRY_AFTER_SECONDS},
                )
            await respond(response)
            return response.status_code, None
