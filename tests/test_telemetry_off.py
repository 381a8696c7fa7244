"""FastAPI's built-in OpenTelemetry hooks stay off, even where a tracer provider is installed.

FastAPI records request spans, and with its `logs` setting validation failures and exception
messages, to whatever global OpenTelemetry provider a process has. This service's logs are
kept free of secrets, so it switches those hooks off. Each check runs in its own interpreter,
because OpenTelemetry's global provider can be set only once per process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import asyncio, contextlib, json, sys

    import httpx
    from opentelemetry import trace
    from opentelemetry.trace import INVALID_SPAN_CONTEXT, NonRecordingSpan

    started = []

    class RecordingTracer(trace.Tracer):
        def start_span(self, name, *args, **kwargs):
            started.append(name)
            return NonRecordingSpan(INVALID_SPAN_CONTEXT)

        @contextlib.contextmanager
        def start_as_current_span(self, name, *args, **kwargs):
            started.append(name)
            yield NonRecordingSpan(INVALID_SPAN_CONTEXT)

    class RecordingProvider(trace.TracerProvider):
        def get_tracer(self, *args, **kwargs):
            return RecordingTracer()

    trace.set_tracer_provider(RecordingProvider())

    if sys.argv[1] == "service":
        from app.main import create_app
        from app.settings import Settings

        app = create_app(Settings(environment="development", log_format="json"))
        path = "/healthz"
    else:
        from fastapi import FastAPI

        app = FastAPI()
        app.get("/ping")(lambda: {"ok": True})
        path = "/ping"

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.get(path)
        print(json.dumps({"status": response.status_code, "spans": started}))

    asyncio.run(main())
    """
)


def spans_recorded(app_kind: str) -> dict[str, object]:
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT, app_kind],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result: dict[str, object] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def test_plain_fastapi_records_spans() -> None:
    # The recording provider works: an app with FastAPI's defaults starts a span.
    result = spans_recorded("plain")

    assert result["status"] == 200
    assert result["spans"]


@pytest.mark.parametrize("auto_configure", ["false", "true"])
def test_service_records_no_spans(auto_configure: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTAPI_OTEL_AUTO_CONFIGURE", auto_configure)

    result = spans_recorded("service")

    assert result["status"] == 200
    assert result["spans"] == []
