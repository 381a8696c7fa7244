"""Prometheus metrics: HTTP requests, logins, password hashing, the database pool and lockouts.

Metrics live in prometheus-client's default registry. With several worker processes
(`sso-provider serve --workers N`), set `PROMETHEUS_MULTIPROC_DIR` to an empty directory
writable by the service: every worker then writes its samples there and any worker's `/metrics`
returns the sum over all of them. `sso-provider serve` creates such a directory when N > 1 and
the variable is unset, and empties the configured one before the workers start.

Other modules record through the names exported here:

- `record_login(result, reason)` for a login decision made outside the password check:
  throttling code records `failure`/`throttled` and `failure`/`locked_out`. The password
  outcomes are counted by `count_login_outcomes`, which decorates
  `app.identity.service.authenticate`.
- `LOCKOUTS.inc()` each time an account or source address is locked out.
- `timed_hashing(operation, function)` wraps the function a hashing thread runs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import event
from sqlalchemy.pool import Pool
from starlette.types import Scope

if TYPE_CHECKING:
    from app.db.engine import Database

logger = logging.getLogger(__name__)

MULTIPROCESS_DIR_VARIABLE: Final = "PROMETHEUS_MULTIPROC_DIR"

# Request latency buckets in seconds: DR's callbacks should respond well under a second.
_LATENCY_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
# argon2id at OWASP's minimum settings takes tens of milliseconds per core.
_HASHING_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0,
)

LOGIN_REASONS: Final = {
    "success": ("ok",),
    "failure": (
        "unknown_login",
        "wrong_password",
        "disabled",
        "throttled",
        "locked_out",
        "other",
    ),
}


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(MULTIPROCESS_DIR_VARIABLE))


HTTP_REQUESTS = Counter(
    "sso_http_requests",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
)
HTTP_REQUEST_DURATION = Histogram(
    "sso_http_request_duration_seconds",
    "Time from receiving a request to sending the last byte of its response.",
    ["method", "route"],
    buckets=_LATENCY_BUCKETS,
)
REQUESTS_IN_PROGRESS = Gauge(
    "sso_http_requests_in_progress",
    "HTTP requests being served now.",
    multiprocess_mode="livesum",
)
LOGINS = Counter(
    "sso_logins",
    "Login decisions by result (success or failure) and reason.",
    ["result", "reason"],
)
PASSWORD_HASHING_DURATION = Histogram(
    "sso_password_hashing_duration_seconds",
    "CPU time of one password hash or verification in the hashing thread pool.",
    ["operation"],
    buckets=_HASHING_BUCKETS,
)
PASSWORD_HASHING_WAIT = Histogram(
    "sso_password_hashing_wait_seconds",
    "Time a hash or verification waited for a free thread in the hashing pool.",
    ["operation"],
    buckets=_HASHING_BUCKETS,
)
LOCKOUTS = Counter(
    "sso_lockouts",
    "Accounts or source addresses locked out after too many failed logins.",
)

for _result, _reasons in LOGIN_REASONS.items():
    for _reason in _reasons:
        LOGINS.labels(_result, _reason)
for _operation in ("hash", "verify"):
    PASSWORD_HASHING_DURATION.labels(_operation)
    PASSWORD_HASHING_WAIT.labels(_operation)


def route_template(scope: Scope, status: int) -> str:
    """Return the matched route's path template, so labels stay few and carry no identifiers."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    return "unmatched" if status == 404 else "other"


# The counter and histogram of each method, route and status seen, so that a request skips
# prometheus-client's label lookup. The keys are as few as the label values.
_REQUEST_SERIES: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def observe_request(method: str, route: str, status: int, duration: float) -> None:
    key = (method, route, status)
    series = _REQUEST_SERIES.get(key)
    if series is None:
        series = (
            HTTP_REQUESTS.labels(method, route, str(status)),
            HTTP_REQUEST_DURATION.labels(method, route),
        )
        _REQUEST_SERIES[key] = series
    series[0].inc()
    series[1].observe(duration)


def record_login(result: str, reason: str) -> None:
    """Count one login decision; `reason` must be one of `LOGIN_REASONS[result]`."""
    if reason not in LOGIN_REASONS.get(result, ()):
        raise ValueError(f"unknown login result/reason {result!r}/{reason!r}: see LOGIN_REASONS")
    LOGINS.labels(result, reason).inc()


_A = ParamSpec("_A")
_T = TypeVar("_T")


def count_login_outcomes(function: Callable[_A, Awaitable[_T]]) -> Callable[_A, Awaitable[_T]]:
    """Decorate a login check whose result has an `outcome` enum, counting each decision.

    The enum value `success` counts as a success, and any other value is the failure reason.
    A value missing from `LOGIN_REASONS` counts as `other`, so a new outcome cannot break logins.
    """

    @functools.wraps(function)
    async def counted(*args: _A.args, **kwargs: _A.kwargs) -> _T:
        result = await function(*args, **kwargs)
        outcome = getattr(getattr(result, "outcome", None), "value", None)
        if outcome == "success":
            LOGINS.labels("success", "ok").inc()
        elif outcome in LOGIN_REASONS["failure"]:
            LOGINS.labels("failure", outcome).inc()
        else:
            LOGINS.labels("failure", "other").inc()
        return result

    return counted


_P = ParamSpec("_P")
_R = TypeVar("_R")


def timed_hashing(operation: str, function: Callable[_P, _R]) -> Callable[_P, _R]:
    """Wrap `function` so that the thread running it records queue wait and duration.

    Call this when submitting the work: the wait is measured from that moment until a thread
    starts the call.
    """
    submitted = time.perf_counter()
    wait = PASSWORD_HASHING_WAIT.labels(operation)
    duration = PASSWORD_HASHING_DURATION.labels(operation)

    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        started = time.perf_counter()
        wait.observe(started - submitted)
        try:
            return function(*args, **kwargs)
        finally:
            duration.observe(time.perf_counter() - started)

    return run


# ---------------------------------------------------------------------------------------------
# Database pool
# ---------------------------------------------------------------------------------------------

_POOL_HELP: Final = {
    "sso_db_pool_size": "Connections the pool keeps open (SSO_DB_POOL_SIZE).",
    "sso_db_pool_max_overflow": "Extra connections allowed beyond the pool size.",
    "sso_db_pool_checked_out": "Connections in use by requests.",
    "sso_db_pool_idle": "Open connections waiting in the pool.",
    "sso_db_pool_overflow": "Connections open beyond the pool size now.",
    "sso_db_driver_pool_size": "Connections the callbacks' driver pool may open "
    "(SSO_DB_DRIVER_POOL_SIZE).",
    "sso_db_driver_pool_open": "Connections the driver pool has open or is opening.",
    "sso_db_driver_pool_in_use": "Driver pool connections in use by callbacks.",
    "sso_db_driver_pool_idle": "Open driver pool connections waiting for a callback.",
    "sso_db_driver_pool_waiting": "Callbacks waiting for a driver pool connection.",
}


def read_pool(pool: Pool) -> dict[str, float]:
    """Return the pool's current numbers, or an empty dict for a pool that keeps none."""
    reader = {
        "sso_db_pool_size": "size",
        "sso_db_pool_checked_out": "checkedout",
        "sso_db_pool_idle": "checkedin",
        "sso_db_pool_overflow": "overflow",
    }
    values: dict[str, float] = {}
    for name, method in reader.items():
        function = getattr(pool, method, None)
        if function is None:
            return {}
        values[name] = float(function())
    # QueuePool counts overflow from minus the pool size; only positive values are extra.
    values["sso_db_pool_overflow"] = max(values["sso_db_pool_overflow"], 0.0)
    values["sso_db_pool_max_overflow"] = float(getattr(pool, "_max_overflow", 0))
    return values


def read_driver_pool(database: Database) -> dict[str, float]:
    """Return the driver pool's numbers under their metric names."""
    return {
        f"sso_db_driver_pool_{key}": float(value)
        for key, value in database.driver_pool_stats().items()
    }


def read_pools(database: Database) -> dict[str, float]:
    """Return the numbers of the engine's pool and of the driver pool."""
    return {**read_pool(database.engine.sync_engine.pool), **read_driver_pool(database)}


class PoolCollector(Collector):
    """Reads the database's pools when Prometheus scrapes, so the numbers are never stale."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, value in read_pools(self.database).items():
            family = GaugeMetricFamily(name, _POOL_HELP[name])
            family.add_metric([], value)
            yield family


# With several workers the scraped process cannot read the other workers' pools, so each
# worker writes its numbers to the shared directory: the engine's pool whenever a connection
# moves, the driver pool every second (a write per checkout would cost the callbacks).
_MULTIPROCESS_POOL_GAUGES: dict[str, Gauge] = {}
DRIVER_POOL_PUBLISH_SECONDS: Final = 1.0


def _multiprocess_pool_gauges() -> dict[str, Gauge]:
    if not _MULTIPROCESS_POOL_GAUGES:
        for name, help_text in _POOL_HELP.items():
            _MULTIPROCESS_POOL_GAUGES[name] = Gauge(
                name, help_text, multiprocess_mode="livesum", registry=None
            )
    return _MULTIPROCESS_POOL_GAUGES


def _publish(values: dict[str, float]) -> None:
    gauges = _multiprocess_pool_gauges()
    for name, value in values.items():
        gauges[name].set(value)


async def _publish_driver_pool(database: Database) -> None:
    while True:
        try:
            _publish(read_driver_pool(database))
        except Exception:
            # A full disk, for example. The gauges go stale until the next second's attempt.
            logger.warning("metrics.driver_pool_publish_failed", exc_info=True)
        await asyncio.sleep(DRIVER_POOL_PUBLISH_SECONDS)


def instrument_pools(database: Database) -> asyncio.Task[None] | None:
    """Publish the pools' numbers for other workers to serve; needed only with several workers.

    Returns the task that publishes the driver pool's numbers, which the caller cancels when
    the worker stops, or None with a single worker.
    """
    if not multiprocess_enabled():
        return None
    pool = database.engine.sync_engine.pool

    def on_event(*_args: Any) -> None:
        _publish(read_pool(pool))

    for name in ("connect", "checkout", "checkin", "close", "invalidate", "close_detached"):
        event.listen(pool, name, on_event)
    _publish(read_pools(database))
    return asyncio.get_running_loop().create_task(_publish_driver_pool(database))


def mark_worker_stopped() -> None:
    """Drop this process's live gauges from the shared directory when the worker stops."""
    if multiprocess_enabled():
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def prepare_multiprocess_dir(workers: int) -> Path | None:
    """Make `PROMETHEUS_MULTIPROC_DIR` ready before worker processes start.

    An explicitly configured directory is emptied, because samples left by an earlier run would
    be added to the new one. With several workers and no directory configured, a temporary one
    is created and exported to the workers; it is returned so the caller can remove it after.
    """
    configured = os.environ.get(MULTIPROCESS_DIR_VARIABLE)
    if configured:
        directory = Path(configured)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
        return None
    if workers <= 1:
        return None
    created = Path(tempfile.mkdtemp(prefix="sso-provider-metrics-"))
    os.environ[MULTIPROCESS_DIR_VARIABLE] = str(created)
    return created


def render_metrics(database: Database | None) -> bytes:
    """Return the text exposition of every metric, including the pools of `database`."""
    if multiprocess_enabled():
        if database is not None:
            _publish(read_pools(database))
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    output = generate_latest(REGISTRY)
    if database is not None:
        pool_registry = CollectorRegistry(auto_describe=False)
        pool_registry.register(PoolCollector(database))
        output += generate_latest(pool_registry)
    return output


router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
async def metrics(request: Request) -> Response:
    database = getattr(request.app.state, "database", None)
    return Response(render_metrics(database), media_type=CONTENT_TYPE_LATEST)
