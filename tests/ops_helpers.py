"""Helpers for the operations tests: reading Prometheus text and captured JSON log lines."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


def metric_value(exposition: str, name: str, **labels: str) -> float | None:
    """Return the sample `name` whose labels include `labels`, summed over any others."""
    total: float | None = None
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name != name:
                continue
            if all(sample.labels.get(key) == value for key, value in labels.items()):
                total = (total or 0.0) + sample.value
    return total


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """Parse every line written to `stream`; a line that is not a JSON object fails the test."""
    records = []
    for line in stream.getvalue().splitlines():
        record = json.loads(line)
        assert isinstance(record, dict), line
        records.append(record)
    return records


# Loggers of the test's own HTTP client, which logs full URLs; the service never uses them.
CLIENT_LOGGERS = ("httpx", "httpcore")


def service_log_text(stream: io.StringIO) -> str:
    """Return the captured lines written by the service, leaving out the test client's lines."""
    kept = []
    for line in stream.getvalue().splitlines():
        logger = str(json.loads(line).get("logger", ""))
        if not logger.startswith(CLIENT_LOGGERS):
            kept.append(line)
    return "\n".join(kept)


def cli_command() -> list[str]:
    """Return the command that runs `sso-provider` from the test's own environment."""
    script = Path(sys.executable).with_name("sso-provider")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "app.cli"]


def child_environment(**overrides: str) -> dict[str, str]:
    """Return this process's environment without SSO_ settings, plus `overrides`."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("SSO_") and key != "PROMETHEUS_MULTIPROC_DIR"
    }
    environment.update(overrides)
    return environment
