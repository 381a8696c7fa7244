"""The `sso-provider` command line: serve, migrate and administer the user store."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import click
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from app.admin.audit import CLI_ACTOR, record_audit_event
from app.admin.cli import keys
from app.db.engine import Database, database_for_command
from app.db.migrate import current_revision, head_revision, upgrade_to_head
from app.identity.errors import DomainError
from app.identity.passwords import PasswordHasher
from app.identity.schemas import UserCreate
from app.identity.service import create_user, find_user, to_read_model
from app.settings import Settings


def load_settings() -> Settings:
    """Read settings from the environment, turning validation errors into a usage message."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"SSO_{'_'.join(str(p) for p in error['loc']).upper() or 'SETTINGS'}: {error['msg']}"
            for error in exc.errors()
        )
        raise click.ClickException(f"invalid configuration: {problems}") from None


def fail(message: str, exit_code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(exit_code)


async def require_current_schema(database: Database) -> None:
    """Exit with advice when the database is not migrated to the code's schema revision."""
    current = await current_revision(database.engine)
    if current != head_revision():
        fail(
            f"the database schema is at revision {current or 'none'}, not {head_revision()}: "
            "run `sso-provider migrate` first"
        )


def run_database_command(coroutine: Any) -> Any:
    """Run a command's coroutine, reporting database failures without SQL or parameters."""
    try:
        return asyncio.run(coroutine)
    except (SQLAlchemyError, OSError) as exc:
        # The exception text can contain SQL and bound values (password hashes among them).
        fail(f"database operation failed ({type(exc).__name__}); check SSO_DATABASE_URL and "
             "that the server is running")


def read_secret_from_stdin(what: str) -> str:
    """Read one line from standard input, without its line ending."""
    line = sys.stdin.readline()
    if not line:
        fail(f"no {what} on standard input: pipe it in, for example `printf %s \"$PW\" | ...`", 2)
    return line.rstrip("\r\n")


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


@click.group()
@click.version_option(package_name="sso-provider")
def main() -> None:
    """Self-hosted user store for Digital River's single sign-on callbacks.

    Configuration comes from SSO_-prefixed environment variables. With SSO_DATABASE_URL unset,
    commands use an embedded PostgreSQL in SSO_DATA_DIR (default .sso-data).
    """


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="TCP port to listen on.")
@click.option(
    "--workers", default=1, show_default=True, type=int, help="Number of worker processes."
)
def serve(host: str, port: int, workers: int) -> None:
    """Run the HTTP service."""
    import uvicorn

    from app.ops.http_protocol import PROTOCOL_PATHS
    from app.ops.serving import finish_serving, prepare_serving

    settings = load_settings()
    metrics_dir = prepare_serving(settings, host=host, port=port, workers=workers)
    try:
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_config=None,
            access_log=False,
            proxy_headers=False,
            timeout_graceful_shutdown=30,
            # Spawned workers import the whole app before answering the supervisor's ping;
            # on a busy or CPU-limited host that takes longer than uvicorn's 5 s default.
            timeout_worker_healthcheck=30,
            server_header=False,
            log_level=settings.log_level,
            # Both protocols stop buffering a request head that is still incomplete once it
            # passes SSO_MAX_HEADER_BYTES, and respond with 431.
            http=PROTOCOL_PATHS[settings.http_parser],
            h11_max_incomplete_event_size=settings.max_header_bytes,
        )
    finally:
        finish_serving(metrics_dir)


@main.command()
def migrate() -> None:
    """Apply pending database migrations (safe to run from several replicas at once)."""
    settings = load_settings()

    async def run() -> tuple[str | None, str | None]:
        async with database_for_command(settings) as database:
            before = await current_revision(database.engine)
            await upgrade_to_head(database.engine)
            return before, await current_revision(database.engine)

    before, after = run_database_command(run())
    if before == after:
        click.echo(f"database schema is up to date at revision {after}")
    else:
        click.echo(f"database schema is now at revision {after} (it was at {before or 'none'})")


@main.group()
def users() -> None:
    """Create and manage users."""


@users.command("add")
@click.option("--login", required=True, help="Login as the shopper types it, usually an email.")
@click.option("--email", help="Email address.")
@click.option("--first-name", help="First name.")
@click.option("--last-name", help="Last name.")
@click.option("--locale", help="Locale such as en_US.")
@click.option(
    "--external-reference-id",
    "erid",
    help="ERID to keep (when Digital River already knows this user); generated when omitted.",
)
@click.option(
    "--password-stdin",
    is_flag=True,
    required=True,
    help="Read the password from standard input; it is never accepted as an argument.",
)
def users_add(
    login: str,
    email: str | None,
    first_name: str | None,
    last_name: str | None,
    locale: str | None,
    erid: str | None,
    password_stdin: bool,
) -> None:
    """Add a user and print it as JSON."""
    settings = load_settings()
    password = read_secret_from_stdin("password")
    try:
        data = UserCreate(
            login=login,
            email=email,
            first_name=first_name,
            last_name=last_name,
            locale=locale,
            external_reference_id=erid,
            password=password,
        )
    except ValidationError as exc:
        fail("; ".join(_describe(error) for error in exc.errors()), 2)
        return

    async def run() -> dict[str, Any]:
        hasher = PasswordHasher(settings)
        try:
            async with database_for_command(settings) as database:
                await require_current_schema(database)
                async with database.sessionmaker() as session:
                    user = await create_user(session, hasher, data, created_via="cli")
                    # As for a user created through the admin API, in the same transaction. The
                    # command passes every option, so only those given count as set.
                    given_fields = [
                        name for name in data.model_fields_set if getattr(data, name) is not None
                    ]
                    await record_audit_event(
                        session,
                        actor=CLI_ACTOR,
                        action="user.create",
                        target_user_key=user.user_key,
                        changed_fields=sorted(given_fields),
                        details={"created_via": "cli"},
                    )
                    await session.commit()
                    loaded = await find_user(session, user_key=user.user_key)
                    assert loaded is not None
                    return to_read_model(loaded).model_dump(mode="json")
        finally:
            hasher.close()

    try:
        print_json(run_database_command(run()))
    except DomainError as exc:
        field = f"{exc.field}: " if exc.field else ""
        fail(f"{field}{exc.message}", 1)


def _describe(error: Any) -> str:
    location = ".".join(str(part) for part in error["loc"] if part != "body")
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{location}: {message}" if location else message


main.add_command(keys)

from app.transfer.cli import audit, export_users_command, import_users  # noqa: E402

users.add_command(import_users, "import")
users.add_command(export_users_command, "export")
main.add_command(audit)

from app.security.cli import events  # noqa: E402

main.add_command(events)

if __name__ == "__main__":
    main()
