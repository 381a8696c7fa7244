"""`sso-provider events`: maintain the login audit log."""

from __future__ import annotations

import click

from app.security.retention import PurgeResult, purge_expired


@click.group()
def events() -> None:
    """Maintain the login events that every Digital River callback writes."""


@events.command("purge")
@click.option(
    "--retention-days",
    type=click.IntRange(min=1),
    help="Keep events this many days old or younger [default: SSO_LOGIN_EVENT_RETENTION_DAYS].",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1, max=100_000),
    help="Rows deleted per transaction [default: SSO_LOGIN_EVENT_PURGE_BATCH_SIZE].",
)
def purge(retention_days: int | None, batch_size: int | None) -> None:
    """Delete old login events, expired throttle counters and long-ended SSO sessions.

    Login events go once they are older than the retention period, and so do SSO sessions
    that expired or were revoked that long ago.

    Deletes in short batches, so it can run while the service serves traffic, and from
    several hosts at once. Prints the counts as JSON.
    """
    # Imported here because app.cli imports this module to register the command group.
    from app import cli as main_cli
    from app.db.engine import database_for_command

    settings = main_cli.load_settings()

    async def run() -> PurgeResult:
        async with database_for_command(settings) as database:
            await main_cli.require_current_schema(database)
            return await purge_expired(
                database.engine, settings, retention_days=retention_days, batch_size=batch_size
            )

    result: PurgeResult = main_cli.run_database_command(run())
    main_cli.print_json(
        {
            "cutoff": result.cutoff.isoformat(),
            "login_events_deleted": result.login_events_deleted,
            "throttle_counters_deleted": result.throttle_counters_deleted,
            "sso_sessions_deleted": result.sso_sessions_deleted,
        }
    )
