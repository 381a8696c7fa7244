"""HTTP endpoints for Digital River's callbacks.

`POST /rum` accepts every message and dispatches on the root element; the other paths accept
one message each, for integrations that configure one URL per call.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.requests import ClientDisconnect

from app.db.errors import is_database_unavailable
from app.rum import examples, xml
from app.rum.handlers import HANDLERS, CallbackContext
from app.rum.security import CallerRejectedError, check_caller, request_header
from app.security.login_guard import SourceThrottledError
from app.settings import Settings

logger = logging.getLogger(__name__)

XML_MEDIA_TYPE = "text/xml; charset=UTF-8"
_ACCEPTED_CONTENT_TYPES = ("text/xml", "application/xml", "application/soap+xml")
RETRY_AFTER_SECONDS = "5"

router = APIRouter(prefix="/rum", tags=["Digital River callbacks"])


class BodyTooLargeError(Exception):
    pass


def xml_answer(
    body: bytes, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        content=body, status_code=status_code, media_type=XML_MEDIA_TYPE, headers=headers
    )


def xml_error(
    status_code: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    return xml_answer(xml.render_error(code, message), status_code, headers)


async def read_limited_body(request: Request, limit: int) -> bytes:
    """Read the body, stopping as soon as it exceeds `limit` bytes.

    It reads the ASGI messages itself rather than through `request.stream()`, whose async
    generator costs more than the read of a callback's one-message body.

    Raises:
        BodyTooLargeError: past `limit` bytes, declared or received.
        ClientDisconnect: if the client left before the body was complete.
    """
    declared = request_header(request, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError
    receive = request.receive
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        body: bytes = message.get("body", b"")
        size += len(body)
        if size > limit:
            raise BodyTooLargeError
        if not message.get("more_body", False):
            if not chunks:
                return body
            chunks.append(body)
            return b"".join(chunks)
        chunks.append(body)


def _content_type_accepted(request: Request) -> bool:
    content_type = request_header(request, b"content-type")
    if not content_type:
        return True
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type in _ACCEPTED_CONTENT_TYPES


def _is_database_unavailable(error: Exception) -> bool:
    return is_database_unavailable(error)


async def process_callback(
    request: Request,
    context: CallbackContext,
    settings: Settings,
    accepted: tuple[type[Any], ...] | None,
) -> Response:
    """Authenticate the caller, parse the body, run the matching handler and render the answer."""
    try:
        check_caller(request, settings)
    except CallerRejectedError as rejected:
        logger.warning("rum.caller_rejected code=%s", rejected.code)
        headers = None
        if rejected.status_code == 401:
            headers = {"WWW-Authenticate": 'Basic realm="sso-provider"'}
        return xml_error(rejected.status_code, rejected.code, rejected.message, headers)

    if not _content_type_accepted(request):
        return xml_error(
            415, "unsupported_media_type", "send the callback as text/xml or application/xml"
        )
    try:
        body = await read_limited_body(request, settings.max_body_bytes)
    except BodyTooLargeError:
        return xml_error(
            413, "body_too_large", f"the body is larger than {settings.max_body_bytes} bytes"
        )
    except ClientDisconnect:
        # The client is gone and never reads this response; the access line records a 400.
        logger.info("rum.client_disconnected")
        return xml_error(
            400, "client_disconnected", "the connection closed before the body was complete"
        )

    try:
        message = xml.parse_request(
            body,
            max_depth=settings.xml_max_depth,
            max_elements=settings.xml_max_elements,
            max_text_length=settings.xml_max_text_length,
        )
    except xml.XMLRequestError as error:
        logger.info("rum.bad_request code=%s", error.code)
        return xml_error(400, error.code, error.message)

    handler = HANDLERS.get(type(message))
    if accepted is not None and not isinstance(message, accepted):
        handler = None
    if handler is None:
        return xml_error(
            400,
            "wrong_endpoint",
            f"{request.url.path} does not accept {type(message).__name__}: post it to /rum",
        )

    try:
        answer = await handler(context, message)
    except SourceThrottledError as throttled:
        return xml_error(
            429,
            "too_many_requests",
            "too many failed logins from this source address: retry later",
            {"Retry-After": str(throttled.retry_after_seconds)},
        )
    except Exception as error:
        await context.rollback()
        if _is_database_unavailable(error):
            logger.error("rum.database_unavailable error=%s", type(error).__name__)
            return xml_error(
                503,
                "service_unavailable",
                "the user store is temporarily unavailable: retry later",
                {"Retry-After": RETRY_AFTER_SECONDS},
            )
        logger.exception("rum.handler_failed message=%s", type(message).__name__)
        return xml_error(500, "internal_error", "the request could not be processed")
    return xml_answer(answer)


# The messages each callback path accepts; None: any of them, dispatched on the root element.
ACCEPTED_MESSAGES: dict[str, tuple[type[Any], ...] | None] = {
    "/rum": None,
    "/rum/login": (xml.LoginRequest,),
    "/rum/user-profile": (xml.ProfileRequest,),
    "/rum/session": (xml.SessionValidationRequest,),
    "/rum/create-user": (xml.CreateUserRequest,),
}


async def serve_callback(request: Request, accepted: tuple[type[Any], ...] | None) -> Response:
    """Run one callback with its own database session.

    The routes take the app's state directly rather than through FastAPI dependencies, whose
    resolution costs more than a profile fetch's own work. The context creates a session only
    when a handler uses one, which the profile fetch does not.
    """
    state = request.app.state
    context = CallbackContext(
        request, state.settings, state.hasher, state.database.request_session
    )
    try:
        return await process_callback(request, context, state.settings, accepted)
    finally:
        await context.close()


@router.post(
    "",
    summary="Any callback, dispatched on the root element",
    response_class=Response,
    openapi_extra=examples.openapi_for(
        {
            "LoginRequest": examples.LOGIN_REQUEST,
            "GetUserProfileRequest": examples.PROFILE_REQUEST,
            "ValidateSessionRequest": examples.SESSION_REQUEST,
            "CreateUserProfileRequest": examples.CREATE_REQUEST,
        },
        {
            "LoginResponse (success)": examples.LOGIN_SUCCESS,
            "LoginResponse (failure)": examples.LOGIN_FAILURE,
            "GetUserProfileResponse": examples.PROFILE_SUCCESS,
            "ValidateSessionResponse (success)": examples.SESSION_SUCCESS,
            "CreateUserProfileResponse (success)": examples.CREATE_SUCCESS,
        },
    ),
)
async def any_callback(request: Request) -> Response:
    return await serve_callback(request, ACCEPTED_MESSAGES["/rum"])


@router.post(
    "/login",
    summary="RemoteLogin: authenticate a shopper",
    response_class=Response,
    openapi_extra=examples.openapi_for(
        {"LoginRequest": examples.LOGIN_REQUEST},
        {"success": examples.LOGIN_SUCCESS, "failure": examples.LOGIN_FAILURE},
    ),
)
async def login_callback(request: Request) -> Response:
    return await serve_callback(request, ACCEPTED_MESSAGES["/rum/login"])


@router.post(
    "/user-profile",
    summary="RemoteUserFetch: return a shopper's profile by ERID",
    response_class=Response,
    openapi_extra=examples.openapi_for(
        {"GetUserProfileRequest": examples.PROFILE_REQUEST},
        {"success": examples.PROFILE_SUCCESS, "failure": examples.PROFILE_FAILURE},
    ),
)
async def profile_callback(request: Request) -> Response:
    return await serve_callback(request, ACCEPTED_MESSAGES["/rum/user-profile"])


@router.post(
    "/session",
    summary="RemoteSessionValidation: identify the shopper who owns a session token",
    response_class=Response,
    openapi_extra=examples.openapi_for(
        {"ValidateSessionRequest": examples.SESSION_REQUEST},
        {"success": examples.SESSION_SUCCESS, "failure (expired token)": examples.SESSION_FAILURE},
    ),
)
async def session_callback(request: Request) -> Response:
    return await serve_callback(request, ACCEPTED_MESSAGES["/rum/session"])


@router.post(
    "/create-user",
    summary="RemoteCreateUser: register a new shopper",
    response_class=Response,
    openapi_extra=examples.openapi_for(
        {"CreateUserProfileRequest": examples.CREATE_REQUEST},
        {
            "success": examples.CREATE_SUCCESS,
            "login taken": examples.CREATE_CONFLICT,
            "invalid field": examples.CREATE_INVALID,
        },
    ),
)
async def create_user_callback(request: Request) -> Response:
    return await serve_callback(request, ACCEPTED_MESSAGES["/rum/create-user"])
