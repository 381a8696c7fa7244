"""`sso-provider serve` as a real process on loopback: graceful shutdown and multi-worker metrics.

The slow in-flight request is a RemoteLogin for an unknown login. It costs one argon2id
verification against the decoy hash, and SSO_ARGON2_TIME_COST=50 makes that take about two
seconds, long enough to send SIGTERM while it runs.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import URL

from app.db.url import render
from tests.conftest import RUM_PASSWORD, RUM_USERNAME
from tests.ops_helpers import child_environment, cli_command, metric_value
from tests.rum_messages import basic_auth, child_text, login_request, parse

pytestmark = pytest.mark.slow

STARTUP_TIMEOUT_SECONDS = 60.0
EXIT_TIMEOUT_SECONDS = 40.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """One `sso-provider serve` child process writing its logs to a file."""

    def __init__(self, database_url: URL, log_path: Path, workers: int, **env: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        environment = child_environment(
            SSO_DATABASE_URL=render(database_url),
            SSO_ENVIRONMENT="development",
            SSO_RUM_USERNAME=RUM_USERNAME,
            SSO_RUM_PASSWORD=RUM_PASSWORD,
            SSO_LOG_FORMAT="json",
            **env,
        )
        arguments = ["serve", "--host", "127.0.0.1", "--port", str(self.port)]
        arguments += ["--workers", str(workers)]
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [*cli_command(), *arguments],
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_until_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.log_text()}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(
            f"server not healthy after {STARTUP_TIMEOUT_SECONDS}s:\n{self.log_text()}"
        )

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log_text().splitlines() if line.strip()]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=EXIT_TIMEOUT_SECONDS)
        self._log.close()


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "server.log"


@pytest.fixture
def slow_server(fresh_database_url: URL, log_path: Path) -> Iterator[Server]:
    # 150 passes over 19 MiB take over a second even on a fast core, so the login is still in
    # flight when SIGTERM arrives.
    server = Server(
        fresh_database_url, log_path, workers=1, SSO_ARGON2_TIME_COST="150", SSO_HASH_THREADS="1"
    )
    try:
        server.wait_until_healthy()
        yield server
    finally:
        server.stop()


async def wait_for_in_flight(client: httpx.AsyncClient, minimum: float) -> None:
    """Wait until /metrics counts `minimum` requests in progress (the scrape is one of them)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        exposition = (await client.get("/metrics")).text
        if (metric_value(exposition, "sso_http_requests_in_progress") or 0) >= minimum:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the slow request never showed as in progress")


async def refuses_new_connections(base_url: str, pending: asyncio.Task[httpx.Response]) -> bool:
    """Return True once a new connection is refused while `pending` is still running."""
    while not pending.done():
        try:
            async with httpx.AsyncClient(base_url=base_url, timeout=1) as fresh:
                await fresh.get("/healthz")
        except httpx.TransportError:
            return not pending.done()
        await asyncio.sleep(0.05)
    return False


class TestGracefulShutdown:
    async def test_sigterm_drains_in_flight(self, slow_server: Server) -> None:
        async with (
            httpx.AsyncClient(base_url=slow_server.base_url, timeout=30) as slow_client,
            httpx.AsyncClient(base_url=slow_server.base_url, timeout=5) as probe,
        ):
            started = time.monotonic()
            login = asyncio.create_task(
                slow_client.post(
                    "/rum/login",
                    content=login_request("nobody@example.com", "whatever-password"),
                    headers={**basic_auth(), "X-Request-ID": "draining-login"},
                )
            )
            await wait_for_in_flight(probe, minimum=2)
            slow_server.process.send_signal(signal.SIGTERM)

            refused = await refuses_new_connections(slow_server.base_url, login)
            response = await login
            elapsed = time.monotonic() - started

        exit_code = await asyncio.to_thread(slow_server.process.wait, EXIT_TIMEOUT_SECONDS)

        assert elapsed > 0.5, "the login was not slow enough to be in flight during shutdown"
        assert refused, "the server kept accepting connections after SIGTERM"
        assert response.status_code == 200
        assert response.headers["x-request-id"] == "draining-login"
        assert child_text(parse(response.content), "successful") == "false"
        assert exit_code == 0, slow_server.log_text()

        records = slow_server.log_records()
        events = [record["event"] for record in records]
        assert "service.started environment=development" in events
        assert "service.stopped" in events
        assert "server.stopped" in events
        login_lines = [
            record
            for record in records
            if record["event"] == "http.request" and record.get("request_id") == "draining-login"
        ]
        assert len(login_lines) == 1
        assert login_lines[0]["status"] == 200
        assert login_lines[0]["route"] == "/rum/login"


class TestMultipleWorkers:
    async def test_metrics_summed_across_workers(
        self, fresh_database_url: URL, log_path: Path
    ) -> None:
        server = Server(
            fresh_database_url, log_path, workers=2, SSO_DB_POOL_SIZE="3",
            SSO_DB_DRIVER_POOL_SIZE="2",
        )
        try:
            await asyncio.to_thread(server.wait_until_healthy)

            # Each worker publishes its pool sizes of 3 and 2 at startup: 6 and 4 mean both
            # are counted.
            deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
            sizes: tuple[float | None, float | None] = (None, None)
            while time.monotonic() < deadline and sizes != (6, 4):
                async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as client:
                    exposition = (await client.get("/metrics")).text
                sizes = (
                    metric_value(exposition, "sso_db_pool_size"),
                    metric_value(exposition, "sso_db_driver_pool_size"),
                )
                await asyncio.sleep(0.2)
            assert sizes == (6, 4), server.log_text()

            for _ in range(10):
                async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as client:
                    assert (await client.get("/healthz")).status_code == 200
            counts = set()
            for _ in range(4):
                async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as client:
                    exposition = (await client.get("/metrics")).text
                counts.add(metric_value(exposition, "sso_http_requests_total", route="/healthz"))

            server.process.send_signal(signal.SIGTERM)
            exit_code = await asyncio.to_thread(server.process.wait, EXIT_TIMEOUT_SECONDS)
        finally:
            server.stop()

        assert len(counts) == 1, f"scrapes of different workers disagree: {counts}"
        (count,) = counts
        assert count is not None and count >= 10
        assert exit_code == 0, server.log_text()
        created = [
            record
            for record in server.log_records()
            if record["event"] == "metrics.multiprocess_dir_created"
        ]
        assert len(created) == 1
        assert not Path(str(created[0]["path"])).exists(), "temporary metrics directory was left"
