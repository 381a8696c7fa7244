"""Cross-link audit: each planted kind of finding is reported, and nothing else."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.engine import create_engine, create_sessionmaker
from app.identity.passwords import PasswordHasher
from app.identity.service import erase_user
from app.models import LoginEvent
from app.transfer.crosslinks import (
    FINDING_KINDS,
    audit_crosslinks,
    erid_skeleton_key,
    login_skeleton_key,
    skeleton,
)
from tests.admin_support import bearer, new_key
from tests.conftest import make_settings
from tests.factories import make_user
from tests.transfer_helpers import run_cli


def test_skeleton_maps_confusables() -> None:
    assert skeleton("p\u0430ypal") == skeleton("paypal")  # Cyrillic a, U+0430
    assert skeleton("rn") == skeleton("m")
    assert erid_skeleton_key("D05B") == erid_skeleton_key("DO5B")
    assert erid_skeleton_key("USER-1") == erid_skeleton_key("USER-l")
    assert login_skeleton_key("Ian@example.com") == login_skeleton_key("lan@example.com")
    assert login_skeleton_key("\uff41lice@example.com") == login_skeleton_key("alice@example.com")
    assert login_skeleton_key("alice@example.com") != login_skeleton_key("alicia@example.com")
    assert skeleton("a\u200bb") == skeleton("ab")


async def _erased_with_event(
    session: AsyncSession, hasher: PasswordHasher, erid: str, *, age: timedelta | None
) -> None:
    user = await make_user(session, hasher, external_reference_id=erid)
    await erase_user(session, user)
    if age is not None:
        session.add(
            LoginEvent(
                kind="profile",
                outcome="failure",
                reason="erased",
                user_key=None,
                external_reference_id=erid.lower(),
                occurred_at=func.now() - age,
            )
        )
    await session.commit()


@pytest.fixture
async def planted(session: AsyncSession, hasher: PasswordHasher) -> None:
    await make_user(session, hasher, login="alice@example.com", email="alice@example.com")
    await make_user(session, hasher, login="bob@example.com", external_reference_id="BOB-1")
    await make_user(session, hasher, login="paypal@example.com")
    await make_user(session, hasher, login="p\u0430ypal@example.com")  # Cyrillic a, U+0430
    await make_user(session, hasher, login="Ian@example.com")
    await make_user(session, hasher, login="lan@example.com")
    await make_user(session, hasher, external_reference_id="D05B-1")
    await make_user(session, hasher, external_reference_id="DO5B-1")
    await make_user(session, hasher, email="shared@example.com")
    await make_user(session, hasher, email="Shared@Example.com")
    await _erased_with_event(session, hasher, "GONE-RECENT", age=timedelta(0))
    await _erased_with_event(session, hasher, "GONE-OLD", age=timedelta(days=40))
    await _erased_with_event(session, hasher, "GONE-QUIET", age=None)


async def test_each_planted_kind_found(session: AsyncSession, planted: None) -> None:
    report = await audit_crosslinks(session, since_days=30)

    counts = {kind: report.findings[kind].count for kind in FINDING_KINDS}
    assert counts == {
        "erid_case": 0,
        "erid_confusable": 1,
        "login_confusable": 2,
        "shared_email": 1,
        "erased_requested": 1,
    }
    assert report.total == 5
    erids = {
        m["external_reference_id"] for m in report.findings["erid_confusable"].samples[0]["members"]
    }
    assert erids == {"D05B-1", "DO5B-1"}
    login_groups = [
        sorted(member["login"] for member in sample["members"])
        for sample in report.findings["login_confusable"].samples
    ]
    assert sorted(login_groups) == [
        ["Ian@example.com", "lan@example.com"],
        ["paypal@example.com", "p\u0430ypal@example.com"],
    ]
    assert report.findings["shared_email"].samples[0]["key"] == "shared@example.com"
    erased = report.findings["erased_requested"].samples
    assert [sample["external_reference_id"] for sample in erased] == ["GONE-RECENT"]
    assert erased[0]["requests"] == 1
    assert erased[0]["event_kinds"] == ["profile"]


async def test_window_limits_erased_requests(session: AsyncSession, planted: None) -> None:
    # A user erased 50 days ago (inserted directly, since erasure cannot be backdated) with a
    # request 40 days ago: outside a 30-day window, inside a 60-day one.
    await session.execute(
        text(
            "INSERT INTO users (external_reference_id, status, erased_at) "
            "VALUES ('GONE-LONG-AGO', 'erased', now() - interval '50 days')"
        )
    )
    session.add(
        LoginEvent(
            kind="login",
            outcome="failure",
            reason="erased",
            external_reference_id="GONE-LONG-AGO",
            occurred_at=func.now() - timedelta(days=40),
        )
    )
    await session.commit()

    assert (await audit_crosslinks(session, since_days=30)).findings["erased_requested"].count == 1
    wide = await audit_crosslinks(session, since_days=60)
    assert wide.findings["erased_requested"].count == 2
    # GONE-OLD's request came before its erasure, so no window makes it a finding.
    assert {s["external_reference_id"] for s in wide.findings["erased_requested"].samples} == {
        "GONE-RECENT",
        "GONE-LONG-AGO",
    }


async def test_erid_case_variants_from_old_data(
    session: AsyncSession, hasher: PasswordHasher
) -> None:
    # Data from before the case-insensitive unique indexes existed; the drop is rolled back
    # with the test's transaction.
    await session.execute(text("DROP INDEX uq_users_external_reference_id_lower"))
    await session.execute(text("DROP INDEX uq_issued_identifiers_external_reference_id_lower"))
    await make_user(session, hasher, external_reference_id="abc-1")
    await make_user(session, hasher, external_reference_id="ABC-1")

    report = await audit_crosslinks(session)

    assert report.findings["erid_case"].count == 1
    members = report.findings["erid_case"].samples[0]["members"]
    assert sorted(m["external_reference_id"] for m in members) == ["ABC-1", "abc-1"]
    assert report.findings["erid_confusable"].count == 0


async def test_clean_store_reports_nothing(session: AsyncSession, hasher: PasswordHasher) -> None:
    await make_user(session, hasher, login="one@example.com", email="one@example.com")
    await make_user(session, hasher, login="two@example.com", email="two@example.com")
    report = await audit_crosslinks(session)
    assert report.total == 0
    assert report.users_scanned >= 2


async def test_http_audit_endpoint(
    session: AsyncSession, client: httpx.AsyncClient, planted: None
) -> None:
    key = await new_key(session, "admin:read")
    response = await client.get("/admin/v1/audits/crosslinks", headers=bearer(key))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["total"] == 5
    assert [finding["kind"] for finding in body["findings"]] == list(FINDING_KINDS)

    response = await client.get("/admin/v1/audits/crosslinks")
    assert response.status_code == 401


async def test_cli_exit_status(fresh_database_url: URL) -> None:
    clean = run_cli(fresh_database_url, "audit", "crosslinks")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "nothing found" in clean.stdout

    settings = make_settings()
    engine = create_engine(fresh_database_url, settings)
    hasher = PasswordHasher(settings)
    try:
        async with create_sessionmaker(engine)() as session:
            await make_user(session, hasher, login="scope@example.com")
            await make_user(session, hasher, login="\u0455cope@example.com")  # Cyrillic s, U+0455
    finally:
        hasher.close()
        await engine.dispose()

    found = run_cli(fresh_database_url, "audit", "crosslinks", "--json")
    assert found.returncode == 1
    assert '"login_confusable"' in found.stdout
    assert '"total": 1' in found.stdout
