"""Helpers shared by the import, export and cross-link audit tests."""



from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.url import render
from app.identity.passwords import PasswordHasher
from app.transfer.importer import Importer, ImportOptions, ImportSummary, ProgressCallback
from app.transfer.validate import RowError

PROJECT_ROOT = Path(__file__).resolve().parents[1]


async def run_import(
    session: AsyncSession,
    hasher: PasswordHasher,
    content: str | bytes,
    file_format: str = "csv",
    progress: ProgressCallback | None = None,
    **options: Any,
) -> tuple[ImportSummary, list[RowError]]:
    """Import `content` in the test's session and return the summary and the report."""
    errors: list[RowError] = []
    data = content.encode("utf-8") if isinstance(content, str) else content
    importer = Importer(
        session,
        hasher,
        ImportOptions(file_format=file_format, **options),  # type: ignore[arg-type]
        progress=progress,
        report=errors.append,
    )
    summary = await importer.run(io.BytesIO(data))
    await session.commit()
    return summary, errors


def cli_environment(database_url: URL) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("SSO_")}
    environment.update(
        SSO_DATABASE_URL=render(database_url.set(drivername="postgresql")),
        SSO_ENVIRONMENT="development",
        SSO_LOG_FORMAT="console",
        SSO_LOG_LEVEL="warning",
    )
    return environment


def run_cli(
    database_url: URL, *arguments: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `sso-provider` in a subprocess against `database_url` and return its result."""
    return subprocess.run(
        [str(Path(sys.executable).with_name("sso-provider")), *arguments],
        cwd=PROJECT_ROOT,
        env=cli_environment(database_url),
        input=stdin.decode("utf-8") if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


# Every constraint and index of the tables an import fills, with its OID. The definitions are
# what the store guarantees, and a changed OID shows that an import dropped and recreated it.
_CHECKS_SQL = """
SELECT conrelid::regclass::text, conname::text, pg_get_constraintdef(oid), oid::bigint
FROM pg_constraint
WHERE conrelid IN ('users'::regclass, 'user_addresses'::regclass, 'user_attributes'::regclass)
UNION ALL
SELECT indrelid::regclass::text, indexrelid::regclass::text, pg_get_indexdef(indexrelid),
       indexrelid::bigint
FROM pg_index
WHERE indrelid IN ('users'::regclass, 'user_addresses'::regclass, 'user_attributes'::regclass)
"""


async def store_checks(connection: Any) -> dict[tuple[str, str, str], int]:
    """Map each constraint's and index's (table, name, definition) to its OID.

    `connection` is an asyncpg connection.
    """
    rows = await connection.fetch(_CHECKS_SQL)
    return {(table, name, definition): oid for table, name, definition, oid in rows}
