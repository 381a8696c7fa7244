"""Apply and inspect Alembic migrations from inside the service."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def migrations_root() -> Path:
    """Return the folder holding alembic.ini and migrations/.

    That is the source checkout when running from one. An installed wheel carries no
    migrations, so the container image puts them in its working directory instead.
    """
    if (PROJECT_ROOT / "alembic.ini").is_file():
        return PROJECT_ROOT
    return Path.cwd()


def alembic_config() -> Config:
    root = migrations_root()
    config = Config(str(root / "alembic.ini"))
    config.set_main_option("script_location", str(root / "migrations"))
    return config


async def upgrade_to_head(engine: AsyncEngine) -> None:
    """Apply every pending migration; concurrent callers serialise on an advisory lock."""

    def run(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    async with engine.connect() as connection:
        await connection.run_sync(run)
        await connection.commit()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def current_revision(engine: AsyncEngine) -> str | None:
    def read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as connection:
        return await connection.run_sync(read)
