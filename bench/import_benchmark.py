"""Measure `sso-provider users import` on a generated file: users per second and peak memory.

    .venv/bin/python bench/import_benchmark.py --count 1000000 \\
        --server postgresql://postgres@127.0.0.1:5432/postgres

Creates a fresh database on the server (dropped afterwards unless --keep) and applies the
migrations. Generates the file with bench/generate_users.py unless --file names one. Runs the
import as a subprocess and samples the resident memory of the importer and its children every
50 ms. Prints one JSON object with the timings, the phase start times taken from the progress
lines, the peak resident memory of the importer process and of its whole process tree, and the
CPU time of the importer and of its PostgreSQL backends.
"""

# ruff: noqa: S108 - a benchmark that runs this project's own commands in a scratch folder

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import asyncpg
import psutil

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from app.db.url import to_async_url, to_libpq_dsn  # noqa: E402


class MemorySampler(threading.Thread):
    """Poll the resident set size of a process and its children until it exits.

    Also records the CPU time of the importer and of the PostgreSQL backends serving the
    benchmark database, found by the database name in their process title. Those are visible
    only when the server runs on this machine; otherwise the backend CPU time stays 0.
    """

    def __init__(self, pid: int, database: str, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.database = database
        self.interval = interval
        self.peak_main = 0
        self.peak_tree = 0
        self.importer_cpu_seconds = 0.0
        self.backend_cpu_seconds: dict[int, float] = {}
        self._backends: list[psutil.Process] = []
        self._done = threading.Event()

    def run(self) -> None:
        samples = 0
        while not self._done.is_set():
            try:
                main = self.process.memory_info().rss
                tree = main + sum(
                    child.memory_info().rss for child in self.process.children(recursive=True)
                )
                times = self.process.cpu_times()
                self.importer_cpu_seconds = times.user + times.system
            except psutil.Error:
                return
            self.peak_main = max(self.peak_main, main)
            self.peak_tree = max(self.peak_tree, tree)
            if samples % 20 == 0:  # a new backend appears only when the importer connects
                self._backends = self._find_backends()
            self._sample_backends()
            samples += 1
            time.sleep(self.interval)

    def _find_backends(self) -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter(["name", "cmdline"]):
            title = " ".join(process.info["cmdline"] or [])
            if process.info["name"] == "postgres" and f" {self.database} " in title:
                found.append(process)
        return found

    def _sample_backends(self) -> None:
        for backend in self._backends:
            try:
                times = backend.cpu_times()
            except psutil.Error:
                continue  # the backend exited; its last sample stays
            self.backend_cpu_seconds[backend.pid] = times.user + times.system

    def stop(self) -> None:
        self._done.set()


async def admin(server: str, statement: str) -> None:
    connection = await asyncpg.connect(to_libpq_dsn(to_async_url(server)))
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def count_users(url: str) -> int:
    connection = await asyncpg.connect(to_libpq_dsn(to_async_url(url)))
    try:
        return int(await connection.fetchval("SELECT count(*) FROM users"))
    finally:
        await connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--file", type=Path, help="Import this file instead of generating one.")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sso-import-bench"))
    parser.add_argument(
        "--server",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="Maintenance database URL of the server to create the benchmark database on.",
    )
    parser.add_argument("--keep", action="store_true", help="Keep the benchmark database.")
    parser.add_argument("--batch-rows", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=1, help="Passed to users import.")
    parser.add_argument(
        "--no-exclusive-load",
        action="store_true",
        help="Passed to users import: check and index row by row, without locking the tables.",
    )
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    source = args.file
    generation_seconds = None
    if source is None:
        source = args.workdir / f"users-{args.count}.csv"
        if not source.exists():
            started = time.monotonic()
            subprocess.run(
                [
                    sys.executable,
                    str(PROJECT_ROOT / "bench" / "generate_users.py"),
                    "--count",
                    str(args.count),
                    "--output",
                    str(source),
                ],
                check=True,
            )
            generation_seconds = round(time.monotonic() - started, 1)

    # Other work on the machine changes the result, so the load is recorded before and after.
    load_at_start = os.getloadavg()
    name = f"sso_import_bench_{secrets.token_hex(3)}"
    asyncio.run(admin(args.server, f'CREATE DATABASE "{name}"'))
    url = str(
        to_async_url(args.server)
        .set(drivername="postgresql", database=name)
        .render_as_string(hide_password=False)
    )
    environment = {key: value for key, value in os.environ.items() if not key.startswith("SSO_")}
    environment.update(SSO_DATABASE_URL=url, SSO_ENVIRONMENT="development", SSO_LOG_LEVEL="warning")
    command = str(Path(sys.executable).with_name("sso-provider"))
    try:
        subprocess.run([command, "migrate"], env=environment, check=True, capture_output=True)
        started = time.monotonic()
        process = subprocess.Popen(
            [
                command,
                "users",
                "import",
                str(source),
                "--batch-rows",
                str(args.batch_rows),
                "--workers",
                str(args.workers),
                *(["--no-exclusive-load"] if args.no_exclusive_load else []),
            ],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        sampler = MemorySampler(process.pid, name)
        sampler.start()
        phases: dict[str, float] = {}
        assert process.stderr is not None
        for line in process.stderr:
            # "import: <phase>: N rows read, R rows/s, S s"
            parts = line.strip().split(": ")
            if len(parts) == 3 and parts[0] == "import":
                phases.setdefault(parts[1], float(parts[2].rsplit(", ", 1)[1].removesuffix(" s")))
        stdout = process.stdout.read() if process.stdout else ""
        process.wait()
        seconds = time.monotonic() - started
        sampler.stop()
        sampler.join()
        imported = asyncio.run(count_users(url))
    finally:
        if not args.keep:
            asyncio.run(admin(args.server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    result = {
        "file": str(source),
        "file_bytes": source.stat().st_size,
        "generation_seconds": generation_seconds,
        "exit_code": process.returncode,
        "workers": args.workers,
        "exclusive_load": not args.no_exclusive_load,
        "users_imported": imported,
        "seconds": round(seconds, 1),
        "users_per_second": round(imported / seconds) if seconds else None,
        "phase_started_at_seconds": phases,
        "peak_rss_importer_mb": round(sampler.peak_main / 2**20),
        "peak_rss_process_tree_mb": round(sampler.peak_tree / 2**20),
        "cpu_seconds_importer": round(sampler.importer_cpu_seconds, 1),
        "cpu_seconds_postgres_backends": round(sum(sampler.backend_cpu_seconds.values()), 1),
        "summary_line": stdout.strip().splitlines()[-1] if stdout.strip() else None,
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30),
            "python": platform.python_version(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": os.getloadavg(),
        },
    }
    print(json.dumps(result, indent=2))
    return 0 if process.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
