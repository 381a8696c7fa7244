"""Replicas that start together run `sso-provider migrate` at once; the advisory lock in
migrations/env.py must let exactly one apply the schema while the others wait and find it done."""

from __future__ import annotations

import asyncio
import subprocess

import asyncpg
import pytest

from app.db.migrate import head_revision
from app.db.url import render, to_libpq_dsn
from app.models import Base
from tests.database import TestServer as DatabaseServer
from tests.ops_helpers import child_environment, cli_command

pytestmark = pytest.mark.slow

REPLICAS = 3


async def test_three_replicas_migrate_together(test_server: DatabaseServer) -> None:
    url = await test_server.create("concurrent_migrations")
    try:
        environment = child_environment(
            SSO_DATABASE_URL=render(url), SSO_ENVIRONMENT="development", SSO_LOG_FORMAT="json"
        )
        processes = [
            subprocess.Popen(
                [*cli_command(), "migrate"],
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for _ in range(REPLICAS)
        ]
        outputs = await asyncio.gather(
            *(asyncio.to_thread(process.communicate, None, 180) for process in processes)
        )

        for process, (output, _) in zip(processes, outputs, strict=True):
            assert process.returncode == 0, output.decode(errors="replace")
            # Each replica reports the head revision, whichever of them applied the migrations.
            assert f"at revision {head_revision()}".encode() in output

        connection = await asyncpg.connect(to_libpq_dsn(url))
        try:
            versions = await connection.fetch("SELECT version_num FROM alembic_version")
            tables = await connection.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
        finally:
            await connection.close()
    finally:
        await test_server.drop(url.database or "")

    assert [row["version_num"] for row in versions] == [head_revision()]
    assert {row["tablename"] for row in tables} == set(Base.metadata.tables) | {"alembic_version"}
