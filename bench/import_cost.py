"""PostgreSQL CPU time of an import's inserts, with each of the store's guarantees removed in turn.

    .venv/bin/python bench/import_cost.py --file users-200000.csv [--rounds 3]

Reads and validates the file once, in memory. Then, once per variant and round, it loads the
rows into a fresh migrated database with the statements of the import's direct path: a binary
COPY of each batch into temporary tables, then one `INSERT ... SELECT` per table. Only the load
is timed. Each line gives the wall time and the CPU time of the PostgreSQL backend, read with
psutil, so the server must run on this machine. Variants run in turn within each round, so
that a slow spell of the machine affects all of them alike.

| variant | removed before the load |
|---|---|
| full | nothing: the schema as the migrations make it |
| no-ledger | the trigger that records each issued user_key and ERID |
| no-foreign-keys | the foreign keys of user_addresses and user_attributes to users |
| no-search-indexes | the indexes on lower(email) and lower(last_name) |
| bare | all three |
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import psutil

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

from run import create_database, drop_database, migrate  # noqa: E402

NO_LEDGER = ["DROP TRIGGER users_record_identifiers ON users"]
NO_FOREIGN_KEYS = [
    "ALTER TABLE user_addresses DROP CONSTRAINT fk_user_addresses_user_id_users",
    "ALTER TABLE user_attributes DROP CONSTRAINT fk_user_attributes_user_id_users",
]
NO_SEARCH_INDEXES = ["DROP INDEX ix_users_email_lower", "DROP INDEX ix_users_last_name_lower"]
VARIANTS: dict[str, list[str]] = {
    "full": [],
    "no-ledger": NO_LEDGER,
    "no-foreign-keys": NO_FOREIGN_KEYS,
    "no-search-indexes": NO_SEARCH_INDEXES,
    "bare": NO_LEDGER + NO_FOREIGN_KEYS + NO_SEARCH_INDEXES,
}


def backend_cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def read_batches(path: Path, batch_rows: int) -> list[Any]:
    """Validate the file as the importer does and return the COPY records of each batch."""
    from passlib.context import CryptContext

    from app.identity.passwords import ACCEPTED_SCHEMES
    from app.transfer import importer
    from app.transfer.formats import detect_format, read_records
    from app.transfer.validate import RowValidator

    validator = RowValidator(
        CryptContext(schemes=list(ACCEPTED_SCHEMES)),
        allow_plain_passwords=False,
        password_min_length=8,
        password_max_length=128,
    )
    batches = []
    with path.open("rb") as source:
        records = read_records(source, detect_format(path, None))
        for batch in importer._batches(records, batch_rows):
            result = importer.validate_batch(validator, batch)
            if result.errors:
                raise SystemExit(
                    f"{path} has row errors. Generate a file without planted conflicts."
                )
            batches.append(importer.copy_records(result.users))
    return batches


async def load_once(server: str, batches: list[Any], removed: list[str]) -> tuple[float, float]:
    from app.transfer import importer

    name, url = await create_database(server)
    try:
        await asyncio.to_thread(migrate, url)
        connection = await asyncpg.connect(url)
        try:
            for statement in removed:
                await connection.execute(statement)
            pid = await connection.fetchval("SELECT pg_backend_pid()")
            await connection.execute("BEGIN")
            await connection.execute(f"SET LOCAL work_mem = '{importer.IMPORT_WORK_MEM}'")
            for statement in importer._CREATE_STAGING:
                await connection.execute(statement)
            await connection.execute(
                f"SELECT set_config('{importer._CREATED_VIA_SETTING}', 'import', true)"
            )
            cpu_before = backend_cpu_seconds(pid)
            started = time.monotonic()
            for records in batches:
                await importer.copy_batch(connection, records, [], batch_tables=True)
                await connection.execute(importer._INSERT_BATCH)
            await connection.execute("COMMIT")
            wall = time.monotonic() - started
            return wall, backend_cpu_seconds(pid) - cpu_before
        finally:
            await connection.close()
    finally:
        await drop_database(server, name)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, required=True, help="CSV or NDJSON without conflicts")
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-rows", type=int, default=5000)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    options = parser.parse_args()
    chosen = options.variants.split(",")
    batches = read_batches(options.file, options.batch_rows)
    users = sum(len(records.users) for records in batches)
    print(f"{users} users; load average before: {os.getloadavg()}")
    cpu: dict[str, list[float]] = {name: [] for name in chosen}
    for round_number in range(1, options.rounds + 1):
        for name in chosen:
            wall, seconds = await load_once(options.server, batches, VARIANTS[name])
            cpu[name].append(seconds)
            print(
                f"round {round_number} {name:18s} wall {wall:6.1f} s  backend CPU {seconds:6.1f} s"
            )
    full = statistics.median(cpu["full"]) if "full" in cpu else None
    print("median backend CPU per user:")
    for name in chosen:
        median = statistics.median(cpu[name])
        share = f"  {median / full:5.2f} of full" if full else ""
        print(f"  {name:18s} {median / users * 1e6:6.1f} µs{share}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    asyncio.run(main())
