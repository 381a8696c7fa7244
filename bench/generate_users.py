"""Generate a user file in the import format, with planted conflicts at chosen rates.

    .venv/bin/python bench/generate_users.py --count 1000000 --output /tmp/users.csv

Passwords are pre-hashed: a few hundred real hashes (argon2id, bcrypt, PBKDF2 in passlib's and
Django's formats, sha512-crypt and {SSHA}) are made once and reused, so generation takes
seconds, not days. The user on data row i (0 for the first) has hash number i mod
`--distinct-hashes`, and the password of hash number k is `password-<k>`.

Each planted conflict kind has its own rate, a fraction of the rows (0 by default). The kinds:
duplicate ERIDs (`--duplicate-erid-rate`), ERIDs repeated in another letter case
(`--erid-case-rate`), logins colliding after normalisation (`--login-collision-rate`), invalid
emails (`--invalid-email-rate`), unrecognised hashes (`--bad-hash-rate`), and identities of
users already in the store (`--existing-rate` with `--existing-seed`, the seed of a file that
was imported before). Planted rows are chosen at random without overlap, and the generator
prints how many of each it wrote.
"""

# ruff: noqa: S311 - test data, not secrets

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import uuid
from pathlib import Path
from typing import Any

FIRST_NAMES = ["Émile", "Anna", "José", "Zoë", "Mohammed", "Li", "Søren", "Aoife", "Chidi", "Yuki"]
LAST_NAMES = ["Dupont", "Müller", "García", "O'Brien", "Nakamura", "Okafor", "Ström", "Rossi"]
CITIES = [("Paris", "FR", "75002"), ("Berlin", "DE", "10115"), ("Austin", "US", "78701")]
DOMAINS = ["example.com", "example.org", "mail.example.net", "shop.example.co.uk"]
LOCALES = ["en_US", "fr_FR", "de_DE", "es_ES", "ja_JP"]

ADDRESS_FIELDS = (
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
COLUMNS = [
    "user_key",
    "external_reference_id",
    "login",
    "status",
    "email",
    "first_name",
    "last_name",
    "locale",
    "home_phone",
    "password_hash",
    *(f"shipping_address.{name}" for name in ADDRESS_FIELDS),
    *(f"billing_address.{name}" for name in ADDRESS_FIELDS),
    "attributes.crmSession",
    "attributes.tier",
]
CONFLICT_KINDS = (
    "duplicate_erid",
    "erid_case",
    "login_collision",
    "invalid_email",
    "bad_hash",
    "existing",
)


def make_hashes(count: int) -> list[str]:
    """Return `count` real password hashes across the accepted schemes; k-th is `password-<k>`."""
    from passlib import hash as schemes

    makers = [
        schemes.argon2.using(type="ID", memory_cost=19456, rounds=2, parallelism=1),
        schemes.bcrypt.using(rounds=10),
        schemes.pbkdf2_sha256.using(rounds=29000),
        schemes.django_pbkdf2_sha256.using(rounds=30000),
        schemes.sha512_crypt.using(rounds=5000),
        schemes.ldap_salted_sha1,
    ]
    return [makers[k % len(makers)].hash(f"password-{k}") for k in range(count)]


def identity(seed: int, index: int) -> tuple[str, str, str]:
    """Return the user_key, ERID and login of user `index` of the file made with `seed`."""
    namespace = uuid.UUID(int=seed)
    user_key = str(uuid.uuid5(namespace, f"user-key-{index}"))
    erid = str(uuid.uuid5(namespace, f"erid-{index}")).upper()
    login = f"user{index}.s{seed}@{DOMAINS[index % len(DOMAINS)]}"
    return user_key, erid, login


def make_user(rng: random.Random, seed: int, index: int, hashes: list[str]) -> dict[str, Any]:
    user_key, erid, login = identity(seed, index)
    first = rng.choice(FIRST_NAMES)
    last = rng.choice(LAST_NAMES)
    user: dict[str, Any] = {
        "user_key": user_key,
        "external_reference_id": erid,
        "login": login,
        "status": "active" if rng.random() < 0.97 else "disabled",
        "email": login,
        "first_name": first,
        "last_name": last,
        "locale": rng.choice(LOCALES),
        "home_phone": f"+1 555 {rng.randrange(10**7):07d}",
        "password_hash": hashes[index % len(hashes)],
        "shipping_address": None,
        "billing_address": None,
        "attributes": {},
    }
    if rng.random() < 0.7:
        city, country, postal_code = rng.choice(CITIES)
        user["shipping_address"] = {
            "name1": f"{first} {last}",
            "line1": f"{rng.randrange(1, 999)} Main Street",
            "city": city,
            "postal_code": postal_code,
            "country": country,
        }
        if rng.random() < 0.5:
            user["billing_address"] = dict(user["shipping_address"], company_name="Example Ltd")
    if rng.random() < 0.5:
        user["attributes"]["tier"] = rng.choice(["gold", "silver", "bronze"])
    if rng.random() < 0.2:
        user["attributes"]["crmSession"] = f"{uuid.UUID(int=rng.getrandbits(128))}/8443"
    return user


def plant(
    kind: str, user: dict[str, Any], earlier: dict[str, Any] | None, existing: tuple[str, str, str]
) -> None:
    """Change `user` so that it carries one conflict of `kind`."""
    if kind == "duplicate_erid" and earlier is not None:
        user["external_reference_id"] = earlier["external_reference_id"]
    elif kind == "erid_case" and earlier is not None:
        user["external_reference_id"] = earlier["external_reference_id"].lower()
    elif kind == "login_collision" and earlier is not None:
        user["login"] = earlier["login"].upper()
    elif kind == "invalid_email":
        user["email"] = user["email"].replace("@", " at ")
    elif kind == "bad_hash":
        user["password_hash"] = "md5$" + user["password_hash"][-32:]
    elif kind == "existing":
        user["user_key"], user["external_reference_id"], user["login"] = existing
        user["email"] = user["login"]


def flat_row(user: dict[str, Any]) -> list[str]:
    cells = []
    for column in COLUMNS:
        prefix, dot, rest = column.partition(".")
        value = (user.get(prefix) or {}).get(rest) if dot else user.get(column)
        cells.append("" if value is None else str(value))
    return cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, required=True, help="Number of users to write.")
    parser.add_argument("--output", type=Path, required=True, help=".csv or .ndjson file.")
    parser.add_argument("--seed", type=int, default=1, help="Seed of identities and values.")
    parser.add_argument(
        "--distinct-hashes",
        type=int,
        default=300,
        help="Real hashes to reuse. The user on data row i has the password "
        "'password-<i mod this>'.",
    )
    parser.add_argument(
        "--existing-seed", type=int, default=None, help="Seed of a file imported before."
    )
    for kind in CONFLICT_KINDS:
        parser.add_argument(
            f"--{kind.replace('_', '-')}-rate",
            type=float,
            default=0.0,
            help=f"Fraction of rows planted with the conflict {kind} (0 to 1).",
        )
    args = parser.parse_args(argv)
    if args.existing_rate and args.existing_seed is None:
        parser.error("--existing-rate needs --existing-seed")

    rng = random.Random(args.seed)
    hashes = make_hashes(args.distinct_hashes)
    planned: dict[int, str] = {}
    # Row 0 is never planted, so every copied conflict has an earlier row to copy from.
    candidates = range(1, args.count)
    for kind in CONFLICT_KINDS:
        requested = round(getattr(args, f"{kind}_rate") * args.count)
        free = [
            index
            for index in rng.sample(candidates, min(len(candidates), requested * 2 + 10))
            if index not in planned
        ]
        for index in free[:requested]:
            planned[index] = kind

    counts = dict.fromkeys(CONFLICT_KINDS, 0)
    ndjson = args.output.suffix.lower() in (".ndjson", ".jsonl")
    with args.output.open("w", encoding="utf-8", newline="") as target:
        writer = None if ndjson else csv.writer(target)
        if writer is not None:
            writer.writerow(COLUMNS)
        earlier: dict[str, Any] | None = None
        for index in range(args.count):
            user = make_user(rng, args.seed, index, hashes)
            planted = planned.get(index)
            if planted is not None:
                source = earlier if planted != "existing" else None
                existing = (
                    identity(args.existing_seed, index)
                    if args.existing_seed is not None
                    else ("", "", "")
                )
                plant(planted, user, source, existing)
                counts[planted] += 1
            elif earlier is None or rng.random() < 0.001:
                earlier = user  # an unplanted row that later conflicts may copy
            if writer is not None:
                writer.writerow(flat_row(user))
            else:
                target.write(json.dumps(user, ensure_ascii=False) + "\n")
    sys.stderr.write(json.dumps({"rows": args.count, "planted": counts}) + "\n")
    sys.stderr.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
