"""`sso-provider keys`: create, list and revoke API keys. Each change writes an audit event."""

from __future__ import annotations

import uuid
from typing import Any

import click

from app.admin.audit import CLI_ACTOR, record_audit_event
from app.admin.keys import SCOPES, create_api_key, list_api_keys, revoke_api_key
from app.identity.errors import DomainError
from app.models import ApiKey


def _key_summary(row: ApiKey) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "name": row.name,
        "scopes": list(row.scopes),
        "created_at": row.created_at.isoformat(),
        "last_used_at": row.last_used_at.isoformat() if row.last_used_at else None,
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
    }


def _run(coroutine_function: Any) -> Any:
    """Open the database, check its schema, and run `coroutine_function(session)` in it."""
    # Imported here because app.cli imports this module to register the `keys` group.
    from app import cli as main_cli
    from app.db.engine import database_for_command

    settings = main_cli.load_settings()

    async def run() -> Any:
        async with database_for_command(settings) as database:
            await main_cli.require_current_schema(database)
            async with database.sessionmaker() as session:
                return await coroutine_function(session)

    try:
        return main_cli.run_database_command(run())
    except DomainError as exc:
        field = f"{exc.field}: " if exc.field else ""
        main_cli.fail(f"{field}{exc.message}", 2 if exc.status_code == 422 else 1)


def _print_json(value: Any) -> None:
    from app import cli as main_cli

    main_cli.print_json(value)


@click.group()
def keys() -> None:
    """Create, list and revoke API keys for the admin and session APIs."""


@keys.command("create")
@click.option("--name", required=True, help="Who or what uses the key, 1 to 200 characters.")
@click.option(
    "--scope",
    "scopes",
    required=True,
    multiple=True,
    type=click.Choice(SCOPES),
    help="Scope to grant; repeat for several. admin:write includes admin:read.",
)
def keys_create(name: str, scopes: tuple[str, ...]) -> None:
    """Create a key and print it once as JSON; only its SHA-256 hash is stored."""

    async def create(session: Any) -> dict[str, Any]:
        row, key = await create_api_key(session, name=name, scopes=scopes)
        await record_audit_event(
            session,
            actor=CLI_ACTOR,
            action="api_key.create",
            changed_fields=["name", "scopes"],
            details={"key_id": str(row.id), "key_name": row.name, "scopes": list(row.scopes)},
        )
        await session.commit()
        return {"id": str(row.id), "key": key, "name": row.name, "scopes": list(row.scopes)}

    _print_json(_run(create))


@keys.command("list")
@click.option("--active", is_flag=True, help="Leave out revoked keys.")
def keys_list(active: bool) -> None:
    """Print every key as JSON (never the key itself, which is not stored)."""

    async def list_keys(session: Any) -> list[dict[str, Any]]:
        return [
            _key_summary(row) for row in await list_api_keys(session, include_revoked=not active)
        ]

    _print_json(_run(list_keys))


@keys.command("revoke")
@click.argument("key_id", type=click.UUID)
def keys_revoke(key_id: uuid.UUID) -> None:
    """Revoke the key with id KEY_ID; requests with it are rejected with 401 from now on."""

    async def revoke(session: Any) -> tuple[dict[str, Any], bool]:
        row, revoked = await revoke_api_key(session, key_id)
        if revoked:
            await record_audit_event(
                session,
                actor=CLI_ACTOR,
                action="api_key.revoke",
                changed_fields=["revoked_at"],
                details={"key_id": str(row.id), "key_name": row.name},
            )
        await session.commit()
        return _key_summary(row), revoked

    summary, revoked = _run(revoke)
    if not revoked:
        click.echo(f"key {key_id} was already revoked at {summary['revoked_at']}", err=True)
    _print_json(summary)
