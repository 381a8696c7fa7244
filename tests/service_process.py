"""Run the service as real `uvicorn` processes on loopback ports, for multi-process tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from sqlalchemy.engine import URL

from app.db.url import render
from tests.conftest import RUM_PASSWORD, RUM_USERNAME

STARTUP_SECONDS = 60.0

# Fast hashing: these tests are about shared state and HTTP behaviour, not password cost.
BASE_ENVIRONMENT = {
    "SSO_ENVIRONMENT": "development",
    "SSO_RUM_USERNAME": RUM_USERNAME,
    "SSO_RUM_PASSWORD": RUM_PASSWORD,
    "SSO_DR_SITE_ID": "headwtr",
    "SSO_LOG_FORMAT": "json",
    "SSO_ARGON2_MEMORY_COST_KIB": "1024",
    "SSO_ARGON2_TIME_COST": "1",
    "SSO_LOGIN_EVENT_PURGE_INTERVAL_SECONDS": "0",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServiceProcess:
    """One `uvicorn app.main:create_app --factory` process on a free loopback port.

    With `command`, that command runs instead, followed by `--host 127.0.0.1 --port PORT`.
    """

    def __init__(
        self,
        database_url: URL,
        log_path: Path,
        command: list[str] | None = None,
        **environment: str,
    ) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        child_environment = {k: v for k, v in os.environ.items() if not k.startswith("SSO_")}
        child_environment.update(BASE_ENVIRONMENT)
        child_environment.update(environment)
        child_environment["SSO_DATABASE_URL"] = render(database_url)
        self._log = log_path.open("wb")
        arguments = command or [
            sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--no-access-log",
        ]
        self.process = subprocess.Popen(
            [*arguments, "--host", "127.0.0.1", "--port", str(self.port)],
            env=child_environment,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_until_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"service exited early:\n{self.log_text()}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"service not ready after {STARTUP_SECONDS}s:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()
