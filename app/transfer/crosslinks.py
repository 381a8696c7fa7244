"""Cross-link audit: find users of the live store who could be mistaken for one another.

Five kinds of finding:

- `erid_case`: ERIDs equal when compared case-insensitively. The unique index on
  `lower(external_reference_id)` forbids them, so a finding means data from before that index.
- `erid_confusable`: ERIDs with the same confusable skeleton (such as `0` and `O`, or `rn` and
  `m`) that are not merely case variants.
- `login_confusable`: logins with the same confusable skeleton that are different logins
  after normalisation (for example Latin `a` and Cyrillic `\u0430`).
- `shared_email`: one email address, compared case-insensitively, on several live users.
- `erased_requested`: an erased user's user_key or ERID in a callback event (`login_events`)
  recorded after the erasure and within the look-back window, meaning a client still asks
  for that user.

Skeletons follow Unicode's UTS #39 section 4: NFD, each character replaced by the prototype of
its confusables class, NFD again. Skeletons are computed in Python, loaded with COPY into a TEMP
table and grouped in SQL, so memory stays flat in the number of users.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession

from app.transfer.importer import BULK_TIMEOUT_SECONDS, raw_connection

FINDING_KINDS = (
    "erid_case",
    "erid_confusable",
    "login_confusable",
    "shared_email",
    "erased_requested",
)
DEFAULT_SAMPLE_GROUPS = 10
DEFAULT_SINCE_DAYS = 30
_USERS_PER_SAMPLE = 10
_BATCH_ROWS = 5000
# Bidirectional marks that confusables.txt's comments carry around right-to-left characters.
_DIRECTION_MARKS = str.maketrans("", "", "\u200e\u200f")


@lru_cache(maxsize=1)
def _prototype_table() -> dict[int, str]:
    """Build the str.translate table from each confusable character to its class prototype.

    The `confusable-homoglyphs` package stores the pairs of Unicode's confusables.txt in both
    directions, which turns every class into a star: the prototype is linked to each of its
    sources. The prototype is the centre (a multi-character sequence is always one). A class of
    two single characters has lost its direction, and either one serves, since both members
    then get the same skeleton.
    """
    from confusable_homoglyphs.confusables import confusables_data

    neighbours: dict[str, set[str]] = {}
    for key, entries in confusables_data.items():
        source = key.translate(_DIRECTION_MARKS)
        for entry in entries:
            target = entry["c"].translate(_DIRECTION_MARKS)
            if source and target and source != target:
                neighbours.setdefault(source, set()).add(target)
                neighbours.setdefault(target, set()).add(source)

    table: dict[int, str] = {}
    for node, linked in neighbours.items():
        if len(node) != 1:
            continue
        prototype = _prototype_of(node, linked, neighbours)
        if prototype != node:
            table[ord(node)] = prototype
    return table


def _prototype_of(node: str, linked: set[str], neighbours: dict[str, set[str]]) -> str:
    if len(linked) > 1:
        return node  # the centre of a star is the prototype
    (other,) = linked
    if len(other) > 1 or len(neighbours.get(other, ())) > 1:
        return other
    return min(node, other)  # a two-character class: pick one member for both


def skeleton(value: str) -> str:
    """Return the UTS #39 skeleton of `value`; default-ignorable format characters are dropped."""
    decomposed = unicodedata.normalize("NFD", value)
    if not decomposed.isascii():
        decomposed = "".join(
            character for character in decomposed if unicodedata.category(character) != "Cf"
        )
    return unicodedata.normalize("NFD", decomposed.translate(_prototype_table()))


def login_skeleton_key(login: str) -> str:
    """Return the grouping key for logins: the skeleton, then NFKC and case folding.

    The skeleton is taken before case folding because some confusables differ by case (a
    capital `I` looks like a small `l`), and folding first would hide them.
    """
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", skeleton(login)).casefold())


def erid_skeleton_key(erid: str) -> str:
    return skeleton(erid).lower()


@dataclass(slots=True)
class Finding:
    kind: str
    count: int = 0
    samples: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "count": self.count, "samples": self.samples}


@dataclass(slots=True)
class CrosslinkReport:
    users_scanned: int
    since_days: int
    findings: dict[str, Finding]

    @property
    def total(self) -> int:
        return sum(finding.count for finding in self.findings.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "users_scanned": self.users_scanned,
            "since_days": self.since_days,
            "total": self.total,
            "findings": [self.findings[kind].as_dict() for kind in FINDING_KINDS],
        }


_CREATE_KEYS = """
CREATE TEMP TABLE audit_keys (
    kind text NOT NULL,
    key text NOT NULL,
    compare text NOT NULL,
    user_key uuid NOT NULL,
    value text NOT NULL
) ON COMMIT DROP
"""

# Groups with more than one distinct `compare` value, largest first; `count` is the number of
# groups and each sample lists up to ten of a group's users.
_GROUPS_SQL = """
WITH groups AS (
    SELECT key, count(*) AS users
    FROM audit_keys WHERE kind = $1
    GROUP BY key HAVING count(DISTINCT compare) > 1
)
SELECT g.key, g.users, count(*) OVER () AS total,
       (SELECT json_agg(json_build_object('user_key', k.user_key, 'value', k.value)
                        ORDER BY k.value)
          FROM (SELECT * FROM audit_keys k2
                 WHERE k2.kind = $1 AND k2.key = g.key
                 ORDER BY k2.value LIMIT $3) k)::text AS members
FROM groups g
ORDER BY g.users DESC, g.key
LIMIT $2
"""

_ERID_CASE_SQL = """
WITH groups AS (
    SELECT lower(external_reference_id) AS key, count(*) AS users
    FROM users GROUP BY 1 HAVING count(*) > 1
)
SELECT g.key, g.users, count(*) OVER () AS total,
       (SELECT json_agg(json_build_object('user_key', u.user_key, 'value', u.external_reference_id)
                        ORDER BY u.external_reference_id)
          FROM users u WHERE lower(u.external_reference_id) = g.key)::text AS members
FROM groups g ORDER BY g.users DESC, g.key LIMIT $1
"""

_SHARED_EMAIL_SQL = """
WITH groups AS (
    SELECT lower(email) AS key, count(*) AS users
    FROM users WHERE email IS NOT NULL AND status <> 'erased'
    GROUP BY 1 HAVING count(*) > 1
)
SELECT g.key, g.users, count(*) OVER () AS total,
       (SELECT json_agg(json_build_object('user_key', m.user_key, 'value', m.login)
                        ORDER BY m.login)
          FROM (SELECT user_key, login FROM users u
                 WHERE lower(u.email) = g.key AND u.status <> 'erased'
                 ORDER BY u.login LIMIT $2) m)::text AS members
FROM groups g ORDER BY g.users DESC, g.key LIMIT $1
"""

_ERASED_REQUESTED_SQL = """
WITH recent AS (
    SELECT id, occurred_at, kind, user_key, lower(external_reference_id) AS erid_lower
    FROM login_events
    WHERE occurred_at >= now() - make_interval(days => $1)
),
erased AS (
    SELECT user_key, external_reference_id, erased_at FROM users WHERE status = 'erased'
),
hits AS (
    SELECT e.user_key AS erased_key, r.id, r.occurred_at, r.kind
    FROM recent r JOIN erased e ON r.user_key = e.user_key
    WHERE r.occurred_at >= e.erased_at
    UNION
    SELECT e.user_key, r.id, r.occurred_at, r.kind
    FROM recent r JOIN erased e ON r.erid_lower = lower(e.external_reference_id)
    WHERE r.occurred_at >= e.erased_at
),
per_user AS (
    SELECT e.user_key, e.external_reference_id, e.erased_at,
           count(*) AS requests, max(h.occurred_at) AS last_request,
           array_agg(DISTINCT h.kind ORDER BY h.kind) AS kinds
    FROM hits h JOIN erased e ON e.user_key = h.erased_key
    GROUP BY e.user_key, e.external_reference_id, e.erased_at
)
SELECT *, count(*) OVER () AS total FROM per_user
ORDER BY last_request DESC, user_key LIMIT $2
"""


def _group_samples(
    rows: list[asyncpg.Record], member_field: str
) -> tuple[int, list[dict[str, Any]]]:
    total = rows[0]["total"] if rows else 0
    samples = [
        {
            "key": row["key"],
            "users": row["users"],
            "members": [
                {"user_key": member["user_key"], member_field: member["value"]}
                for member in json.loads(row["members"] or "[]")
            ],
        }
        for row in rows
    ]
    return total, samples


async def _load_keys(connection: asyncpg.Connection) -> int:
    """Compute the login and ERID skeleton keys of every non-erased user into `audit_keys`."""
    await connection.execute("DROP TABLE IF EXISTS audit_keys", timeout=BULK_TIMEOUT_SECONDS)
    await connection.execute(_CREATE_KEYS, timeout=BULK_TIMEOUT_SECONDS)
    scanned = 0
    batch: list[tuple[str, str, str, Any, str]] = []
    query = (
        "SELECT user_key, external_reference_id, login, login_normalized FROM users "
        "WHERE status <> 'erased' ORDER BY id"
    )
    async for row in connection.cursor(query, prefetch=_BATCH_ROWS, timeout=BULK_TIMEOUT_SECONDS):
        scanned += 1
        erid = row["external_reference_id"]
        batch.append(("erid", erid_skeleton_key(erid), erid.lower(), row["user_key"], erid))
        login = row["login"]
        if login is not None:
            batch.append(
                (
                    "login",
                    login_skeleton_key(login),
                    row["login_normalized"],
                    row["user_key"],
                    login,
                )
            )
        if len(batch) >= _BATCH_ROWS:
            await connection.copy_records_to_table(
                "audit_keys", records=batch, timeout=BULK_TIMEOUT_SECONDS
            )
            batch = []
    if batch:
        await connection.copy_records_to_table(
            "audit_keys", records=batch, timeout=BULK_TIMEOUT_SECONDS
        )
    await connection.execute("ANALYZE audit_keys", timeout=BULK_TIMEOUT_SECONDS)
    return scanned


async def audit_crosslinks(
    session: AsyncSession,
    *,
    since_days: int = DEFAULT_SINCE_DAYS,
    sample_groups: int = DEFAULT_SAMPLE_GROUPS,
) -> CrosslinkReport:
    """Scan the store and return every kind of finding with its count and samples.

    Runs inside the caller's transaction and leaves nothing behind: the TEMP table it uses is
    dropped before it returns.
    """
    connection = await raw_connection(session)
    await connection.execute("SET LOCAL statement_timeout = 0", timeout=BULK_TIMEOUT_SECONDS)
    scanned = await _load_keys(connection)
    findings = {kind: Finding(kind) for kind in FINDING_KINDS}

    rows = await connection.fetch(_ERID_CASE_SQL, sample_groups, timeout=BULK_TIMEOUT_SECONDS)
    total, samples = _group_samples(rows, "external_reference_id")
    findings["erid_case"].count, findings["erid_case"].samples = total, samples

    for kind, key_kind, member_field in (
        ("erid_confusable", "erid", "external_reference_id"),
        ("login_confusable", "login", "login"),
    ):
        rows = await connection.fetch(
            _GROUPS_SQL, key_kind, sample_groups, _USERS_PER_SAMPLE, timeout=BULK_TIMEOUT_SECONDS
        )
        total, samples = _group_samples(rows, member_field)
        findings[kind].count, findings[kind].samples = total, samples

    rows = await connection.fetch(
        _SHARED_EMAIL_SQL, sample_groups, _USERS_PER_SAMPLE, timeout=BULK_TIMEOUT_SECONDS
    )
    total, samples = _group_samples(rows, "login")
    findings["shared_email"].count, findings["shared_email"].samples = total, samples

    rows = await connection.fetch(
        _ERASED_REQUESTED_SQL, since_days, sample_groups, timeout=BULK_TIMEOUT_SECONDS
    )
    findings["erased_requested"].count = rows[0]["total"] if rows else 0
    findings["erased_requested"].samples = [
        {
            "user_key": str(row["user_key"]),
            "external_reference_id": row["external_reference_id"],
            "erased_at": row["erased_at"].isoformat(),
            "requests": row["requests"],
            "last_request": row["last_request"].isoformat(),
            "event_kinds": list(row["kinds"]),
        }
        for row in rows
    ]
    await connection.execute("DROP TABLE audit_keys", timeout=BULK_TIMEOUT_SECONDS)
    return CrosslinkReport(users_scanned=scanned, since_days=since_days, findings=findings)
