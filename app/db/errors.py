"""Tell a database outage apart from a bug, so callers can respond with 503 instead of 500."""

from __future__ import annotations

from typing import Final

import asyncpg
from sqlalchemy import exc as sa_exc

# SQLSTATEs of a server that cannot serve now: class 08 (connection exception) and these.
_UNAVAILABLE_SQLSTATES: Final = frozenset(
    {
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now: starting up or in recovery
        "53300",  # too_many_connections
        "53400",  # configuration_limit_exceeded
        # A lock or statement that waited past lock_timeout or statement_timeout: the server is
        # busy, and the same request may well succeed when retried.
        "55P03",  # lock_not_available
        "57014",  # query_canceled
    }
)

_ASYNCPG_UNAVAILABLE: Final = (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InterfaceError,
)


def leaves_connection_unusable(error: BaseException) -> bool:
    """Return True if a statement that raised `error` may have left its connection broken.

    A lost or closed connection, and a client-side timeout: after a network partition, asyncpg's
    `command_timeout` fires on a socket that still looks open. A server-side error, such as
    `statement_timeout`, leaves the connection usable.
    """
    return isinstance(error, (*_ASYNCPG_UNAVAILABLE, OSError, TimeoutError))


def _driver_error(error: BaseException) -> BaseException | None:
    """Return the asyncpg exception behind a SQLAlchemy error, if any."""
    original: BaseException | None = getattr(error, "orig", None)
    if original is None:
        return None
    return original.__cause__ or original


def _is_unavailable_driver_error(error: BaseException) -> bool:
    if isinstance(error, _ASYNCPG_UNAVAILABLE):
        return True
    sqlstate = getattr(error, "sqlstate", None)
    return isinstance(sqlstate, str) and (
        sqlstate.startswith("08") or sqlstate in _UNAVAILABLE_SQLSTATES
    )


def is_database_unavailable(error: BaseException) -> bool:
    """Return True if `error` means the database is unreachable, restarting or saturated.

    Covers a pool checkout that timed out, a connection refused or lost (asyncpg raises
    OSError subclasses when it cannot reach the server), and a server that is starting up,
    shutting down or out of connections. A query that the server rejected is not an outage.
    """
    if isinstance(error, sa_exc.TimeoutError | sa_exc.OperationalError | sa_exc.InterfaceError):
        return True
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:
            return True
        driver_error = _driver_error(error)
        return driver_error is not None and _is_unavailable_driver_error(driver_error)
    if _is_unavailable_driver_error(error):
        return True
    return isinstance(error, OSError | TimeoutError)
