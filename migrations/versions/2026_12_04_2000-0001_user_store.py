"""Create the user store, admin, session and security tables.

The triggers here are the database's own guarantees: `user_key` and ERID never change once
written, every identifier ever issued is recorded in an append-only ledger so it is never
issued again, and users are erased rather than deleted.

Revision ID: 0001
Revises:
Create Date: 2026-12-04 20:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ERID_PATTERN = r"^[A-Za-z0-9._:@-]{1,64}$"
PERSONAL_COLUMNS = (
    "login",
    "login_normalized",
    "email",
    "first_name",
    "last_name",
    "locale",
    "home_phone",
    "password_hash",
)

TRIGGER_SQL = """
CREATE FUNCTION users_before_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.user_key IS DISTINCT FROM OLD.user_key THEN
        RAISE EXCEPTION 'user_key of user % is immutable', OLD.id
            USING ERRCODE = 'integrity_constraint_violation',
                  CONSTRAINT = 'users_user_key_immutable', COLUMN = 'user_key';
    END IF;
    IF NEW.external_reference_id IS DISTINCT FROM OLD.external_reference_id THEN
        RAISE EXCEPTION 'external_reference_id of user % is immutable', OLD.id
            USING ERRCODE = 'integrity_constraint_violation',
                  CONSTRAINT = 'users_external_reference_id_immutable',
                  COLUMN = 'external_reference_id';
    END IF;
    IF OLD.status = 'erased' THEN
        RAISE EXCEPTION 'user % is erased and cannot change', OLD.id
            USING ERRCODE = 'integrity_constraint_violation',
                  CONSTRAINT = 'users_erased_is_final';
    END IF;
    NEW.version := OLD.version + 1;
    NEW.updated_at := now();
    RETURN NEW;
END $$;

CREATE TRIGGER users_before_update BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION users_before_update();

CREATE FUNCTION users_record_identifiers() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO issued_identifiers (user_key, external_reference_id)
        VALUES (NEW.user_key, NEW.external_reference_id);
    RETURN NULL;
END $$;

CREATE TRIGGER users_record_identifiers AFTER INSERT ON users
    FOR EACH ROW EXECUTE FUNCTION users_record_identifiers();

CREATE FUNCTION reject_identifier_loss() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on % is not allowed: users are erased, and issued identifiers stay reserved',
        TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'integrity_constraint_violation',
              CONSTRAINT = TG_TABLE_NAME || '_append_only';
END $$;

CREATE TRIGGER users_no_delete BEFORE DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION reject_identifier_loss();

CREATE TRIGGER users_no_truncate BEFORE TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION reject_identifier_loss();

CREATE TRIGGER issued_identifiers_no_change BEFORE UPDATE OR DELETE ON issued_identifiers
    FOR EACH ROW EXECUTE FUNCTION reject_identifier_loss();

CREATE TRIGGER issued_identifiers_no_truncate BEFORE TRUNCATE ON issued_identifiers
    FOR EACH STATEMENT EXECUTE FUNCTION reject_identifier_loss();
"""

DROP_TRIGGERS_SQL = """
DROP TRIGGER issued_identifiers_no_truncate ON issued_identifiers;
DROP TRIGGER issued_identifiers_no_change ON issued_identifiers;
DROP TRIGGER users_no_truncate ON users;
DROP TRIGGER users_no_delete ON users;
DROP FUNCTION reject_identifier_loss();
DROP TRIGGER users_record_identifiers ON users;
DROP FUNCTION users_record_identifiers();
DROP TRIGGER users_before_update ON users;
DROP FUNCTION users_before_update();
"""


def _timestamp(name: str, *, nullable: bool = True, default: bool = False) -> sa.Column:
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        nullable=nullable,
        server_default=sa.func.now() if default else None,
    )


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")

    op.create_table(
        "users",
        sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column(
            "user_key",
            postgresql.UUID(as_uuid=True),
            nullable=False,
            server_default=sa.func.gen_random_uuid(),
        ),
        sa.Column("external_reference_id", sa.Text, nullable=False),
        *(sa.Column(name, sa.Text) for name in PERSONAL_COLUMNS[:-1]),
        sa.Column("status", sa.Text, nullable=False, server_default="active"),
        sa.Column("password_hash", sa.Text),
        _timestamp("password_changed_at"),
        sa.Column("created_via", sa.Text, nullable=False, server_default="admin"),
        _timestamp("created_at", nullable=False, default=True),
        _timestamp("updated_at", nullable=False, default=True),
        _timestamp("erased_at"),
        sa.Column("version", sa.BigInteger, nullable=False, server_default="1"),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("user_key", name="uq_users_user_key"),
        sa.UniqueConstraint("external_reference_id", name="uq_users_external_reference_id"),
        sa.UniqueConstraint("login_normalized", name="uq_users_login_normalized"),
        sa.CheckConstraint(
            f"external_reference_id ~ '{ERID_PATTERN}'", name="ck_users_erid_format"
        ),
        sa.CheckConstraint(
            "status IN ('active', 'disabled', 'erased')", name="ck_users_status_known"
        ),
        sa.CheckConstraint(
            "(status = 'erased') = (erased_at IS NOT NULL)",
            name="ck_users_erased_at_matches_status",
        ),
        sa.CheckConstraint(
            "status = 'erased' OR (login IS NOT NULL AND login_normalized IS NOT NULL)",
            name="ck_users_login_present",
        ),
        sa.CheckConstraint(
            "status <> 'erased' OR ("
            + " AND ".join(f"{column} IS NULL" for column in PERSONAL_COLUMNS)
            + ")",
            name="ck_users_erased_has_no_personal_data",
        ),
    )
    op.create_index(
        "uq_users_external_reference_id_lower",
        "users",
        [sa.text("lower(external_reference_id)")],
        unique=True,
    )
    op.create_index("ix_users_created_at_id", "users", ["created_at", "id"])
    op.create_index("ix_users_email_lower", "users", [sa.text("lower(email)")])
    op.create_index("ix_users_last_name_lower", "users", [sa.text("lower(last_name)")])

    op.create_table(
        "user_addresses",
        sa.Column("user_id", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        *(
            sa.Column(name, sa.Text)
            for name in (
                "name1",
                "name2",
                "company_name",
                "line1",
                "line2",
                "line3",
                "city",
                "state",
                "postal_code",
                "country",
                "country_name",
                "email",
                "phone_number",
            )
        ),
        sa.PrimaryKeyConstraint("user_id", "kind", name="pk_user_addresses"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_user_addresses_user_id_users", ondelete="CASCADE"
        ),
        sa.CheckConstraint("kind IN ('shipping', 'billing')", name="ck_user_addresses_kind_known"),
        sa.CheckConstraint(
            "country IS NULL OR country ~ '^[A-Z]{2}$'", name="ck_user_addresses_country_alpha2"
        ),
    )

    op.create_table(
        "user_attributes",
        sa.Column("user_id", sa.BigInteger, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("value", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("user_id", "name", name="pk_user_attributes"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_user_attributes_user_id_users", ondelete="CASCADE"
        ),
        sa.CheckConstraint(
            "char_length(name) BETWEEN 1 AND 128", name="ck_user_attributes_name_length"
        ),
    )

    op.create_table(
        "issued_identifiers",
        sa.Column("user_key", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("external_reference_id", sa.Text, nullable=False),
        _timestamp("issued_at", nullable=False, default=True),
        sa.PrimaryKeyConstraint("user_key", name="pk_issued_identifiers"),
    )
    op.create_index(
        "uq_issued_identifiers_external_reference_id_lower",
        "issued_identifiers",
        [sa.text("lower(external_reference_id)")],
        unique=True,
    )

    op.create_table(
        "api_keys",
        sa.Column(
            "id", postgresql.UUID(as_uuid=True), nullable=False, server_default=sa.func.gen_random_uuid()
        ),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("key_hash", sa.LargeBinary, nullable=False),
        sa.Column("scopes", postgresql.ARRAY(sa.Text), nullable=False),
        _timestamp("created_at", nullable=False, default=True),
        _timestamp("last_used_at"),
        _timestamp("revoked_at"),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
        sa.CheckConstraint("char_length(name) BETWEEN 1 AND 200", name="ck_api_keys_name_length"),
        sa.CheckConstraint(
            "scopes <@ ARRAY['admin:read', 'admin:write', 'sessions', 'admin:export-secrets']"
            "::text[]",
            name="ck_api_keys_scopes_known",
        ),
    )

    op.create_table(
        "audit_events",
        sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
        _timestamp("occurred_at", nullable=False, default=True),
        sa.Column("actor_key_id", postgresql.UUID(as_uuid=True)),
        sa.Column("actor_name", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("target_user_key", postgresql.UUID(as_uuid=True)),
        sa.Column(
            "changed_fields", postgresql.ARRAY(sa.Text), nullable=False, server_default="{}"
        ),
        sa.Column("request_id", sa.Text),
        sa.Column("details", postgresql.JSONB, nullable=False, server_default="{}"),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
    )
    op.create_index(
        "ix_audit_events_target_user_key_id", "audit_events", ["target_user_key", "id"]
    )
    op.create_index("ix_audit_events_occurred_at", "audit_events", ["occurred_at"])

    op.create_table(
        "sso_sessions",
        sa.Column(
            "id", postgresql.UUID(as_uuid=True), nullable=False, server_default=sa.func.gen_random_uuid()
        ),
        sa.Column("user_id", sa.BigInteger, nullable=False),
        sa.Column("token_hash", sa.LargeBinary, nullable=False),
        _timestamp("created_at", nullable=False, default=True),
        _timestamp("expires_at", nullable=False),
        _timestamp("last_validated_at"),
        _timestamp("revoked_at"),
        sa.Column("revoked_reason", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_sso_sessions"),
        sa.UniqueConstraint("token_hash", name="uq_sso_sessions_token_hash"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_sso_sessions_user_id_users", ondelete="CASCADE"
        ),
    )
    op.create_index(
        "ix_sso_sessions_user_id_active", "sso_sessions", ["user_id", "revoked_at"]
    )

    op.create_table(
        "throttle_counters",
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
        _timestamp("window_started_at", nullable=False, default=True),
        sa.Column("lockouts", sa.Integer, nullable=False, server_default="0"),
        _timestamp("locked_until"),
        _timestamp("updated_at", nullable=False, default=True),
        sa.PrimaryKeyConstraint("scope", "subject", name="pk_throttle_counters"),
        sa.CheckConstraint(
            "scope IN ('account', 'address')", name="ck_throttle_counters_scope_known"
        ),
    )

    op.create_table(
        "login_events",
        sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
        _timestamp("occurred_at", nullable=False, default=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("user_key", postgresql.UUID(as_uuid=True)),
        sa.Column("external_reference_id", sa.Text),
        sa.Column("source_address", postgresql.INET),
        sa.Column("site_id", sa.Text),
        sa.Column("request_id", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_login_events"),
    )
    op.create_index("ix_login_events_occurred_at", "login_events", ["occurred_at"])
    op.create_index("ix_login_events_user_key_id", "login_events", ["user_key", "id"])

    # asyncpg runs one statement per call, so the script is split on the blank-line separators.
    for statement in TRIGGER_SQL.split("\n\n"):
        op.execute(statement)


def downgrade() -> None:
    for statement in DROP_TRIGGERS_SQL.strip().splitlines():
        op.execute(statement)
    for table in (
        "login_events",
        "throttle_counters",
        "sso_sessions",
        "audit_events",
        "api_keys",
        "issued_identifiers",
        "user_attributes",
        "user_addresses",
        "users",
    ):
        op.drop_table(table)
