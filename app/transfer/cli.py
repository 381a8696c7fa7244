"""Click commands `users import`, `users export` and `audit crosslinks`; app.cli registers them.

Exit status of `users import`: 0 when every row was imported (or, with --dry-run, would be),
1 when any row was rejected, 2 for an unusable file or invocation, 3 when the database rejected
the insert and nothing was written. `audit crosslinks` exits 1 when it finds anything.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import sys
import tempfile
import time
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import IO, Any, BinaryIO

import asyncpg
import click
from sqlalchemy.exc import SQLAlchemyError

from app.transfer.formats import FORMATS, FileFormatError, detect_format
from app.transfer.validate import RowError

EXIT_REJECTED = 1
EXIT_USAGE = 2
EXIT_ABORTED = 3

logger = logging.getLogger(__name__)


def _settings() -> Any:
    from app.cli import load_settings  # imported late: app.cli imports this module

    return load_settings()


class _PlainProgress:
    """Progress as plain lines on standard error, at most one per second and per phase change."""

    def __init__(self) -> None:
        self._last_line = 0.0
        self._last_phase = ""

    def __call__(self, progress: Any) -> None:
        now = time.monotonic()
        if progress.phase == self._last_phase and now - self._last_line < 1.0:
            return
        self._last_line = now
        self._last_phase = progress.phase
        rate = progress.rows_read / progress.elapsed if progress.elapsed > 0 else 0.0
        click.echo(
            f"import: {progress.phase}: {progress.rows_read} rows read, {rate:,.0f} rows/s, "
            f"{progress.elapsed:.1f} s",
            err=True,
        )

    def close(self) -> None:
        return None


class _RichProgress:
    """A rich progress bar with rows per second, for terminals."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TextColumn("{task.completed:,} rows"),
            TextColumn("{task.fields[rate]:,.0f} rows/s"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._task = self._progress.add_task("reading", total=None, rate=0.0)
        self._progress.start()

    def __call__(self, progress: Any) -> None:
        rate = progress.rows_read / progress.elapsed if progress.elapsed > 0 else 0.0
        self._progress.update(
            self._task, description=progress.phase, completed=progress.rows_read, rate=rate
        )

    def close(self) -> None:
        self._progress.stop()


def _format_error(error: RowError) -> str:
    return f"row {error.row}, {error.field}: {error.message} [{error.code}]"


@click.command("import")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@click.option(
    "--format",
    "file_format",
    type=click.Choice(FORMATS),
    help="File format; by default taken from the extension (.csv, .ndjson or .jsonl).",
)
@click.option("--dry-run", is_flag=True, help="Check everything and write nothing.")
@click.option(
    "--skip-invalid",
    is_flag=True,
    help="Import the valid rows and report the rejected ones, instead of importing nothing.",
)
@click.option(
    "--allow-plain-passwords",
    is_flag=True,
    help="Accept a plain `password` column and hash it with argon2id (slow: tens of ms a row).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the report as one JSON document on stdout."
)
@click.option(
    "--batch-rows",
    default=5000,
    show_default=True,
    type=click.IntRange(100, 100_000),
    help="Rows validated and copied to the staging tables per batch.",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Processes that validate rows in parallel with the COPY into staging; 1 validates "
    "in the importing process.",
)
@click.option(
    "--no-exclusive-load",
    "exclusive_load",
    flag_value=False,
    default=True,
    help="Into an empty store too, check and index row by row without locking the user "
    "tables, so that the running service can answer meanwhile (slower).",
)
def import_users(
    file: Path,
    file_format: str | None,
    dry_run: bool,
    skip_invalid: bool,
    allow_plain_passwords: bool,
    as_json: bool,
    batch_rows: int,
    workers: int,
    exclusive_load: bool,
) -> None:
    """Import users from a CSV or NDJSON FILE ('-' reads standard input).

    All or nothing by default: any rejected row means nothing is written. The report lists every
    rejected row with its line number, field and reason.
    """
    from app.transfer.importer import ImportOptions

    try:
        resolved = detect_format(None if str(file) == "-" else file, file_format)
    except FileFormatError as exc:
        raise click.UsageError(str(exc)) from None
    settings = _settings()
    options = ImportOptions(
        file_format=resolved,
        workers=workers,
        dry_run=dry_run,
        skip_invalid=skip_invalid,
        allow_plain_passwords=allow_plain_passwords,
        batch_rows=batch_rows,
        exclusive_load=exclusive_load,
        created_via="import",
        actor_name="cli",
        source_name=file.name if str(file) != "-" else "stdin",
    )
    progress: _PlainProgress | _RichProgress = (
        _RichProgress() if sys.stderr.isatty() else _PlainProgress()
    )
    with ExitStack() as stack:
        source: BinaryIO
        if str(file) == "-":
            source = sys.stdin.buffer
        else:
            try:
                source = stack.enter_context(file.open("rb"))
            except OSError as exc:
                progress.close()
                click.echo(f"error: cannot open {file}: {exc.strerror}", err=True)
                sys.exit(EXIT_USAGE)
        try:
            exit_code = asyncio.run(_run_import(settings, options, source, progress, as_json))
        finally:
            progress.close()
    sys.exit(exit_code)


async def _run_import(
    settings: Any, options: Any, source: BinaryIO, progress: Any, as_json: bool
) -> int:
    from app.db.engine import database_for_command
    from app.identity.passwords import PasswordHasher
    from app.transfer.importer import ImportAbortedError, Importer

    out = sys.stdout
    first = True

    def report(error: RowError) -> None:
        nonlocal first
        if as_json:
            item = {"row": error.row, "field": error.field, "code": error.code}
            item["message"] = error.message
            # The document opens with the first error, so a file rejected as a whole prints none.
            out.write(('{"errors": [\n' if first else ",\n") + json.dumps(item, ensure_ascii=False))
            first = False
        else:
            out.write(_format_error(error) + "\n")

    from app.cli import require_current_schema

    hasher = PasswordHasher(settings)
    try:
        async with database_for_command(settings) as database:
            await require_current_schema(database)
            async with database.sessionmaker() as session:
                importer = Importer(session, hasher, options, progress=progress, report=report)
                try:
                    summary = await importer.run(source)
                except FileFormatError as exc:
                    await session.rollback()
                    click.echo(f"error: {exc}", err=True)
                    return EXIT_USAGE
                except ImportAbortedError as exc:
                    await session.rollback()
                    click.echo(f"error: {exc}", err=True)
                    return EXIT_ABORTED
                except (asyncpg.PostgresError, SQLAlchemyError, OSError, BrokenProcessPool) as exc:
                    logger.exception("import.failed")
                    click.echo(f"error: the import failed and nothing was written: {exc}", err=True)
                    return EXIT_ABORTED
                await session.commit()
    finally:
        hasher.close()

    if as_json:
        opening = '{"errors": [' if first else "\n"
        out.write(opening + '],\n"summary": ' + json.dumps(summary.as_dict()) + "}\n")
    else:
        out.write(_summary_text(summary) + "\n")
    out.flush()
    return EXIT_REJECTED if summary.rows_rejected else 0


def _summary_text(summary: Any) -> str:
    if summary.dry_run:
        outcome = "dry run: nothing was written"
    elif summary.written:
        outcome = f"{summary.rows_imported} users imported"
    elif summary.rows_rejected and summary.skip_invalid:
        outcome = "nothing was written because every row was rejected"
    elif summary.rows_rejected:
        outcome = "nothing was written because rows were rejected (see --skip-invalid)"
    else:
        outcome = "nothing to import"
    return (
        f"{summary.rows_read} rows read, {summary.rows_valid} valid, "
        f"{summary.rows_rejected} rejected; {outcome} ({summary.seconds:.1f} s)"
    )


@click.command("export")
@click.option(
    "--format",
    "file_format",
    type=click.Choice(FORMATS),
    help="Output format; by default taken from --output's extension, else csv.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File to write; standard output when omitted.",
)
@click.option(
    "--include-password-hashes",
    is_flag=True,
    help="Add the password_hash column. Treat the file as a secret.",
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(["active", "disabled"]),
    help="Export only users with this status (repeatable); both by default.",
)
@click.option(
    "--created-from",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S"]),
    help="Export users created at or after this time (UTC when no offset is given).",
)
@click.option(
    "--created-before",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S"]),
    help="Export users created before this time (UTC when no offset is given).",
)
def export_users_command(
    file_format: str | None,
    output: Path | None,
    include_password_hashes: bool,
    statuses: tuple[str, ...],
    created_from: datetime | None,
    created_before: datetime | None,
) -> None:
    """Export users in the import format, ordered by creation time."""
    from app.transfer.exporter import EXPORTABLE_STATUSES, ExportOptions

    if file_format is None:
        try:
            file_format = detect_format(output, None) if output is not None else "csv"
        except FileFormatError:
            file_format = "csv"
    options = ExportOptions(
        file_format=file_format,  # type: ignore[arg-type]
        include_password_hashes=include_password_hashes,
        statuses=statuses or EXPORTABLE_STATUSES,
        created_from=_as_utc(created_from),
        created_before=_as_utc(created_before),
    )
    from app.cli import run_database_command

    settings = _settings()
    count = run_database_command(_run_export(settings, options, output))
    if output is not None:
        click.echo(f"exported to {output} ({count} bytes)", err=True)


def _as_utc(value: datetime | None) -> datetime | None:
    from datetime import UTC

    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


async def _run_export(settings: Any, options: Any, output: Path | None) -> int:
    """Write the export to `output` (standard output when None) and return its size in bytes.

    A regular file is written under a temporary name in the same folder and renamed over
    `output` when complete, so a failed export leaves no partial file there. The file keeps the
    permissions of the one it replaces. Anything else (a symbolic link, a device, a pipe) is
    written in place.
    """
    from app.cli import fail, require_current_schema
    from app.db.engine import database_for_command
    from app.transfer.exporter import export_users

    written = 0
    async with database_for_command(settings) as database:
        await require_current_schema(database)
        if options.include_password_hashes:
            # As the admin API does, recorded before the first hash leaves the store.
            from app.admin.audit import CLI_ACTOR, record_audit_event

            async with database.sessionmaker() as session:
                await record_audit_event(
                    session,
                    actor=CLI_ACTOR,
                    action="users.export_password_hashes",
                    details={"format": options.file_format},
                )
                await session.commit()
        with ExitStack() as stack:
            target: IO[str] = sys.stdout
            temporary: Path | None = None
            if output is not None:
                try:
                    target, temporary = _open_export_file(output, stack)
                except OSError as exc:
                    fail(f"cannot write {output}: {exc.strerror}")
            async with database.sessionmaker() as session:
                async for chunk in export_users(session, options):
                    target.write(chunk)
                    written += len(chunk.encode("utf-8"))
                await session.rollback()
            target.flush()
            if temporary is not None and output is not None:
                target.close()
                temporary.replace(output)
    return written


def _open_export_file(output: Path, stack: ExitStack) -> tuple[IO[str], Path | None]:
    """Open where the export goes: a temporary file beside a regular `output`, else `output`.

    Returns the open file and the temporary path, which is None when writing in place. The
    stack removes the temporary file unless it has been renamed.
    """
    if output.is_symlink() or (output.exists() and not output.is_file()):
        return stack.enter_context(output.open("w", encoding="utf-8", newline="")), None
    descriptor, name = tempfile.mkstemp(
        dir=output.parent, prefix=f".{output.name}.", suffix=".partial"
    )
    temporary = Path(name)
    stack.callback(temporary.unlink, missing_ok=True)
    if output.exists():
        mode = stat.S_IMODE(output.stat().st_mode)
    else:
        # The mode that open() would have given a new file.
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    os.fchmod(descriptor, mode)
    handle = os.fdopen(descriptor, "w", encoding="utf-8", newline="")
    return stack.enter_context(handle), temporary


@click.group("audit")
def audit() -> None:
    """Audit the user store."""


@audit.command("crosslinks")
@click.option(
    "--since-days",
    default=30,
    show_default=True,
    type=click.IntRange(1, 3650),
    help="Look-back window, in days, for callbacks that still ask for erased users.",
)
@click.option(
    "--samples",
    default=10,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Sample groups printed for each kind of finding.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def audit_crosslinks_command(since_days: int, samples: int, as_json: bool) -> None:
    """Report users at risk of being confused with each other; exit 1 when anything is found."""
    from app.cli import run_database_command

    settings = _settings()
    report = run_database_command(_run_audit(settings, since_days, samples))
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
    else:
        click.echo(_audit_text(report))
    sys.exit(1 if report.total else 0)


async def _run_audit(settings: Any, since_days: int, samples: int) -> Any:
    from app.cli import require_current_schema
    from app.db.engine import database_for_command
    from app.transfer.crosslinks import audit_crosslinks

    async with database_for_command(settings) as database:
        await require_current_schema(database)
        async with database.sessionmaker() as session:
            report = await audit_crosslinks(session, since_days=since_days, sample_groups=samples)
            await session.rollback()
    return report


_FINDING_TITLES = {
    "erid_case": "ERIDs equal except for case",
    "erid_confusable": "ERIDs with confusable characters",
    "login_confusable": "logins that look alike (UTS #39 skeleton)",
    "shared_email": "email addresses shared by several users",
    "erased_requested": "erased users still requested by a client",
}


def _audit_text(report: Any) -> str:
    lines = [f"scanned {report.users_scanned} users"]
    for kind, finding in report.findings.items():
        lines.append(f"{_FINDING_TITLES[kind]} [{kind}]: {finding.count}")
        for sample in finding.samples:
            if kind == "erased_requested":
                lines.append(
                    f"  {sample['external_reference_id']} (user_key {sample['user_key']}): "
                    f"{sample['requests']} requests since erasure, last {sample['last_request']}"
                )
                continue
            members = ", ".join(
                str(next(value for name, value in member.items() if name != "user_key"))
                for member in sample["members"]
            )
            lines.append(f"  {sample['users']} users: {members}")
    lines.append("nothing found" if report.total == 0 else f"{report.total} findings: review them")
    return "\n".join(lines)
