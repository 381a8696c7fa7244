"""Admin endpoints for bulk import, export and the cross-link audit.

`POST /admin/v1/imports` takes the file as the request body, so it is bounded by the service's
body size limit (`SSO_MAX_API_BODY_BYTES`) and request timeout; bulk migrations of large files
use `sso-provider users import`, which has neither limit.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from app.admin.audit import record_audit_event
from app.admin.keys import AdminReadKey, AdminWriteKey, PermissionDeniedError
from app.deps import HasherDep, SessionDep
from app.identity.errors import ConflictError, DomainError
from app.problems import (
    PROBLEM_TYPE_PREFIX,
    PROBLEM_TYPES,
    FieldError,
    ProblemType,
    problem_response,
    problem_responses,
    request_id_of,
)
from app.query_types import IsoDateTime
from app.transfer.crosslinks import DEFAULT_SINCE_DAYS, audit_crosslinks
from app.transfer.exporter import EXPORTABLE_STATUSES, ExportOptions, export_users
from app.transfer.formats import FileFormat, FileFormatError
from app.transfer.importer import ImportAbortedError, Importer, ImportOptions
from app.transfer.validate import RowError

router = APIRouter(prefix="/admin/v1", tags=["Bulk import and export"])

# Uploads larger than this are spooled to a temporary file instead of memory.
_SPOOL_MEMORY_BYTES = 8 * 1024 * 1024
_MEDIA_TYPES: dict[FileFormat, str] = {
    "csv": "text/csv; charset=utf-8",
    "ndjson": "application/x-ndjson; charset=utf-8",
}
_CONTENT_TYPE_FORMATS: dict[str, FileFormat] = {
    "text/csv": "csv",
    "application/x-ndjson": "ndjson",
    "application/jsonl": "ndjson",
    "application/jsonlines": "ndjson",
}


for _code, _title, _status, _description in (
    (
        "import_rejected",
        "Import rejected",
        422,
        "At least one row is invalid or conflicts, so nothing was written. Each entry of "
        "`errors` names the row (`location`), the field and the reason.",
    ),
    (
        "invalid_file",
        "Unreadable import file",
        422,
        "The file as a whole cannot be read: its encoding, header row or format is wrong.",
    ),
    (
        "import_conflict",
        "Import conflict",
        409,
        "A user created while the import ran took a login or ERID from the file; nothing was "
        "written. Run the import again to get the full report.",
    ),
):
    PROBLEM_TYPES.setdefault(
        _code,
        ProblemType(
            type=PROBLEM_TYPE_PREFIX + _code,
            code=_code,
            title=_title,
            status=_status,
            description=_description,
        ),
    )


class InvalidFileError(DomainError):
    """An import file that cannot be read as a whole: encoding, header or format."""

    code = "invalid_file"
    status_code = 422


def _format_of(request: Request, explicit: FileFormat | None) -> FileFormat:
    if explicit is not None:
        return explicit
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    found = _CONTENT_TYPE_FORMATS.get(content_type)
    if found is None:
        raise InvalidFileError(
            "cannot tell the file format: send Content-Type text/csv or application/x-ndjson, "
            "or add ?format=csv or ?format=ndjson",
            field="format",
        )
    return found


def _error_dict(error: RowError) -> dict[str, Any]:
    return {"row": error.row, "field": error.field, "code": error.code, "message": error.message}


@router.post(
    "/imports",
    summary="Import users from a CSV or NDJSON body",
    responses=problem_responses(401, 403, 409, 413, 422),
)
async def create_import(
    request: Request,
    session: SessionDep,
    hasher: HasherDep,
    key: AdminWriteKey,
    file_format: Annotated[
        FileFormat | None, Query(alias="format", description="csv or ndjson; else Content-Type.")
    ] = None,
    dry_run: Annotated[bool, Query(description="Check everything and write nothing.")] = False,
    skip_invalid: Annotated[
        bool, Query(description="Import the valid rows instead of nothing when some fail.")
    ] = False,
    allow_plain_passwords: Annotated[
        bool, Query(description="Accept a plain `password` field and hash it with argon2id.")
    ] = False,
) -> Any:
    """Validate and import the users in the body, all or nothing unless `skip_invalid` is set.

    Returns the summary and every row error. When rows are rejected and nothing was written,
    the answer is a 422 problem with code `import_rejected`, and each entry of `errors` names
    the file row in `location` (`row 12`).
    """
    resolved = _format_of(request, file_format)
    errors: list[RowError] = []
    options = ImportOptions(
        file_format=resolved,
        dry_run=dry_run,
        skip_invalid=skip_invalid,
        allow_plain_passwords=allow_plain_passwords,
        created_via="import",
        actor_name=key.name,
        actor_key_id=key.id,
        source_name="request body",
        # The service serves callbacks meanwhile, so imports over HTTP never lock the user tables.
        exclusive_load=False,
    )
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_MEMORY_BYTES) as body:
        async for chunk in request.stream():
            body.write(chunk)
        body.seek(0)
        importer = Importer(session, hasher, options, report=errors.append)
        try:
            summary = await importer.run(body)  # type: ignore[arg-type]
        except FileFormatError as exc:
            await session.rollback()
            raise InvalidFileError(str(exc), field="body") from None
        except ImportAbortedError as exc:
            await session.rollback()
            raise ConflictError(str(exc), code="import_conflict") from None
    await session.commit()

    if summary.rows_rejected and not dry_run and not skip_invalid:
        return problem_response(
            request,
            status=422,
            code="import_rejected",
            detail=(
                f"{summary.rows_rejected} of {summary.rows_read} rows were rejected and nothing "
                "was written: fix them, or import the rest with skip_invalid=true"
            ),
            errors=[
                FieldError(
                    field=error.field,
                    location=f"row {error.row}",
                    message=error.message,
                    code=error.code,
                )
                for error in errors
            ],
        )
    return JSONResponse({"summary": summary.as_dict(), "errors": [_error_dict(e) for e in errors]})


@router.get(
    "/exports",
    summary="Export users as CSV or NDJSON in the import format",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The users in the import format, streamed.",
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "application/x-ndjson": {"schema": {"type": "string"}},
            },
        },
        **problem_responses(401, 403, 422),
    },
)
async def export(
    request: Request,
    session: SessionDep,
    key: AdminReadKey,
    file_format: Annotated[FileFormat, Query(alias="format")] = "csv",
    include_password_hashes: Annotated[
        bool, Query(description="Add password_hash; needs the admin:export-secrets scope.")
    ] = False,
    status: Annotated[list[Literal["active", "disabled"]] | None, Query()] = None,
    created_from: Annotated[IsoDateTime | None, Query()] = None,
    created_before: Annotated[IsoDateTime | None, Query()] = None,
) -> StreamingResponse:
    """Stream the users in `created_at` order; erased users are never exported."""
    if include_password_hashes:
        if not key.allows("admin:export-secrets"):
            raise PermissionDeniedError("admin:export-secrets")
        await record_audit_event(
            session,
            actor=key.actor,
            action="users.export_password_hashes",
            request_id=request_id_of(request),
            details={"format": file_format},
        )
        await session.commit()
    options = ExportOptions(
        file_format=file_format,
        include_password_hashes=include_password_hashes,
        statuses=tuple(status) if status else EXPORTABLE_STATUSES,
        created_from=created_from,
        created_before=created_before,
    )
    sessionmaker = request.app.state.database.sessionmaker

    async def body() -> AsyncIterator[bytes]:
        # A session of its own: the request's session closes before the stream finishes.
        async with sessionmaker() as export_session:
            async for chunk in export_users(export_session, options):
                yield chunk.encode("utf-8")
            await export_session.rollback()

    extension = "csv" if file_format == "csv" else "ndjson"
    return StreamingResponse(
        body(),
        media_type=_MEDIA_TYPES[file_format],
        headers={"Content-Disposition": f'attachment; filename="users.{extension}"'},
    )


@router.get(
    "/audits/crosslinks",
    summary="Find users at risk of being confused with each other",
    responses=problem_responses(401, 403, 422),
)
async def crosslink_audit(
    session: SessionDep,
    key: AdminReadKey,
    since_days: Annotated[int, Query(ge=1, le=3650)] = DEFAULT_SINCE_DAYS,
    samples: Annotated[int, Query(ge=1, le=1000)] = 10,
) -> dict[str, Any]:
    """Return each kind of finding with its count and sample groups; `total` 0 means clean."""
    report = await audit_crosslinks(session, since_days=since_days, sample_groups=samples)
    await session.rollback()
    return report.as_dict()
