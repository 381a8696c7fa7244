"""Process-level set-up around `uvicorn.run` for `sso-provider serve`."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path
from types import FrameType

import structlog

from app.ops.logging import configure_logging
from app.ops.metrics import MULTIPROCESS_DIR_VARIABLE, prepare_multiprocess_dir
from app.settings import Settings

logger = structlog.get_logger("sso.server")


def _note_sigterm(signum: int, frame: FrameType | None) -> None:
    """Handle the SIGTERM that uvicorn sends again to its own process after draining.

    Without a handler that second delivery kills the process and it exits with status -15.
    With this one `serve` returns and the exit status is 0, as expected for a clean stop.
    """


def prepare_serving(settings: Settings, *, host: str, port: int, workers: int) -> Path | None:
    """Configure logging, the metrics directory and SIGTERM handling before uvicorn starts.

    Returns a temporary metrics directory created for several workers, for `finish_serving`.
    """
    configure_logging(settings)
    created = prepare_multiprocess_dir(workers)
    signal.signal(signal.SIGTERM, _note_sigterm)
    logger.info(
        "server.starting",
        host=host,
        port=port,
        workers=workers,
        metrics_dir=str(created) if created else None,
    )
    if created is not None:
        logger.info(
            "metrics.multiprocess_dir_created",
            variable=MULTIPROCESS_DIR_VARIABLE,
            path=str(created),
        )
    return created


def finish_serving(created_metrics_dir: Path | None) -> None:
    if created_metrics_dir is not None:
        shutil.rmtree(created_metrics_dir, ignore_errors=True)
    logger.info("server.stopped")
