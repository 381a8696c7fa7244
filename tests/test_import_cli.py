"""`sso-provider users import` as a subprocess: exit codes, report, progress, interruption."""

# ruff: noqa: S608 - the table names in the SQL are constants

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import URL

from app.db.url import to_libpq_dsn
from tests.transfer_helpers import PROJECT_ROOT, cli_environment, run_cli, store_checks

GOOD = "login,external_reference_id,email\na@example.com,A-1,a@example.com\nb@example.com,B-1,\n"
BAD = GOOD + "c@example.com,a-1,not-an-email\n"


async def _count(url: URL, table: str) -> int:
    connection = await asyncpg.connect(to_libpq_dsn(url))
    try:
        return int(await connection.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await connection.close()


async def _checks(url: URL) -> dict[tuple[str, str, str], int]:
    connection = await asyncpg.connect(to_libpq_dsn(url))
    try:
        return await store_checks(connection)
    finally:
        await connection.close()


def _write(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


async def test_clean_file_exits_zero(fresh_database_url: URL, tmp_path: Path) -> None:
    result = run_cli(fresh_database_url, "users", "import", str(_write(tmp_path, "u.csv", GOOD)))
    assert result.returncode == 0, result.stderr
    assert "2 users imported" in result.stdout
    assert "import: done" in result.stderr
    assert await _count(fresh_database_url, "users") == 2


async def test_rejected_rows_exit_one_write_nothing(
    fresh_database_url: URL, tmp_path: Path
) -> None:
    result = run_cli(fresh_database_url, "users", "import", str(_write(tmp_path, "u.csv", BAD)))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("row 2, external_reference_id: ")
    assert lines[0].endswith("[duplicate_in_file]")
    assert lines[1].startswith("row 4, email: invalid email address")
    assert lines[2].startswith("row 4, external_reference_id: ")
    assert "nothing was written" in lines[-1]
    assert await _count(fresh_database_url, "users") == 0


async def test_skip_invalid_exits_one_writes_valid(fresh_database_url: URL, tmp_path: Path) -> None:
    path = _write(tmp_path, "u.csv", BAD)
    result = run_cli(fresh_database_url, "users", "import", "--skip-invalid", str(path))
    assert result.returncode == 1
    assert "1 users imported" in result.stdout
    assert await _count(fresh_database_url, "users") == 1


async def test_skip_invalid_all_rejected_summary(
    fresh_database_url: URL, tmp_path: Path
) -> None:
    path = _write(tmp_path, "u.csv", "login,email\na@example.com,not-an-email\n")
    result = run_cli(fresh_database_url, "users", "import", "--skip-invalid", str(path))

    assert result.returncode == 1
    summary = result.stdout.splitlines()[-1]
    assert "nothing was written because every row was rejected" in summary
    assert "--skip-invalid" not in summary


async def test_dry_run_json_report(fresh_database_url: URL, tmp_path: Path) -> None:
    path = _write(tmp_path, "users.data", BAD)
    result = run_cli(
        fresh_database_url, "users", "import", "--dry-run", "--json", "--format", "csv", str(path)
    )
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["summary"]["dry_run"] is True
    assert report["summary"]["rows_rejected"] == 2
    assert [(e["row"], e["field"]) for e in report["errors"]] == [
        (2, "external_reference_id"),
        (4, "email"),
        (4, "external_reference_id"),
    ]
    assert await _count(fresh_database_url, "users") == 0


async def test_standard_input_ndjson(fresh_database_url: URL) -> None:
    body = json.dumps({"login": "stdin@example.com"}).encode() + b"\n"
    result = run_cli(fresh_database_url, "users", "import", "--format", "ndjson", "-", stdin=body)
    assert result.returncode == 0, result.stderr
    assert await _count(fresh_database_url, "users") == 1


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("u.csv", "login,nickname\nx@example.com,x\n", "unknown column 'nickname'"),
        ("u.txt", GOOD, "cannot tell the file format"),
    ],
)
async def test_unusable_file_exits_two(
    fresh_database_url: URL, tmp_path: Path, name: str, content: str, message: str
) -> None:
    result = run_cli(fresh_database_url, "users", "import", str(_write(tmp_path, name, content)))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert await _count(fresh_database_url, "users") == 0


@pytest.fixture(scope="module")
def large_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("import") / "large.csv"
    subprocess.run(
        [
            sys.executable,
            str(PROJECT_ROOT / "bench" / "generate_users.py"),
            "--count",
            "30000",
            "--distinct-hashes",
            "12",
            "--output",
            str(path),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return path


def _kill_import_during(database_url: URL, file: Path, phase: str) -> int:
    """Start an import, SIGKILL it once it reports `phase`, and return its exit status.

    The file goes in as a path, which takes the direct path ("inserting while reading"), or on
    standard input, which cannot be read twice and takes the staged path ("reading", then
    "checking" and "inserting").
    """
    direct = phase == "inserting while reading"
    # On the staged path, a pipe: standard input from a file could be read twice.
    feeder = None if direct else subprocess.Popen(["cat", str(file)], stdout=subprocess.PIPE)
    process = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("sso-provider")),
            "users",
            "import",
            str(file) if direct else "-",
            "--format",
            "csv",
            "--batch-rows",
            "1000",
        ],
        cwd=PROJECT_ROOT,
        env=cli_environment(database_url),
        stdin=subprocess.DEVNULL if feeder is None else feeder.stdout,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if feeder is not None and feeder.stdout is not None:
        feeder.stdout.close()  # the import process has its own copy of the pipe
    assert process.stderr is not None
    deadline = time.monotonic() + 200
    seen: list[str] = []
    try:
        for line in process.stderr:
            seen.append(line)
            # The first line of a phase comes once its first batch is done.
            if line.startswith(f"import: {phase}: ") and " 0 rows read" not in line:
                break
            assert time.monotonic() < deadline, "import never reached the phase"
        else:
            pytest.fail(f"import ended before the {phase} phase: {''.join(seen)}")
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=30)
        if feeder is not None:
            feeder.kill()
            feeder.wait(timeout=30)
    return process.returncode


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["inserting while reading", "reading", "inserting"])
async def test_killed_import_leaves_store_unchanged(
    fresh_database_url: URL, large_file: Path, phase: str
) -> None:
    # On the direct path the file is large enough for the exclusive load, which drops
    # constraints and indexes.
    checks_before = await _checks(fresh_database_url)
    assert _kill_import_during(fresh_database_url, large_file, phase) == -signal.SIGKILL

    for table in ("users", "issued_identifiers", "user_addresses", "user_attributes"):
        assert await _count(fresh_database_url, table) == 0, table
    assert await _count(fresh_database_url, "audit_events") == 0
    assert await _checks(fresh_database_url) == checks_before


@pytest.mark.slow
@pytest.mark.parametrize("exclusive", [True, False], ids=["exclusive", "no-exclusive-load"])
async def test_large_import_into_empty_store(
    fresh_database_url: URL, large_file: Path, exclusive: bool
) -> None:
    checks_before = await _checks(fresh_database_url)
    flags = [] if exclusive else ["--no-exclusive-load"]
    result = run_cli(fresh_database_url, "users", "import", str(large_file), *flags)
    assert result.returncode == 0, result.stderr
    assert ("import: indexing" in result.stderr) is exclusive
    assert await _count(fresh_database_url, "users") == 30000
    checks_after = await _checks(fresh_database_url)
    assert set(checks_after) == set(checks_before)
    recreated = {key for key in checks_before if checks_before[key] != checks_after[key]}
    assert bool(recreated) is exclusive


def _run_on_terminal(database_url: URL, file: Path) -> tuple[int, str]:
    """Run an import with standard error on a pseudo-terminal; return status and terminal text."""
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("sso-provider")), "users", "import", str(file)],
        cwd=PROJECT_ROOT,
        env=cli_environment(database_url),
        stdout=subprocess.DEVNULL,
        stderr=secondary,
    )
    os.close(secondary)
    output = bytearray()
    try:
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO once the process closes the terminal
                break
            if not chunk:
                break
            output.extend(chunk)
    finally:
        os.close(primary)
        process.wait(timeout=120)
    return process.returncode, output.decode("utf-8", "replace")


async def test_terminal_shows_progress_bar(fresh_database_url: URL, tmp_path: Path) -> None:
    status, screen = _run_on_terminal(fresh_database_url, _write(tmp_path, "u.csv", GOOD))
    assert status == 0
    assert "rows/s" in screen
    assert "done" in screen
    assert "import: reading:" not in screen
    assert await _count(fresh_database_url, "users") == 2
