"""Streaming readers and writers for the CSV and NDJSON user files.

Both formats carry the admin API's field names. CSV flattens the nested objects into columns
named `shipping_address.<field>`, `billing_address.<field>` and `attributes.<name>`; NDJSON keeps
them as nested objects and also accepts the flattened keys. Readers yield one record at a time,
so memory stays flat in the file size.

Row numbers are the line on which a record starts: in CSV the header is line 1, so the first
user is on line 2; in NDJSON every non-blank line is one user.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from app.models.user import ADDRESS_FIELDS

FileFormat = Literal["csv", "ndjson"]
FORMATS: tuple[FileFormat, ...] = ("csv", "ndjson")
_EXTENSIONS: dict[str, FileFormat] = {".csv": "csv", ".ndjson": "ndjson", ".jsonl": "ndjson"}

# Top-level fields in file order. `password` is accepted on import only with an explicit flag
# and is never exported.
USER_FIELDS = (
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
)
IMPORT_ONLY_FIELDS = ("password",)
ADDRESS_OBJECTS = ("shipping_address", "billing_address")
ATTRIBUTES_OBJECT = "attributes"
ATTRIBUTE_PREFIX = "attributes."

# Python's csv module rejects a field over 128 KiB by default. That limit stays because no valid
# value comes near it (attribute values are at most 4 KiB); such a file is reported malformed.
MAX_NDJSON_LINE_BYTES = 1024 * 1024


class FileFormatError(ValueError):
    """The file as a whole cannot be read: wrong encoding, bad header or unknown format."""


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One record of the input: its nested fields, or the reason it could not be read."""

    row: int
    data: dict[str, Any] | None
    error: str | None = None


def detect_format(path: Path | None, explicit: str | None) -> FileFormat:
    """Return the format named by `explicit`, or else the one the file's extension implies."""
    if explicit is not None:
        if explicit not in FORMATS:
            raise FileFormatError(f"unknown format {explicit!r}: use csv or ndjson")
        return explicit
    if path is not None:
        found = _EXTENSIONS.get(path.suffix.lower())
        if found is not None:
            return found
    raise FileFormatError(
        "cannot tell the file format from its name: use a .csv, .ndjson or .jsonl file, "
        "or pass --format csv|ndjson"
    )


def address_columns(kind: str) -> list[str]:
    return [f"{kind}.{field}" for field in ADDRESS_FIELDS]


def _place(record: dict[str, Any], key: str, value: Any) -> str | None:
    """Store `value` under a flattened `key` in `record`; return an error message or None."""
    prefix, dot, rest = key.partition(".")
    if not dot:
        record[key] = value
        return None
    if prefix in ADDRESS_OBJECTS or prefix == ATTRIBUTES_OBJECT:
        nested = record.setdefault(prefix, {})
        if not isinstance(nested, dict):
            return f"{prefix} is given both as an object and as {key}"
        if rest in nested:
            return f"{key} is given twice"
        nested[rest] = value
        return None
    record[key] = value  # validation reports the unknown field by its full name
    return None


# ---------------------------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------------------------


def _split_column(name: str) -> tuple[str | None, str]:
    prefix, dot, rest = name.partition(".")
    return (prefix, rest) if dot else (None, name)


def _check_csv_header(header: list[str], *, allow_plain_passwords: bool) -> None:
    if not header or header == [""]:
        raise FileFormatError("the CSV file has no header row: its first line must name columns")
    known = set(USER_FIELDS) | set(IMPORT_ONLY_FIELDS)
    for kind in ADDRESS_OBJECTS:
        known.update(address_columns(kind))
    seen: set[str] = set()
    for position, name in enumerate(header, start=1):
        if name in seen:
            raise FileFormatError(f"column {name!r} appears twice in the header")
        seen.add(name)
        if name.startswith(ATTRIBUTE_PREFIX) and len(name) > len(ATTRIBUTE_PREFIX):
            continue
        if name not in known:
            raise FileFormatError(
                f"unknown column {name!r} (column {position}): use the admin API's field names, "
                "such as login, external_reference_id, shipping_address.line1 or attributes.<name>"
            )
    if "password" in seen and not allow_plain_passwords:
        raise FileFormatError(
            "the file has a password column: plain passwords are imported only with "
            "--allow-plain-passwords; prefer password_hash"
        )
    if "login" not in seen:
        raise FileFormatError("the CSV header has no login column, which every user needs")


def read_csv(source: BinaryIO, *, allow_plain_passwords: bool) -> Iterator[RawRecord]:
    """Yield the records of a UTF-8 CSV file with a header row; a leading BOM is skipped.

    Empty cells are absent values. Raises FileFormatError for a bad header or bytes that are not
    UTF-8.
    """
    text = io.TextIOWrapper(source, encoding="utf-8-sig", newline="")
    reader = csv.reader(text, strict=True)
    try:
        try:
            header = next(reader)
        except StopIteration:
            raise FileFormatError("the file is empty: expected a header row") from None
        _check_csv_header(header, allow_plain_passwords=allow_plain_passwords)
        width = len(header)
        # (column, object, key): object is None for a top-level field.
        slots = [(name, *_split_column(name)) for name in header]
        start_line = reader.line_num + 1
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise FileFormatError(f"malformed CSV near line {reader.line_num}: {exc}") from None
            row = start_line
            start_line = reader.line_num + 1
            if not cells:
                continue
            if len(cells) != width:
                yield RawRecord(
                    row,
                    None,
                    f"the row has {len(cells)} fields but the header has {width}: "
                    "quote values that contain commas",
                )
                continue
            record: dict[str, Any] = {}
            for (name, nested, key), cell in zip(slots, cells, strict=True):
                if cell == "":
                    continue
                if nested is None:
                    record[name] = cell
                else:
                    record.setdefault(nested, {})[key] = cell
            yield RawRecord(row, record)
    except UnicodeDecodeError as exc:
        raise FileFormatError(
            f"the file is not valid UTF-8 (byte {exc.start} of a read block near line "
            f"{reader.line_num + 1}): save it as UTF-8"
        ) from None
    finally:
        text.detach()


# ---------------------------------------------------------------------------------------------
# NDJSON
# ---------------------------------------------------------------------------------------------


def _ndjson_record(row: int, line: bytes, *, allow_plain_passwords: bool) -> RawRecord:
    try:
        value = json.loads(line)
    except UnicodeDecodeError:
        return RawRecord(row, None, "the line is not valid UTF-8: save the file as UTF-8")
    except json.JSONDecodeError as exc:
        return RawRecord(row, None, f"the line is not valid JSON: {exc.msg} at column {exc.colno}")
    if not isinstance(value, dict):
        return RawRecord(row, None, "each line must be one JSON object describing a user")
    if "password" in value and not allow_plain_passwords:
        return RawRecord(
            row,
            None,
            "the line has a password field: plain passwords are imported only with "
            "--allow-plain-passwords; prefer password_hash",
        )
    record: dict[str, Any] = {}
    for key, item in value.items():
        if "." in key:
            if item is None:
                continue
            problem = _place(record, key, item)
            if problem is not None:
                return RawRecord(row, None, problem)
        elif key in record and isinstance(record[key], dict) and isinstance(item, dict):
            for name, nested in item.items():
                if name in record[key]:
                    return RawRecord(row, None, f"{key}.{name} is given twice")
                record[key][name] = nested
        else:
            record[key] = item
    return RawRecord(row, record)


def read_ndjson(source: BinaryIO, *, allow_plain_passwords: bool) -> Iterator[RawRecord]:
    """Yield the records of a UTF-8 NDJSON file, one JSON object a line; blank lines are skipped."""
    for number, line in enumerate(source, start=1):
        if number == 1 and line.startswith(codecs.BOM_UTF8):
            line = line[len(codecs.BOM_UTF8) :]
        if len(line) > MAX_NDJSON_LINE_BYTES:
            yield RawRecord(number, None, f"the line is longer than {MAX_NDJSON_LINE_BYTES} bytes")
            continue
        if not line.strip():
            continue
        yield _ndjson_record(number, line, allow_plain_passwords=allow_plain_passwords)


def read_records(
    source: BinaryIO, file_format: FileFormat, *, allow_plain_passwords: bool = False
) -> Iterator[RawRecord]:
    if file_format == "csv":
        return read_csv(source, allow_plain_passwords=allow_plain_passwords)
    return read_ndjson(source, allow_plain_passwords=allow_plain_passwords)


# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------


def export_columns(*, include_password_hashes: bool, attribute_names: Iterable[str]) -> list[str]:
    """Return the CSV columns of an export, in their fixed order."""
    columns = [name for name in USER_FIELDS if include_password_hashes or name != "password_hash"]
    for kind in ADDRESS_OBJECTS:
        columns.extend(address_columns(kind))
    columns.extend(f"{ATTRIBUTE_PREFIX}{name}" for name in sorted(attribute_names))
    return columns


class _LineBuffer:
    """A file-like target for csv.writer that hands back what was written."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return len(text)

    def take(self) -> str:
        text = "".join(self.parts)
        self.parts.clear()
        return text


class CsvWriter:
    """Render exported users as CSV lines (RFC 4180 quoting, CRLF line endings)."""

    def __init__(self, columns: list[str]) -> None:
        self.columns = columns
        self._buffer = _LineBuffer()
        self._writer = csv.writer(self._buffer)

    def header(self) -> str:
        self._writer.writerow(self.columns)
        return self._buffer.take()

    def rows(self, users: Iterable[dict[str, Any]]) -> str:
        for user in users:
            self._writer.writerow(_flat_cells(user, self.columns))
        return self._buffer.take()


def _flat_cells(user: dict[str, Any], columns: list[str]) -> list[str]:
    cells: list[str] = []
    for column in columns:
        prefix, dot, rest = column.partition(".")
        value = (user.get(prefix) or {}).get(rest) if dot else user.get(column)
        cells.append("" if value is None else str(value))
    return cells


def ndjson_line(user: dict[str, Any]) -> str:
    """Render one exported user as a compact JSON line; key order is the caller's dict order."""
    return json.dumps(user, ensure_ascii=False, separators=(",", ":")) + "\n"
