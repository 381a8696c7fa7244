"""Record issued identifiers once per INSERT statement, and drop a redundant ERID constraint.

The ledger trigger on `users` ran once per inserted row; it now runs once per statement and
inserts every new row's identifiers from the statement's transition table, which a bulk import
of many rows in one statement does far faster. The unique constraint on the exact-case ERID
goes, because the unique index on `lower(external_reference_id)` already rejects every
duplicate it would, and each extra index slows every insert.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05 00:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE_SQL = """
DROP TRIGGER users_record_identifiers ON users;

CREATE OR REPLACE FUNCTION users_record_identifiers() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO issued_identifiers (user_key, external_reference_id)
        SELECT user_key, external_reference_id FROM inserted_users;
    RETURN NULL;
END $$;

CREATE TRIGGER users_record_identifiers AFTER INSERT ON users
    REFERENCING NEW TABLE AS inserted_users
    FOR EACH STATEMENT EXECUTE FUNCTION users_record_identifiers();

ALTER TABLE users DROP CONSTRAINT uq_users_external_reference_id;
"""

DOWNGRADE_SQL = """
ALTER TABLE users
    ADD CONSTRAINT uq_users_external_reference_id UNIQUE (external_reference_id);

DROP TRIGGER users_record_identifiers ON users;

CREATE OR REPLACE FUNCTION users_record_identifiers() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO issued_identifiers (user_key, external_reference_id)
        VALUES (NEW.user_key, NEW.external_reference_id);
    RETURN NULL;
END $$;

CREATE TRIGGER users_record_identifiers AFTER INSERT ON users
    FOR EACH ROW EXECUTE FUNCTION users_record_identifiers();
"""


def upgrade() -> None:
    # SQLAlchemy's asyncpg driver prepares each statement, and a prepared statement holds one
    # command, so the script is split on the blank-line separators.
    for statement in UPGRADE_SQL.strip().split("\n\n"):
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE_SQL.strip().split("\n\n"):
        op.execute(statement)
