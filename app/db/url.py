"""Turn the PostgreSQL URLs operators write into URLs SQLAlchemy can use with asyncpg."""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url

_ASYNC_DRIVER = "postgresql+asyncpg"
_ACCEPTED_SCHEMES = ("postgresql", "postgres", "postgresql+asyncpg")


class DatabaseURLError(ValueError):
    """A database URL that does not name a PostgreSQL server."""


def to_async_url(raw: str) -> URL:
    """Parse `raw` and select the asyncpg driver.

    Accepts `postgresql://`, `postgres://` and `postgresql+asyncpg://`; libpq's `sslmode`
    query parameter is renamed to asyncpg's `ssl`.
    """
    text = raw.strip()
    if text.startswith("postgres://"):
        text = "postgresql://" + text[len("postgres://") :]
    try:
        url = make_url(text)
    except Exception as exc:  # SQLAlchemy raises ArgumentError for unparseable text
        raise DatabaseURLError(
            "invalid database URL: expected postgresql://user:password@host:port/database"
        ) from exc
    if url.drivername not in _ACCEPTED_SCHEMES:
        raise DatabaseURLError(
            f"unsupported database URL scheme {url.drivername!r}: use postgresql://"
        )
    query = dict(url.query)
    if "sslmode" in query:
        query["ssl"] = query.pop("sslmode")
    return url.set(drivername=_ASYNC_DRIVER, query=query)


def render(url: URL) -> str:
    """Return `url` as a string with its password, for handing to a driver."""
    return url.render_as_string(hide_password=False)


def to_libpq_dsn(url: URL) -> str:
    """Return `url` as a plain `postgresql://` DSN that asyncpg's own `connect` accepts."""
    return render(url.set(drivername="postgresql"))
