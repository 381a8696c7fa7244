"""Helpers for the operations tests: reading Prometheus text and captured JSON log lines."""

from __future__ import annotations

import io
import json
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
