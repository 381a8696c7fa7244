"""Instructions per RemoteUserFetch through the app's ASGI stack, counted with callgrind.

    .venv/bin/python bench/fetch_instructions.py [--database-url postgresql://...] [--calls 500]

Wall and CPU times on a shared 2-core machine vary by a tenth from one run to the next, which
hides a change of a few microseconds per request. Instruction counts vary far less: with
Python's hash seed fixed, two runs of the same code gave counts within 0.3 % of each other.
This script creates and seeds a database as bench/run.py does, then runs the service's worker
code twice under valgrind's callgrind, once with 100 fetches and once with 100 + `--calls`, and
prints the difference divided by `--calls`. Start-up, imports and the app's lifespan cancel
out. Each fetch is `bench/fetch_cost.py`'s in-process request, with the access line written as
JSON at INFO to /dev/null.

Needs valgrind (Debian's package). Each run takes about a minute and a half on 2 cores for the
default 500 calls. The database is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

from fetch_cost import USERS, post_profile  # noqa: E402
from run import (  # noqa: E402
    RUM_USERNAME,
    basic_authorization,
    create_database,
    drop_database,
    migrate,
    seed_users,
)

BASELINE_CALLS = 100
WARM_UP_CALLS = 20
PASSWORD = "fetch-instructions-password-0123"
_TOTALS = re.compile(r"^(?:summary|totals): (\d+)", re.MULTILINE)


async def run_fetches(database_url: str, calls: int) -> None:
    """Serve `calls` profile fetches in this process, after a warm-up that both runs share."""
    from app.main import create_app
    from app.ops.logging import configure_logging
    from app.settings import Settings

    settings = Settings(
        environment="production",
        database_url=database_url,
        rum_username=RUM_USERNAME,
        rum_password=PASSWORD,
        log_level="info",
        log_format="json",
    )
    configure_logging(settings)
    app = create_app(settings)
    authorization = basic_authorization(PASSWORD)
    async with app.router.lifespan_context(app):
        for number in range(WARM_UP_CALLS):
            if await post_profile(app, authorization, number) != 200:
                raise SystemExit("the warm-up profile fetch failed: its status was not 200")
        for number in range(calls):
            await post_profile(app, authorization, number)


def count_instructions(database_url: str, calls: int, workdir: Path) -> int:
    """Run `calls` fetches under callgrind and return the instructions it counted."""
    output = workdir / f"callgrind.{calls}.out"
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={output}",
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--database-url",
        database_url,
        "--calls",
        str(calls),
    ]
    # A fixed hash seed, so that string hashing and set order do not vary between the runs.
    environment = {**os.environ, "PYTHONHASHSEED": "0"}
    with open(os.devnull, "wb") as discard:
        subprocess.run(command, check=True, stdout=discard, stderr=discard, env=environment)
    match = _TOTALS.search(output.read_text(encoding="utf-8", errors="replace"))
    if match is None:
        raise SystemExit(f"callgrind wrote no instruction total to {output}: check valgrind")
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL server to create the benchmark database on, or with --worker, the "
        "seeded database itself (default: %(default)s)",
    )
    parser.add_argument("--calls", type=int, default=500, help="fetches counted (default: 500)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        asyncio.run(run_fetches(options.database_url, options.calls))
        return

    name, database_url = asyncio.run(create_database(options.database_url))
    try:
        migrate(database_url)
        asyncio.run(seed_users(database_url, USERS))
        with tempfile.TemporaryDirectory(prefix="fetch-instructions-") as folder:
            workdir = Path(folder)
            baseline = count_instructions(database_url, BASELINE_CALLS, workdir)
            measured = count_instructions(database_url, BASELINE_CALLS + options.calls, workdir)
    finally:
        asyncio.run(drop_database(options.database_url, name))
    per_call = (measured - baseline) / options.calls
    print(f"instructions per RemoteUserFetch: {per_call:,.0f} ({options.calls} calls)")


if __name__ == "__main__":
    main()
