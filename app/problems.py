"""RFC 9457 problem details for every JSON API of the service.

`install_problem_handlers(app)` registers one set of exception handlers. For every path outside
the Digital River callbacks (`/rum`), each failure is sent as `application/problem+json`:

    {"type": "/problems/conflict", "title": "Conflict", "status": 409,
     "detail": "login is already taken by another user", "instance": "/admin/v1/users",
     "code": "conflict", "field": "login",
     "errors": [{"field": "login", "message": "...", "code": "conflict"}],
     "request_id": "..."}

`code` is the stable machine-readable name of the failure and `type` is `/problems/<code>`, a
URI reference that `GET /problems/<code>` resolves to a description. `field` names the first
offending field and `errors` lists every one. Unexpected exceptions are logged with the request
id and get a generic 500 body: no exception text, stack trace or SQL reaches a client.

Raise a `DomainError` subclass (app/identity/errors.py) from a service or a route to send a
problem: its `status_code`, `code`, `field` and message become the response, and an optional
`headers` attribute adds response headers (used for `WWW-Authenticate`).
"""

from __future__ import annotations

import http
import logging
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from app.db.errors import is_database_unavailable
from app.identity.errors import DomainError, NotFoundError
from app.ops.logging import mark_logged
from app.paths import route_path

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "/problems/"

# Paths whose routes render their own errors (the Digital River callbacks return XML).
EXCLUDED_PREFIXES = ("/rum",)

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")

# Validation error types that are promoted to the problem's `code` when every error has it.
_PROMOTED_VALIDATION_CODES = frozenset({"read_only_field", "use_dedicated_endpoint"})


class ProblemType(BaseModel):
    """Description of one problem `code`, served at `GET /problems/<code>`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "/problems/precondition_failed",
                    "code": "precondition_failed",
                    "title": "Precondition failed",
                    "status": 412,
                    "description": "The `If-Match` entity tag does not match the user's "
                    "current `ETag`: another change was made since it was read.",
                }
            ]
        }
    )

    type: str
    code: str
    title: str
    status: int
    description: str


def _problem_type(code: str, title: str, status: int, description: str) -> ProblemType:
    return ProblemType(
        type=PROBLEM_TYPE_PREFIX + code,
        code=code,
        title=title,
        status=status,
        description=description,
    )


# Every code the service sends. Other modules may send codes missing here; they get the HTTP
# reason phrase as title and resolve to 404 at `GET /problems/<code>` until they are added.
PROBLEM_TYPES: dict[str, ProblemType] = {
    problem.code: problem
    for problem in (
        _problem_type(
            "validation_failed",
            "Request validation failed",
            422,
            "The body, a query parameter, a path parameter or a header is invalid. `errors` "
            "names each offending field with the reason.",
        ),
        _problem_type(
            "invalid_value",
            "Invalid value",
            422,
            "A field is well-formed JSON but breaks a rule of the user store, such as the "
            "password length policy or the format of a login.",
        ),
        _problem_type(
            "invalid_cursor",
            "Invalid cursor",
            422,
            "The `cursor` parameter is not a value returned as `next_cursor` by the same list.",
        ),
        _problem_type(
            "read_only_field",
            "Read-only field",
            422,
            "The request tries to change `user_key` or `external_reference_id`, which never "
            "change once issued.",
        ),
        _problem_type(
            "use_dedicated_endpoint",
            "Field changed by another endpoint",
            422,
            "The field cannot be changed by PATCH: `status` changes through the disable and "
            "enable endpoints, the password through `PUT .../password`.",
        ),
        _problem_type(
            "client_disconnected",
            "Client disconnected",
            400,
            "The client closed the connection before sending the whole request body. Nobody "
            "receives this response; it appears in the access log and the metrics.",
        ),
        _problem_type(
            "unauthorized",
            "Authentication required",
            401,
            "The request has no `Authorization: Bearer <key>` header, or the key is unknown or "
            "revoked.",
        ),
        _problem_type(
            "insufficient_scope",
            "Insufficient scope",
            403,
            "The API key is valid but lacks the scope the endpoint requires.",
        ),
        _problem_type(
            "not_found",
            "Not found",
            404,
            "No resource matches the path or the lookup parameters.",
        ),
        _problem_type(
            "method_not_allowed",
            "Method not allowed",
            405,
            "The path exists, but not with this HTTP method. The `Allow` header lists the "
            "methods it takes.",
        ),
        _problem_type(
            "bad_request",
            "Bad request",
            400,
            "The request could not be read, for example a JSON body that is not valid UTF-8 "
            "JSON.",
        ),
        _problem_type(
            "conflict",
            "Conflict",
            409,
            "A unique value (login after normalisation, ERID compared case-insensitively) "
            "already belongs to another user.",
        ),
        _problem_type(
            "identifier_reserved",
            "Identifier reserved",
            409,
            "The ERID was issued to a user who has since been erased. Issued identifiers are "
            "never reused.",
        ),
        _problem_type(
            "user_erased",
            "User erased",
            409,
            "The user has been erased. An erased user keeps its identifiers but cannot change.",
        ),
        _problem_type(
            "user_not_active",
            "User not active",
            409,
            "The user is disabled, so no SSO session can be issued. Enable the user first.",
        ),
        _problem_type(
            "invalid_credentials",
            "Invalid credentials",
            400,
            "The login and password sent to `POST /api/v1/sessions` match no account. An "
            "unknown login and a wrong password get this same response.",
        ),
        _problem_type(
            "precondition_failed",
            "Precondition failed",
            412,
            "The `If-Match` entity tag does not match the user's current `ETag`: another change "
            "was made since it was read. Read the user again and retry.",
        ),
        _problem_type(
            "service_unavailable",
            "Service unavailable",
            503,
            "The database could not be reached in time. Retry after the `Retry-After` delay.",
        ),
        _problem_type(
            "internal_error",
            "Internal server error",
            500,
            "An unexpected error. It is logged with the `request_id` shown in the body.",
        ),
    )
}


class FieldError(BaseModel):
    """One offending field of a request."""

    field: str = Field(description="Dotted path of the field, such as `shipping_address.country`.")
    location: str | None = Field(
        default=None, description="Where the field was sent: body, query, path or header."
    )
    message: str
    code: str = Field(description="Machine-readable reason, such as `missing` or `conflict`.")


class Problem(BaseModel):
    """An RFC 9457 problem details object, sent as `application/problem+json`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "/problems/conflict",
                    "title": "Conflict",
                    "status": 409,
                    "detail": "login is already taken by another user",
                    "instance": "/admin/v1/users",
                    "code": "conflict",
                    "field": "login",
                    "errors": [
                        {
                            "field": "login",
                            "location": "body",
                            "message": "login is already taken by another user",
                            "code": "conflict",
                        }
                    ],
                    "request_id": "5b0d8c5e0c1e4c8f9d1f2a3b4c5d6e7f",
                }
            ]
        }
    )

    type: str = Field(description="URI reference of the problem type: `/problems/<code>`.")
    title: str = Field(
        description="Short summary of the problem type; the same for every occurrence."
    )
    status: int = Field(description="HTTP status code of the response.")
    detail: str = Field(description="What went wrong in this occurrence and how to fix it.")
    instance: str = Field(description="Path of the request that failed.")
    code: str = Field(description="Stable machine-readable problem code.")
    field: str | None = Field(default=None, description="First offending field, if any.")
    errors: list[FieldError] = Field(default_factory=list, description="Every offending field.")
    request_id: str = Field(description="Request id, also written to the logs and audit events.")


def request_id_of(request: Request) -> str:
    """Return the request id: the `X-Request-ID` header when it is well-formed, else a new one.

    The id is stored on `request.state.request_id`, so every caller within one request gets
    the same value. An id set there earlier by a middleware wins.
    """
    existing = getattr(request.state, "request_id", None)
    if isinstance(existing, str) and existing:
        return existing
    header = request.headers.get(REQUEST_ID_HEADER)
    request_id = header if header and _REQUEST_ID_RE.fullmatch(header) else uuid.uuid4().hex
    request.state.request_id = request_id
    return request_id


def _is_excluded(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in EXCLUDED_PREFIXES)


def _title_for(code: str, status: int) -> str:
    known = PROBLEM_TYPES.get(code)
    if known is not None:
        return known.title
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_response(
    request: Request,
    *,
    status: int,
    code: str,
    detail: str,
    field: str | None = None,
    errors: Iterable[FieldError] = (),
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """Build an `application/problem+json` response for `request`."""
    error_list = list(errors)
    if field is None and error_list:
        field = error_list[0].field
    problem = Problem(
        type=PROBLEM_TYPE_PREFIX + code,
        title=_title_for(code, status),
        status=status,
        detail=detail,
        instance=request.url.path,
        code=code,
        field=field,
        errors=error_list,
        request_id=request_id_of(request),
    )
    return JSONResponse(
        problem.model_dump(mode="json"),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def _field_path(location: tuple[int | str, ...]) -> tuple[str | None, str]:
    """Split a pydantic error location into (where it was sent, dotted field path)."""
    parts = list(location)
    where: str | None = None
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        where = str(parts.pop(0))
    path = ".".join(str(part) for part in parts)
    return where, path


def _validation_errors(exc: RequestValidationError) -> list[FieldError]:
    errors: list[FieldError] = []
    for error in exc.errors():
        where, path = _field_path(tuple(error.get("loc", ())))
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        if error.get("type") == "json_invalid":
            # The location is the character offset of the syntax error, not a field.
            reason = (error.get("ctx") or {}).get("error", "")
            message = f"the body is not valid JSON at character {path}: {reason}".rstrip(": ")
            path = "body"
        if where == "body" and not path:
            path = "body"
        errors.append(
            FieldError(
                field=path or where or "request",
                location=where,
                message=message,
                code=str(error.get("type", "invalid")),
            )
        )
    return errors


async def _domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    if _is_excluded(route_path(request.scope)):
        return JSONResponse({"detail": exc.message}, status_code=exc.status_code)
    errors = []
    if exc.field is not None:
        errors.append(FieldError(field=exc.field, message=exc.message, code=exc.code))
    headers: Mapping[str, str] | None = getattr(exc, "headers", None)
    return problem_response(
        request,
        status=exc.status_code,
        code=exc.code,
        detail=exc.message,
        field=exc.field,
        errors=errors,
        headers=headers,
    )


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    if _is_excluded(route_path(request.scope)):
        return await request_validation_exception_handler(request, exc)
    errors = _validation_errors(exc)
    codes = {error.code for error in errors}
    code = "validation_failed"
    if len(codes) == 1 and codes <= _PROMOTED_VALIDATION_CODES:
        code = codes.pop()
    if len(errors) == 1:
        detail = f"{errors[0].field}: {errors[0].message}"
    else:
        fields = ", ".join(dict.fromkeys(error.field for error in errors))
        detail = f"{len(errors)} errors in fields {fields}: see `errors`"
    return problem_response(request, status=422, code=code, detail=detail, errors=errors)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if _is_excluded(route_path(request.scope)):
        return await http_exception_handler(request, exc)
    status = exc.status_code
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    code = re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_")
    if status == 404:
        code = "not_found"
    detail = exc.detail if isinstance(exc.detail, str) else phrase
    if status == 404 and detail == phrase:
        detail = f"no resource at {request.url.path}: check the path against /docs"
    headers = getattr(exc, "headers", None)
    if status < 400:
        return Response(status_code=status, headers=headers)
    return problem_response(request, status=status, code=code, detail=detail, headers=headers)


async def _client_disconnected(request: Request, exc: Exception) -> Response:
    # An expected event, not a failure of the service: one info line, no traceback.
    logger.info("request.client_disconnected path=%s", request.url.path)
    if _is_excluded(route_path(request.scope)):
        return PlainTextResponse("Client Disconnected", status_code=400)
    return problem_response(
        request,
        status=400,
        code="client_disconnected",
        detail="the client closed the connection before the request body was complete",
    )


async def unexpected_error(request: Request, exc: Exception) -> Response:
    """Render an unexpected error: 503 when the database is unavailable, else 500.

    The X-Request-ID header comes from the request-context middleware, which wraps even
    ServerErrorMiddleware, where Starlette runs the catch-all handler.
    """
    request_id = request_id_of(request)
    if is_database_unavailable(exc):
        logger.error(
            "request.database_unavailable path=%s request_id=%s error=%s",
            request.url.path,
            request_id,
            type(exc).__name__,
        )
        if _is_excluded(route_path(request.scope)):
            return PlainTextResponse("Service Unavailable", status_code=503)
        return problem_response(
            request,
            status=503,
            code="service_unavailable",
            detail="the database is unavailable: retry shortly",
            headers={"Retry-After": "5"},
        )
    logger.exception(
        "request.failed path=%s request_id=%s", request.url.path, request_id, exc_info=exc
    )
    mark_logged(exc)
    if _is_excluded(route_path(request.scope)):
        return PlainTextResponse("Internal Server Error", status_code=500)
    return problem_response(
        request,
        status=500,
        code="internal_error",
        detail=f"an unexpected error occurred: quote request id {request_id} when reporting it",
    )


def install_problem_handlers(app: FastAPI) -> None:
    """Render errors as problem details for every path outside `/rum`.

    Registers handlers for `DomainError`, `RequestValidationError`, `HTTPException` and any
    other exception, and adds `GET /problems/{code}`, which describes each problem `code`.
    Under `/rum` the handlers fall back to FastAPI's default JSON responses, because the
    callback routes render their own XML errors.
    """
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, unexpected_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnected)
    # Database and network errors are also registered by class, so ExceptionMiddleware answers
    # them: the catch-all above runs in ServerErrorMiddleware, which re-raises after answering.
    app.add_exception_handler(SQLAlchemyError, unexpected_error)
    app.add_exception_handler(OSError, unexpected_error)
    app.include_router(problem_types_router)


def _inline_refs(schema: Any, definitions: Mapping[str, Any]) -> Any:
    if isinstance(schema, dict):
        reference = schema.get("$ref")
        if isinstance(reference, str) and reference.startswith("#/$defs/"):
            return _inline_refs(definitions[reference.removeprefix("#/$defs/")], definitions)
        return {key: _inline_refs(value, definitions) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_inline_refs(item, definitions) for item in schema]
    return schema


def _problem_schema() -> dict[str, Any]:
    # Inlined so that the schema documents `application/problem+json` only: FastAPI's `model`
    # key would also list the problem under `application/json`.
    schema = Problem.model_json_schema()
    definitions = schema.pop("$defs", {})
    inlined: dict[str, Any] = _inline_refs(schema, definitions)
    inlined.pop("examples", None)
    return inlined


PROBLEM_SCHEMA = _problem_schema()

_RESPONSE_DESCRIPTIONS = {
    400: "Bad request.",
    401: "The bearer key is missing, unknown or revoked (`unauthorized`).",
    403: "The key lacks the scope this endpoint requires (`insufficient_scope`).",
    404: "Not found (`not_found`).",
    409: "Conflict with a unique or reserved identifier (`conflict`, `identifier_reserved`, "
    "`user_erased`).",
    412: "`If-Match` does not match the current `ETag` (`precondition_failed`).",
    422: "Invalid input; `errors` names each field (`validation_failed`, `invalid_value`, …).",
    428: "Precondition required.",
    500: "Unexpected error (`internal_error`); no details are sent.",
    503: "The database is unavailable (`service_unavailable`).",
}

_EXAMPLE_CODES = {
    401: ("unauthorized", "missing bearer key: send Authorization: Bearer <key>", None),
    403: ("insufficient_scope", "this endpoint requires the scope admin:write", None),
    404: ("not_found", "no user with this user_key", None),
    409: ("conflict", "login is already taken by another user", "login"),
    412: ("precondition_failed", 'If-Match "3" does not match the current ETag "4"', "If-Match"),
    422: ("validation_failed", "login: Field required", "login"),
    500: (
        "internal_error",
        "an unexpected error occurred: quote request id … when reporting it",
        None,
    ),
    503: ("service_unavailable", "the database is unavailable: retry shortly", None),
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries documenting `statuses` as problem details.

    500 and 503 are always added, because any endpoint can return them.
    """
    documented: dict[int | str, dict[str, Any]] = {}
    for status in (*statuses, 500, 503):
        code, detail, field = _EXAMPLE_CODES.get(status, ("error", "request failed", None))
        example = {
            "type": PROBLEM_TYPE_PREFIX + code,
            "title": _title_for(code, status),
            "status": status,
            "detail": detail,
            "instance": "/admin/v1/users",
            "code": code,
            "field": field,
            "errors": (
                [{"field": field, "location": None, "message": detail, "code": code}]
                if field
                else []
            ),
            "request_id": "5b0d8c5e0c1e4c8f9d1f2a3b4c5d6e7f",
        }
        documented[status] = {
            "description": _RESPONSE_DESCRIPTIONS.get(status, http.HTTPStatus(status).phrase),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": PROBLEM_SCHEMA, "example": example}},
        }
    return documented


problem_types_router = APIRouter(tags=["Problem types"])


@problem_types_router.get(
    "/problems/{code}",
    response_model=ProblemType,
    summary="Describe a problem type",
    operation_id="getProblemType",
    responses=problem_responses(404, 422),
)
async def get_problem_type(code: str) -> ProblemType:
    """Return the title, HTTP status and meaning of one problem `code`."""
    problem = PROBLEM_TYPES.get(code)
    if problem is None:
        raise NotFoundError(f"no problem type {code!r}: see GET /problems/{{code}} in /docs")
    return problem


__all__ = [
    "PROBLEM_MEDIA_TYPE",
    "PROBLEM_TYPES",
    "REQUEST_ID_HEADER",
    "FieldError",
    "Problem",
    "install_problem_handlers",
    "problem_response",
    "problem_responses",
    "request_id_of",
]
