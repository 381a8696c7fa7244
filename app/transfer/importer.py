"""Bulk import: validate rows in Python, COPY them to staging tables, check and insert in SQL.

The whole import runs in one transaction of the caller's session (inside a savepoint), so an
import that is interrupted, rejected or run as a dry run leaves the store unchanged:

1. Records are read and validated in batches; each batch goes to TEMP staging tables with
   asyncpg's binary COPY (`copy_records_to_table`) while a thread reads the next one. Row
   errors go to a staging table too, so memory stays flat however many rows fail.
2. Set-based queries find duplicates inside the file (ERIDs compared case-insensitively, logins
   after normalisation, user_keys) and conflicts with existing users and with the ledger of
   issued identifiers.
3. Unless anything was rejected (or `skip_invalid` is set), `INSERT ... SELECT` statements
   copy the accepted rows into users, user_addresses and user_attributes in file order.

The database's own unique indexes and ledger trigger still guard the insert: a user created by
someone else between the check and the insert makes the insert fail, and the import with it.

A plain import of a seekable file first tries a direct path (`Importer._insert_while_reading`):
each batch goes into the live tables as soon as it is validated, inside a savepoint. The first
row error or rejected insert rolls the savepoint back, and the import restarts on the staged
path above, so the report and the result are the same.

When that direct path fills an empty store from a file of at least
`ImportOptions.exclusive_min_bytes`, it follows PostgreSQL's advice for bulk loads
(`_set_aside_checks`). It locks the three user tables, drops the unique constraints and the
indexes of `users` (but not its primary key) and the foreign keys of addresses and attributes,
and recreates them from their catalog definitions after the last batch. PostgreSQL then builds
each index in one sort and checks each foreign key in one join, instead of row by row. The DDL
is part of the import's transaction, so a rolled-back import restores them, and the lock keeps
every other transaction from seeing the tables without them.
"""

# ruff: noqa: S608 - the SQL is assembled from constant column and table names only; values are bind parameters.

from __future__ import annotations

import asyncio
import io
import json
import logging
import multiprocessing
import sys
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import asyncpg
from passlib.context import CryptContext
from sqlalchemy.ext.asyncio import AsyncSession

from app.identity.passwords import ACCEPTED_SCHEMES, PasswordHasher
from app.models.user import ADDRESS_FIELDS
from app.transfer.formats import FileFormat, RawRecord, read_records
from app.transfer.validate import RowError, RowValidator, StagedUser

logger = logging.getLogger(__name__)

DEFAULT_BATCH_ROWS = 5000
_SWITCH_INTERVAL_SECONDS = 0.0005
# Client-side limit for one bulk statement. The engine's asyncpg `command_timeout` is sized
# for requests (seconds), so every call here passes this instead.
BULK_TIMEOUT_SECONDS = 24 * 3600.0

USER_STAGING_COLUMNS = (
    "row_number",
    "valid",
    "user_key",
    "user_key_given",
    "external_reference_id",
    "erid_given",
    "login",
    "login_normalized",
    "email",
    "first_name",
    "last_name",
    "locale",
    "home_phone",
    "status",
    "password_hash",
)
ADDRESS_STAGING_COLUMNS = ("user_key", "kind", *ADDRESS_FIELDS)
ATTRIBUTE_STAGING_COLUMNS = ("user_key", "name", "value")
ERROR_STAGING_COLUMNS = ("row_number", "phase", "field", "code", "message")

# Phase of an error, the second sort key of the report: field checks come before conflicts.
_PHASE_FIELDS = 0
_PHASE_CONFLICTS = 1

_CREATE_STAGING = [
    """
    CREATE TEMP TABLE import_rows (
        row_number integer NOT NULL,
        valid boolean NOT NULL,
        user_key uuid,
        user_key_given boolean NOT NULL,
        external_reference_id text,
        erid_given boolean NOT NULL,
        login text,
        login_normalized text,
        email text,
        first_name text,
        last_name text,
        locale text,
        home_phone text,
        status text,
        password_hash text
    ) ON COMMIT DROP
    """,
    "CREATE TEMP TABLE import_addresses (user_key uuid NOT NULL, kind text NOT NULL, "
    + ", ".join(f"{name} text" for name in ADDRESS_FIELDS)
    + ") ON COMMIT DROP",
    "CREATE TEMP TABLE import_attributes (user_key uuid NOT NULL, name text NOT NULL, "
    "value text NOT NULL) ON COMMIT DROP",
    "CREATE TEMP TABLE import_errors (row_number integer NOT NULL, phase smallint NOT NULL, "
    "field text NOT NULL, code text NOT NULL, message text NOT NULL) ON COMMIT DROP",
    "CREATE TEMP TABLE import_inserted (id bigint NOT NULL, user_key uuid NOT NULL) ON COMMIT DROP",
    # One batch at a time, for the direct path (see Importer._insert_while_reading).
    "CREATE TEMP TABLE import_batch_rows (LIKE import_rows) ON COMMIT DROP",
    "CREATE TEMP TABLE import_batch_addresses (LIKE import_addresses) ON COMMIT DROP",
    "CREATE TEMP TABLE import_batch_attributes (LIKE import_attributes) ON COMMIT DROP",
    "CREATE TEMP TABLE import_batch_inserted (LIKE import_inserted) ON COMMIT DROP",
]
_BATCH_TABLES = (
    "import_batch_rows",
    "import_batch_addresses",
    "import_batch_attributes",
    "import_batch_inserted",
)
_STAGING_TABLES = (
    "import_rows",
    "import_addresses",
    "import_attributes",
    "import_errors",
    "import_inserted",
    *_BATCH_TABLES,
)
_DIRECT_SAVEPOINT = "import_direct"
_SET_ASIDE_SAVEPOINT = "import_set_aside"

# The constraints that an import into an empty store sets aside: those that make `users` rows
# unique, then the foreign keys to `users` from the tables an import fills. Next, the indexes
# of `users` that belong to no constraint. The primary key stays, since the foreign keys refer
# to it. The ledger's indexes stay too, and catch a reused ERID or userKey as each batch goes
# in. Each comes back from its catalog definition, so what is recreated follows the migrations.
_SET_ASIDE_CONSTRAINTS_SQL = """
SELECT conrelid::regclass::text, quote_ident(conname), pg_get_constraintdef(oid)
FROM pg_constraint
WHERE (contype = 'u' AND conrelid = 'users'::regclass)
   OR (contype = 'f' AND confrelid = 'users'::regclass
       AND conrelid IN ('user_addresses'::regclass, 'user_attributes'::regclass))
ORDER BY contype = 'f', conrelid::regclass::text, conname
"""
_SET_ASIDE_INDEXES_SQL = """
SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid)
FROM pg_index
WHERE indrelid = 'users'::regclass
  AND NOT EXISTS (SELECT FROM pg_constraint WHERE conindid = indexrelid)
ORDER BY indexrelid::regclass::text
"""
# Smaller files load row by row even into an empty store: they load quickly either way, so
# they take no lock.
DEFAULT_EXCLUSIVE_MIN_BYTES = 1024 * 1024


def _duplicate_in_file_sql(
    column: str, field_name: str, condition: str, explanation: str, *, shown: str | None = None
) -> str:
    """Build the query that reports every row sharing `column` with another row of the file.

    Each row names one other row: the first one of its group, or the second for the first.
    """
    return f"""
    INSERT INTO import_errors (row_number, phase, field, code, message)
    SELECT row_number, {_PHASE_CONFLICTS}, '{field_name}', 'duplicate_in_file',
           format('{field_name} %s is also in row %s{explanation}; %s rows share it, and '
                  'none of them is imported',
                  value, CASE WHEN row_number = first_row THEN second_row ELSE first_row END,
                  group_size)
    FROM (
        SELECT row_number, {shown or column}::text AS value,
               count(*) OVER w AS group_size,
               first_value(row_number) OVER w AS first_row,
               nth_value(row_number, 2) OVER w AS second_row
        FROM import_rows
        WHERE {condition}
        WINDOW w AS (PARTITION BY {_group_key(column)} ORDER BY row_number
                     ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
    ) grouped
    WHERE group_size > 1
    """


def _group_key(column: str) -> str:
    return "lower(external_reference_id)" if column == "external_reference_id" else column


_CONFLICT_QUERIES = [
    _duplicate_in_file_sql(
        "external_reference_id",
        "external_reference_id",
        "erid_given",
        " (ERIDs are compared case-insensitively)",
    ),
    _duplicate_in_file_sql(
        "login_normalized",
        "login",
        "login_normalized IS NOT NULL",
        " after normalisation (Unicode NFKC and case folding)",
        shown="login",
    ),
    _duplicate_in_file_sql("user_key", "user_key", "user_key_given", ""),
    # The ledger contains every ERID ever issued, so it covers live and erased users alike.
    f"""
    INSERT INTO import_errors (row_number, phase, field, code, message)
    SELECT s.row_number, {_PHASE_CONFLICTS}, 'external_reference_id',
           CASE WHEN u.status IS NULL OR u.status = 'erased'
                THEN 'identifier_reserved' ELSE 'already_exists' END,
           CASE WHEN u.status IS NULL OR u.status = 'erased'
                THEN format('external_reference_id %s was issued to a user who has been erased '
                            'and stays reserved: give this user another ERID',
                            s.external_reference_id)
                ELSE format('external_reference_id %s already belongs to an existing user '
                            '(ERIDs are compared case-insensitively)', s.external_reference_id)
           END
    FROM import_rows s
    JOIN issued_identifiers i ON lower(i.external_reference_id) = lower(s.external_reference_id)
    LEFT JOIN users u ON u.user_key = i.user_key
    WHERE s.erid_given
    """,
    f"""
    INSERT INTO import_errors (row_number, phase, field, code, message)
    SELECT s.row_number, {_PHASE_CONFLICTS}, 'login', 'already_exists',
           format('login %s is already taken by an existing user (logins are compared after '
                  'Unicode NFKC normalisation and case folding)', s.login)
    FROM import_rows s
    JOIN users u ON u.login_normalized = s.login_normalized
    WHERE s.login_normalized IS NOT NULL
    """,
    f"""
    INSERT INTO import_errors (row_number, phase, field, code, message)
    SELECT s.row_number, {_PHASE_CONFLICTS}, 'user_key',
           CASE WHEN u.status IS NULL OR u.status = 'erased'
                THEN 'identifier_reserved' ELSE 'already_exists' END,
           CASE WHEN u.status IS NULL OR u.status = 'erased'
                THEN format('user_key %s was issued to a user who has been erased and stays '
                            'reserved: leave user_key empty to have one generated', s.user_key)
                ELSE format('user_key %s already belongs to an existing user', s.user_key)
           END
    FROM import_rows s
    JOIN issued_identifiers i ON i.user_key = s.user_key
    LEFT JOIN users u ON u.user_key = i.user_key
    WHERE s.user_key_given
    """,
]

_ACCEPTED_ROWS = """
    FROM import_rows s
    WHERE s.valid
      AND NOT EXISTS (SELECT 1 FROM import_errors e WHERE e.row_number = s.row_number)
"""


def _insert_users_sql(accepted_rows: str, inserted_table: str, created_via: str = "$1") -> str:
    return f"""
    WITH inserted AS (
        INSERT INTO users (user_key, external_reference_id, login, login_normalized, email,
                           first_name, last_name, locale, home_phone, status, password_hash,
                           password_changed_at, created_via)
        SELECT s.user_key, s.external_reference_id, s.login, s.login_normalized, s.email,
               s.first_name, s.last_name, s.locale, s.home_phone, s.status, s.password_hash,
               CASE WHEN s.password_hash IS NULL THEN NULL ELSE now() END, {created_via}
        {accepted_rows}
        ORDER BY s.row_number
        RETURNING id, user_key
    )
    INSERT INTO {inserted_table} (id, user_key) SELECT id, user_key FROM inserted
"""


_INSERT_USERS = _insert_users_sql(_ACCEPTED_ROWS, "import_inserted")
# The direct path sends its statements for a batch as one simple query, which takes no bind
# parameters, so `created_via` comes from a transaction-local setting.
_CREATED_VIA_SETTING = "sso_import.created_via"


# Addresses and attributes go in in user id order: their primary keys then grow at the right
# edge, and the foreign-key checks read the users index in order. In user_key order both were
# random, and replaying these two inserts for 1,000,000 staged users on a 2-core machine took
# 7.2 and 4.2 s in id order against 14.2 and 8.9 s in user_key order (docs/benchmarks.md).
def _insert_addresses_sql(addresses_table: str, inserted_table: str) -> str:
    return f"""
    INSERT INTO user_addresses (user_id, kind, {", ".join(ADDRESS_FIELDS)})
    SELECT i.id, a.kind, {", ".join(f"a.{name}" for name in ADDRESS_FIELDS)}
    FROM {addresses_table} a JOIN {inserted_table} i ON i.user_key = a.user_key
    ORDER BY i.id, a.kind
"""


def _insert_attributes_sql(attributes_table: str, inserted_table: str) -> str:
    return f"""
    INSERT INTO user_attributes (user_id, name, value)
    SELECT i.id, a.name, a.value
    FROM {attributes_table} a JOIN {inserted_table} i ON i.user_key = a.user_key
    ORDER BY i.id, a.name
"""


_INSERT_ADDRESSES = _insert_addresses_sql("import_addresses", "import_inserted")
_INSERT_ATTRIBUTES = _insert_attributes_sql("import_attributes", "import_inserted")
# Every row of a batch on the direct path is valid, because a batch with any error ends that
# path. The batch tables are emptied for the next batch in the same round trip.
_INSERT_BATCH = ";\n".join(
    [
        _insert_users_sql(
            "FROM import_batch_rows s",
            "import_batch_inserted",
            created_via=f"current_setting('{_CREATED_VIA_SETTING}')",
        ),
        _insert_addresses_sql("import_batch_addresses", "import_batch_inserted"),
        _insert_attributes_sql("import_batch_attributes", "import_batch_inserted"),
        f"TRUNCATE {', '.join(_BATCH_TABLES)}",
    ]
)

# Memory for each sort and hash of the import's joins, for this transaction only. The server
# default (4 MB) makes the joins of a large import spill to temporary files.
IMPORT_WORK_MEM = "64MB"


class ImportAbortedError(Exception):
    """The database rejected the insert; nothing was written."""


class _DirectPathStopped(Exception):
    """A batch had a row error, so the import continues on the staged path."""


class _StoreNotEmpty(Exception):
    """A user appeared before the lock was granted, so the checks stay in place."""


@dataclass(frozen=True, slots=True)
class ImportOptions:
    file_format: FileFormat
    dry_run: bool = False
    skip_invalid: bool = False
    allow_plain_passwords: bool = False
    batch_rows: int = DEFAULT_BATCH_ROWS
    # Processes that validate rows; 1 validates in the calling process.
    workers: int = 1
    created_via: str = "import"
    actor_name: str = "cli"
    actor_key_id: uuid.UUID | None = None
    source_name: str | None = None
    # Whether a plain import into an empty store may lock the user tables and build their
    # constraints and indexes after loading, for files of at least `exclusive_min_bytes` (see
    # the module's docstring).
    exclusive_load: bool = True
    exclusive_min_bytes: int = DEFAULT_EXCLUSIVE_MIN_BYTES


@dataclass(frozen=True, slots=True)
class _SetAside:
    """Constraints and indexes dropped for a load, with the SQL that recreates each."""

    constraints: list[tuple[str, str, str]]
    indexes: list[tuple[str, str]]


@dataclass(slots=True)
class ImportSummary:
    """Counts of one import; `written` is True only when users were inserted."""

    rows_read: int = 0
    rows_valid: int = 0
    rows_rejected: int = 0
    rows_imported: int = 0
    errors: int = 0
    errors_by_code: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False
    skip_invalid: bool = False
    written: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows_read": self.rows_read,
            "rows_valid": self.rows_valid,
            "rows_rejected": self.rows_rejected,
            "rows_imported": self.rows_imported,
            "errors": self.errors,
            "errors_by_code": dict(sorted(self.errors_by_code.items())),
            "dry_run": self.dry_run,
            "skip_invalid": self.skip_invalid,
            "written": self.written,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True, slots=True)
class Progress:
    """Progress of an import for a display: the phase and the number of records read."""

    phase: str
    rows_read: int
    elapsed: float


ProgressCallback = Callable[[Progress], None]
ReportCallback = Callable[[RowError], Awaitable[None] | None]


async def raw_connection(session: AsyncSession) -> asyncpg.Connection:
    """Return the asyncpg connection under `session`, inside the session's transaction."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    assert isinstance(driver, asyncpg.Connection)
    if not driver.is_in_transaction():
        # SQLAlchemy's asyncpg adapter sends BEGIN only before its own first statement, so a
        # raw statement here would otherwise run outside the transaction.
        await connection.exec_driver_sql("SELECT 1")
    if not driver.is_in_transaction():
        raise RuntimeError("the session did not open a transaction on its connection")
    return driver


def _batches(records: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for record in records:
        batch.append(record)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass(slots=True)
class CopyRecords:
    """The rows of one batch for the user, address and attribute staging tables."""

    users: list[tuple[Any, ...]]
    addresses: list[tuple[Any, ...]]
    attributes: list[tuple[Any, ...]]


def copy_records(users: list[StagedUser]) -> CopyRecords:
    return CopyRecords(
        users=[user.user_record() for user in users],
        addresses=[
            (user.user_key, *address) for user in users if user.valid for address in user.addresses
        ],
        attributes=[
            (user.user_key, name, value)
            for user in users
            if user.valid
            for name, value in user.attributes
        ],
    )


@dataclass(slots=True)
class BatchResult:
    users: list[StagedUser]
    errors: list[RowError]
    rows_read: int
    rows_valid: int
    # Filled in the validating thread when nothing changes the users before the COPY.
    records: CopyRecords | None = None


def validate_batch(validator: RowValidator, batch: list[RawRecord]) -> BatchResult:
    """Validate one batch of records; runs in this process or in a worker."""
    result = BatchResult(users=[], errors=[], rows_read=len(batch), rows_valid=0)
    for record in batch:
        if record.data is None:
            result.errors.append(
                RowError(record.row, "row", "malformed_row", record.error or "unreadable record")
            )
            continue
        staged, row_errors = validator.validate(record.row, record.data)
        result.users.append(staged)
        result.errors.extend(row_errors)
        if staged.valid:
            result.rows_valid += 1
    return result


def _validate_next(
    validator: RowValidator, batches: Iterator[list[RawRecord]], prepare_records: bool
) -> BatchResult | None:
    """Read and validate the next batch. Returns None at the end of the file."""
    batch = next(batches, None)
    if batch is None:
        return None
    result = validate_batch(validator, batch)
    if prepare_records:
        result.records = copy_records(result.users)
    return result


async def copy_batch(
    connection: asyncpg.Connection,
    records: CopyRecords,
    errors: list[RowError],
    *,
    batch_tables: bool = False,
) -> None:
    """COPY a batch's records into the staging tables, or the direct path's batch tables."""
    prefix = "import_batch_" if batch_tables else "import_"
    for table, rows, columns in (
        ("rows", records.users, USER_STAGING_COLUMNS),
        ("addresses", records.addresses, ADDRESS_STAGING_COLUMNS),
        ("attributes", records.attributes, ATTRIBUTE_STAGING_COLUMNS),
    ):
        if rows:
            await connection.copy_records_to_table(
                prefix + table, records=rows, columns=columns, timeout=BULK_TIMEOUT_SECONDS
            )
    if errors:
        await connection.copy_records_to_table(
            "import_errors",
            records=[
                (error.row, _PHASE_FIELDS, error.field, error.code, error.message)
                for error in errors
            ],
            columns=ERROR_STAGING_COLUMNS,
            timeout=BULK_TIMEOUT_SECONDS,
        )


# The event loop's thread sends each COPY and statement while the validating thread holds the
# GIL most of the time. A switch interval shorter than CPython's 5 ms default hands the GIL back
# sooner, so PostgreSQL waits less between round trips. The interval is process-wide and imports
# can overlap in the service, so the first import to start sets it and the last to finish
# restores it. Both run on the event loop's thread.
_switch_interval_users = 0
_saved_switch_interval = 0.0


def _shorten_switch_interval() -> None:
    global _switch_interval_users, _saved_switch_interval
    if _switch_interval_users == 0:
        _saved_switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(_saved_switch_interval, _SWITCH_INTERVAL_SECONDS))
    _switch_interval_users += 1


def _restore_switch_interval() -> None:
    global _switch_interval_users
    _switch_interval_users -= 1
    if _switch_interval_users == 0:
        sys.setswitchinterval(_saved_switch_interval)


_worker_validator: RowValidator | None = None


def _start_worker(allow_plain_passwords: bool, min_length: int, max_length: int) -> None:
    global _worker_validator
    # Parsing a hash needs only the schemes, not the argon2 parameters of new hashes.
    context = CryptContext(schemes=list(ACCEPTED_SCHEMES))
    _worker_validator = RowValidator(
        context,
        allow_plain_passwords=allow_plain_passwords,
        password_min_length=min_length,
        password_max_length=max_length,
    )


def _validate_in_worker(batch: list[RawRecord]) -> BatchResult:
    assert _worker_validator is not None, "the worker initializer did not run"
    return validate_batch(_worker_validator, batch)


class Importer:
    """Run one import in the caller's session; the caller commits afterwards.

    The report is delivered to `report` one error at a time, in row order, before the import's
    savepoint is released or rolled back.
    """

    def __init__(
        self,
        session: AsyncSession,
        hasher: PasswordHasher,
        options: ImportOptions,
        *,
        progress: ProgressCallback | None = None,
        report: ReportCallback | None = None,
    ) -> None:
        self.session = session
        self.hasher = hasher
        self.options = options
        self.progress = progress
        self.report = report
        self.summary = ImportSummary(dry_run=options.dry_run, skip_invalid=options.skip_invalid)
        self.validator = RowValidator(
            hasher.context,
            allow_plain_passwords=options.allow_plain_passwords,
            password_min_length=hasher.min_length,
            password_max_length=hasher.max_length,
        )
        self._started = 0.0

    def _tick(self, phase: str) -> None:
        if self.progress is not None:
            elapsed = time.monotonic() - self._started
            self.progress(Progress(phase, self.summary.rows_read, elapsed))

    async def run(self, source: BinaryIO) -> ImportSummary:
        """Import the records in `source`; raises FileFormatError before writing for a bad file."""
        self._started = time.monotonic()
        savepoint = await self.session.begin_nested()
        try:
            connection = await raw_connection(self.session)
            # One import may run far longer than the service's per-statement limit; SET LOCAL
            # lifts it for this transaction only.
            await connection.execute(
                "SET LOCAL statement_timeout = 0", timeout=BULK_TIMEOUT_SECONDS
            )
            await connection.execute(
                f"SET LOCAL work_mem = '{IMPORT_WORK_MEM}'", timeout=BULK_TIMEOUT_SECONDS
            )
            for statement in (f"DROP TABLE IF EXISTS {name}" for name in _STAGING_TABLES):
                await connection.execute(statement, timeout=BULK_TIMEOUT_SECONDS)
            for statement in _CREATE_STAGING:
                await connection.execute(statement, timeout=BULK_TIMEOUT_SECONDS)
            if not await self._insert_while_reading(connection, source):
                await self._stage(connection, self._records(source))
                await self._find_conflicts(connection)
                should_write = not self.options.dry_run and (
                    self.summary.rows_rejected == 0 or self.options.skip_invalid
                )
                if should_write and self.summary.rows_read - self.summary.rows_rejected > 0:
                    await self._insert(connection)
                await self._deliver_report(connection)
            for name in _STAGING_TABLES:
                await connection.execute(f"DROP TABLE {name}", timeout=BULK_TIMEOUT_SECONDS)
        except BaseException:
            if savepoint.is_active:
                await savepoint.rollback()
            raise
        if self.summary.written:
            await savepoint.commit()
        else:
            await savepoint.rollback()
        self.summary.seconds = time.monotonic() - self._started
        self._tick("done")
        return self.summary

    def _records(self, source: BinaryIO) -> Iterator[RawRecord]:
        return read_records(
            source,
            self.options.file_format,
            allow_plain_passwords=self.options.allow_plain_passwords,
        )

    def _direct_path_allowed(self, source: BinaryIO) -> bool:
        options = self.options
        if options.dry_run or options.skip_invalid or options.workers > 1:
            return False
        # The direct path inserts rows as validated and never hashes plain passwords (the
        # staged path does, in `_load`), so such files take the staged path only.
        if options.allow_plain_passwords:
            return False
        return source.seekable()

    async def _insert_while_reading(self, connection: asyncpg.Connection, source: BinaryIO) -> bool:
        """Insert each batch into the live tables as soon as it is read; False if not done.

        The staged path finds every conflict before inserting, so PostgreSQL inserts only after
        the whole file is read. Here each batch is inserted while the next one is validated,
        inside a savepoint. The first batch with a row error ends this path, and so does a row
        that a unique index or the ledger trigger rejects. The savepoint is then rolled back,
        and the caller reads the file again from where it started, on the staged path, which
        reports every error. Success means that the staged path would have found nothing.
        """
        if not self._direct_path_allowed(source):
            return False
        start = source.tell()
        size = source.seek(0, io.SEEK_END) - start
        source.seek(start)
        records = self._records(source)
        await connection.execute(f"SAVEPOINT {_DIRECT_SAVEPOINT}", timeout=BULK_TIMEOUT_SECONDS)
        await connection.execute(
            "SELECT set_config($1, $2, true)",
            _CREATED_VIA_SETTING,
            self.options.created_via,
            timeout=BULK_TIMEOUT_SECONDS,
        )
        try:
            set_aside = await self._set_aside_checks(connection, size)
            await self._stage_in_thread(
                connection,
                _batches(records, self.options.batch_rows),
                self._insert_batch,
                prepare_records=True,
                send=self._copy_batch,
            )
            if set_aside is not None:
                self._tick("indexing")
                await _restore_checks(connection, set_aside)
        except (_DirectPathStopped, asyncpg.IntegrityConstraintViolationError) as exc:
            logger.info(
                "import.direct_path_stopped reason=%s rows_read=%d",
                getattr(exc, "constraint_name", None) or "row_error",
                self.summary.rows_read,
            )
            await connection.execute(
                f"ROLLBACK TO SAVEPOINT {_DIRECT_SAVEPOINT}", timeout=BULK_TIMEOUT_SECONDS
            )
            await connection.execute(
                f"RELEASE SAVEPOINT {_DIRECT_SAVEPOINT}", timeout=BULK_TIMEOUT_SECONDS
            )
            close = getattr(records, "close", None)
            if close is not None:
                close()
            source.seek(start)
            self.summary = ImportSummary(
                dry_run=self.options.dry_run, skip_invalid=self.options.skip_invalid
            )
            self._tick("reading")
            return False
        await connection.execute(
            f"RELEASE SAVEPOINT {_DIRECT_SAVEPOINT}", timeout=BULK_TIMEOUT_SECONDS
        )
        if self.summary.rows_imported > 0:
            self.summary.written = True
            await self._record_audit_event(connection)
        return True

    async def _set_aside_checks(
        self, connection: asyncpg.Connection, size: int
    ) -> _SetAside | None:
        """Drop the constraints and indexes that `_restore_checks` rebuilds; None if kept.

        This happens only in an empty store, for a file of at least `exclusive_min_bytes`. The
        lock is taken with NOWAIT, after a first look without it, so that an import never
        queues for a lock that other transactions would then queue behind. Any other
        transaction that uses the tables, a user that exists, or a role that may not alter the
        tables leaves everything in place, and the import checks row by row as usual.
        """
        if not self.options.exclusive_load or size < self.options.exclusive_min_bytes:
            return None
        if await connection.fetchval("SELECT EXISTS (SELECT FROM users)"):
            return None
        await connection.execute(f"SAVEPOINT {_SET_ASIDE_SAVEPOINT}")
        try:
            await connection.execute(
                "LOCK TABLE users, user_addresses, user_attributes IN ACCESS EXCLUSIVE MODE NOWAIT"
            )
            if await connection.fetchval("SELECT EXISTS (SELECT FROM users)"):
                raise _StoreNotEmpty
            set_aside = _SetAside(
                constraints=[
                    (table, name, definition)
                    for table, name, definition in await connection.fetch(
                        _SET_ASIDE_CONSTRAINTS_SQL
                    )
                ],
                indexes=[
                    (name, definition)
                    for name, definition in await connection.fetch(_SET_ASIDE_INDEXES_SQL)
                ],
            )
            for table, name, _ in reversed(set_aside.constraints):
                await connection.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
            for name, _ in set_aside.indexes:
                await connection.execute(f"DROP INDEX {name}")
        except (
            _StoreNotEmpty,
            asyncpg.LockNotAvailableError,
            asyncpg.InsufficientPrivilegeError,
        ) as exc:
            logger.info("import.exclusive_load_skipped reason=%s", type(exc).__name__)
            await connection.execute(f"ROLLBACK TO SAVEPOINT {_SET_ASIDE_SAVEPOINT}")
            await connection.execute(f"RELEASE SAVEPOINT {_SET_ASIDE_SAVEPOINT}")
            return None
        await connection.execute(f"RELEASE SAVEPOINT {_SET_ASIDE_SAVEPOINT}")
        logger.info(
            "import.exclusive_load constraints=%d indexes=%d",
            len(set_aside.constraints),
            len(set_aside.indexes),
        )
        return set_aside

    async def _copy_batch(self, connection: asyncpg.Connection, result: BatchResult) -> None:
        self.summary.rows_read += result.rows_read
        self.summary.rows_valid += result.rows_valid
        if result.errors:
            raise _DirectPathStopped
        if result.users:
            records = result.records or copy_records(result.users)
            await copy_batch(connection, records, [], batch_tables=True)

    async def _insert_batch(self, connection: asyncpg.Connection, result: BatchResult) -> None:
        if result.users:
            # The users statement inserts every row of the batch or raises.
            await connection.execute(_INSERT_BATCH, timeout=BULK_TIMEOUT_SECONDS)
            self.summary.rows_imported += len(result.users)
        self._tick("inserting while reading")

    async def _stage(self, connection: asyncpg.Connection, records: Iterator[Any]) -> None:
        batches = _batches(records, self.options.batch_rows)
        if self.options.workers <= 1:
            await self._stage_in_thread(connection, batches, self._load)
            return
        # Worker processes validate the next batches while this process parses the file and
        # runs COPY; results are loaded in file order.
        loop = asyncio.get_running_loop()
        pool = ProcessPoolExecutor(
            max_workers=self.options.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(
                self.options.allow_plain_passwords,
                self.hasher.min_length,
                self.hasher.max_length,
            ),
        )
        with pool:
            in_flight: deque[asyncio.Future[BatchResult]] = deque()
            for batch in batches:
                in_flight.append(loop.run_in_executor(pool, _validate_in_worker, batch))
                if len(in_flight) > self.options.workers:
                    await self._load(connection, await in_flight.popleft())
            while in_flight:
                await self._load(connection, await in_flight.popleft())

    async def _stage_in_thread(
        self,
        connection: asyncpg.Connection,
        batches: Iterator[list[RawRecord]],
        load: Callable[[asyncpg.Connection, BatchResult], Awaitable[None]],
        *,
        prepare_records: bool = False,
        send: Callable[[asyncpg.Connection, BatchResult], Awaitable[None]] | None = None,
    ) -> None:
        """Read and validate each batch in a thread while `load` runs for the previous one.

        PostgreSQL then works on one batch while Python parses and checks the next, so the two
        use two cores. Batches are loaded in file order, one at a time.

        `send`, if given, runs for each batch before the next batch's validation starts, and
        `load` after it. It suits a COPY: asyncpg encodes the COPY rows on the event loop's
        thread, and a validating thread would take the GIL from it about half the time while
        PostgreSQL waits for the rows. Apart from the validation, the direct path's COPYs of
        200,000 users took a quarter of the time (docs/benchmarks.md, "Bulk import").
        """
        loop = asyncio.get_running_loop()
        loading: asyncio.Task[None] | None = None
        validating: asyncio.Future[BatchResult | None] | None = None
        _shorten_switch_interval()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="import-validate") as executor:
            try:
                while True:
                    validating = loop.run_in_executor(
                        executor, _validate_next, self.validator, batches, prepare_records
                    )
                    result = await validating
                    validating = None
                    if loading is not None:
                        await loading
                        loading = None
                    if result is None:
                        return
                    if send is not None:
                        # A task, like `load`, so that the `finally` below lets it finish.
                        loading = asyncio.ensure_future(send(connection, result))
                        await loading
                    loading = asyncio.ensure_future(load(connection, result))
            finally:
                if loading is not None:
                    # Let a COPY in progress finish before the caller rolls back, so the
                    # connection is not left in the middle of the COPY protocol.
                    await asyncio.gather(loading, return_exceptions=True)
                if validating is not None:
                    # Leaving the executor joins its thread. Waiting for the batch here first
                    # keeps a cancelled import from blocking the event loop in that join.
                    await asyncio.gather(validating, return_exceptions=True)
                _restore_switch_interval()

    async def _load(self, connection: asyncpg.Connection, result: BatchResult) -> None:
        self.summary.rows_read += result.rows_read
        self.summary.rows_valid += result.rows_valid
        await self._hash_plain_passwords(result.users)
        await copy_batch(connection, copy_records(result.users), result.errors)
        self._tick("reading")

    async def _hash_plain_passwords(self, users: list[StagedUser]) -> None:
        pending = [user for user in users if user.valid and user.plain_password is not None]
        # The hasher's thread pool bounds how many hashes run at once.
        hashes = await asyncio.gather(
            *(self.hasher.hash(user.plain_password or "") for user in pending)
        )
        for user, password_hash in zip(pending, hashes, strict=True):
            user.password_hash = password_hash
            user.plain_password = None

    async def _find_conflicts(self, connection: asyncpg.Connection) -> None:
        self._tick("checking")
        await connection.execute("ANALYZE import_rows", timeout=BULK_TIMEOUT_SECONDS)
        for query in _CONFLICT_QUERIES:
            await connection.execute(query, timeout=BULK_TIMEOUT_SECONDS)
        rows = await connection.fetch(
            "SELECT code, count(*) AS errors FROM import_errors GROUP BY code",
            timeout=BULK_TIMEOUT_SECONDS,
        )
        self.summary.errors_by_code = {row["code"]: row["errors"] for row in rows}
        self.summary.errors = sum(self.summary.errors_by_code.values())
        self.summary.rows_rejected = await connection.fetchval(
            "SELECT count(DISTINCT row_number) FROM import_errors", timeout=BULK_TIMEOUT_SECONDS
        )
        # Rows that passed their own checks but conflict with another row or an existing user
        # are rejected too, so they no longer count as valid.
        self.summary.rows_valid = self.summary.rows_read - self.summary.rows_rejected

    async def _insert(self, connection: asyncpg.Connection) -> None:
        self._tick("inserting")
        try:
            await connection.execute(
                _INSERT_USERS, self.options.created_via, timeout=BULK_TIMEOUT_SECONDS
            )
            await connection.execute(_INSERT_ADDRESSES, timeout=BULK_TIMEOUT_SECONDS)
            await connection.execute(_INSERT_ATTRIBUTES, timeout=BULK_TIMEOUT_SECONDS)
        except asyncpg.IntegrityConstraintViolationError as exc:
            logger.warning("import.aborted constraint=%s", getattr(exc, "constraint_name", None))
            raise ImportAbortedError(
                "the database rejected the insert because a user with one of the file's logins "
                "or ERIDs was created while the import ran; nothing was written: run the "
                "import again"
            ) from None
        self.summary.rows_imported = await connection.fetchval(
            "SELECT count(*) FROM import_inserted", timeout=BULK_TIMEOUT_SECONDS
        )
        self.summary.written = self.summary.rows_imported > 0
        await self._record_audit_event(connection)

    async def _record_audit_event(self, connection: asyncpg.Connection) -> None:
        await connection.execute(
            "INSERT INTO audit_events (actor_key_id, actor_name, action, details) "
            "VALUES ($1, $2, 'users.import', $3::jsonb)",
            self.options.actor_key_id,
            self.options.actor_name,
            json.dumps(
                {
                    "source": self.options.source_name,
                    "format": self.options.file_format,
                    "rows_read": self.summary.rows_read,
                    "rows_imported": self.summary.rows_imported,
                    "rows_rejected": self.summary.rows_rejected,
                }
            ),
        )

    async def _deliver_report(self, connection: asyncpg.Connection) -> None:
        if self.report is None or self.summary.errors == 0:
            return
        async for error in _report_rows(connection):
            outcome = self.report(error)
            if outcome is not None:
                await outcome


async def _restore_checks(connection: asyncpg.Connection, set_aside: _SetAside) -> None:
    """Recreate what `Importer._set_aside_checks` dropped; a foreign key is checked on adding."""
    for _, definition in set_aside.indexes:
        await connection.execute(definition, timeout=BULK_TIMEOUT_SECONDS)
    for table, name, definition in set_aside.constraints:
        await connection.execute(
            f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition}",
            timeout=BULK_TIMEOUT_SECONDS,
        )


async def _report_rows(connection: asyncpg.Connection) -> AsyncIterator[RowError]:
    query = (
        "SELECT row_number, field, code, message FROM import_errors "
        "ORDER BY row_number, phase, field, code"
    )
    async for row in connection.cursor(query, prefetch=2000, timeout=BULK_TIMEOUT_SECONDS):
        yield RowError(row["row_number"], row["field"], row["code"], row["message"])
