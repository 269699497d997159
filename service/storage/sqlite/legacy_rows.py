"""The pure half of the legacy conversion: one legacy row in, the new rows (or the reasons to reject it) out.

No SQL and no ``sqlite3`` here (``legacy.py`` is the SQL half: it reads the rows, inserts what this returns and
verifies the counts), so every rule is testable on plain values. What the rules are, and why each row is
migrated, fixed up or rejected, is in ``legacy.py``'s module docstring.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from service.sessions.domain import MAX_EVENT_TYPE_LEN, MAX_STATE, MIN_STATE, OPEN_STATUSES, STATUSES

BACKUP_TABLE = "sessions_legacy_backup"
REJECTED_TABLE = "legacy_rejected"
FALLBACK_USER_ID = "legacy"
VALID_STATUSES = frozenset(STATUSES)
STATE_KEYS = ("to", "new_state", "state")
SUMMARY_REJECTS_SHOWN = 5


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)
_ONE_MS = timedelta(milliseconds=1)
# Extended ISO-8601 date and time, 'T' or ' ' between them; optional seconds, fraction and offset (Z or
# +HH[:MM[:SS]]). No fraction in the offset: ISO has none, and CPython 3.11 mis-parses "+00:00:00.000001".
_ISO_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]+)?)?"
    r"(?:Z|[+-][0-9]{2}(?::?[0-9]{2}(?::?[0-9]{2})?)?)?"
)


# -- public types ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RejectedRow:
    session_id: str | None
    reason: str


@dataclass(frozen=True)
class FixUp:
    session_id: str
    note: str


@dataclass
class LegacyReport:
    legacy_rows: int = 0
    migrated_sessions: int = 0
    migrated_events: int = 0
    rejected: list[RejectedRow] = field(default_factory=list)
    backup_table: str = BACKUP_TABLE
    rejected_table: str = REJECTED_TABLE
    fixups: list[FixUp] = field(default_factory=list)
    dropped_indexes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (
            f"migrated legacy database: {self.legacy_rows} legacy rows -> {self.migrated_sessions} sessions"
            f" with {self.migrated_events} events; original table kept as {self.backup_table}"
        )
        if self.fixups:
            text += f"; {len(self.fixups)} fix-ups (see the report)"
        if self.rejected:
            shown = "; ".join(f"{r.session_id!r}: {r.reason}" for r in self.rejected[:SUMMARY_REJECTS_SHOWN])
            more = len(self.rejected) - SUMMARY_REJECTS_SHOWN
            if more > 0:
                shown += f"; ... and {more} more"
            text += (
                f"; {len(self.rejected)} rows rejected (not migrated, kept in {self.backup_table}"
                f" and {self.rejected_table}): {shown}"
            )
        return text


# -- timestamps -----------------------------------------------------------------------------------------------------
def parse_legacy_timestamp(value: object) -> int | None:
    """ISO-8601 text to Unix milliseconds (floored); naive times are UTC. None or blank text gives None.

    Accepts ``YYYY-MM-DD`` then ``T`` or a space, ``HH:MM[:SS[.fraction]]`` and an optional ``Z`` or
    ``+HH[:MM[:SS]]`` offset (colons optional). Anything else (other types, a date without a time, impossible
    dates) raises ``ValueError``.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"not an ISO-8601 timestamp: {value!r}")
    text = value.strip()
    if not text:
        return None
    if _ISO_RE.fullmatch(text) is None:
        raise ValueError(f"not an ISO-8601 timestamp: {value!r}")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"not an ISO-8601 timestamp: {value!r} ({exc})") from None
    return (moment - (_EPOCH_NAIVE if moment.tzinfo is None else _EPOCH)) // _ONE_MS


# -- conversion of one row ------------------------------------------------------------------------------------------
class Rejected(Exception):
    """A legacy row that cannot be migrated, with every reason found (not just the first)."""

    def __init__(self, session_id: str | None, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.session_id = session_id
        self.reasons = reasons


@dataclass
class Converted:
    """A row ready to insert; ``legacy_values`` and ``inserted`` are filled in by the SQL half."""

    session_id: str
    session: tuple[object, ...]
    events: list[tuple[str, str, int, str]]
    fixups: list[str]
    legacy_values: Sequence[object] = ()
    inserted: bool = False


def convert_row(row: Mapping[str, object]) -> Converted:
    """One legacy row (lower-case column names) to the new session and event rows, or raise ``Rejected``."""
    errors: list[str] = []
    fixups: list[str] = []

    raw_id = row.get("session_id")
    session_id: str | None = None
    if isinstance(raw_id, str) and raw_id.strip():
        session_id = raw_id
    elif isinstance(raw_id, int) and not isinstance(raw_id, bool):
        session_id = str(raw_id)
    elif raw_id is None or isinstance(raw_id, str):
        errors.append("session_id is missing")
    else:
        errors.append(f"session_id {raw_id!r} is not text")

    status = row.get("status")
    if not isinstance(status, str) or status not in VALID_STATUSES:
        errors.append(f"status {status!r} is not one of {', '.join(sorted(VALID_STATUSES))}")
        status = None

    start_state = _state_field("start_state", row.get("start_state"), errors, required=True)
    end_state = _state_field("end_state", row.get("end_state"), errors, required=False)

    unparsed: set[str] = set()
    times: dict[str, int | None] = {}
    for name in ("start_time", "end_time", "created_at", "updated_at"):
        raw = row.get(name)
        try:
            times[name] = parse_legacy_timestamp(raw)
        except ValueError:
            errors.append(f"{name} {raw!r} is not an ISO-8601 timestamp")
            unparsed.add(name)
            times[name] = None
    start_ms, end_ms = times["start_time"], times["end_time"]
    if start_ms is None and "start_time" not in unparsed:
        errors.append("start_time is missing")
    if status is not None and "end_time" not in unparsed:
        is_open = status in OPEN_STATUSES
        if is_open and end_ms is not None:
            errors.append(f"status {status} but end_time is set")
        elif not is_open and end_ms is None:
            errors.append(f"status {status} but end_time is missing")
        elif is_open and end_state is not None:
            errors.append(f"status {status} but end_state is set")
    if start_ms is not None and end_ms is not None and end_ms < start_ms:
        errors.append(f"end_time is before start_time ({end_ms} < {start_ms} ms)")

    metadata_text, metadata = _metadata(row.get("metadata"))
    if metadata is None:
        metadata = {}
        fixups.append('metadata was not a JSON object; kept as {"legacy_metadata": <raw text>}')

    events, last_state = _events(row.get("events"), start_ms, errors)

    if errors or session_id is None or start_ms is None or start_state is None or status is None:
        raise Rejected(session_id, errors)

    if last_state is not None:
        current_state = last_state
    elif end_ms is not None and end_state is not None:
        current_state = end_state
    else:
        current_state = start_state
    if end_ms is not None and end_state is None:
        end_state = current_state
        fixups.append(f"ended session had no end_state; used its last known state {current_state}")

    created_ms = times["created_at"] if times["created_at"] is not None else start_ms
    updated_ms = times["updated_at"] if times["updated_at"] is not None else start_ms
    session = (
        session_id,
        _user_id(metadata),
        start_ms,
        end_ms,
        start_state,
        end_state,
        current_state,
        status,
        metadata_text,
        created_ms,
        updated_ms,
    )
    event_rows = [(session_id, event_type, ts, data) for event_type, ts, data in events]
    return Converted(session_id, session, event_rows, fixups)


def _state_field(name: str, value: object, errors: list[str], *, required: bool) -> int | None:
    if value is None:
        if required:
            errors.append(f"{name} is missing")
        return None
    state = _as_state(value)
    if state is None:
        errors.append(f"{name} {value!r} is not a state code in {MIN_STATE}..{MAX_STATE}")
    return state


def _as_state(value: object) -> int | None:
    """An integer state code in 0..8 (also from ``'3'`` or ``3.0``), else None."""
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9]+\s*", value):
        number = int(value)
    if number is None or not MIN_STATE <= number <= MAX_STATE:
        return None
    return number


def _metadata(raw: object) -> tuple[str, dict[str, object] | None]:
    """The metadata text to store and its parsed object; the object is None when the raw value was wrapped."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return "{}", {}
    if isinstance(raw, str):
        try:
            parsed = _loads(raw)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            return raw, parsed
        text = raw
    elif isinstance(raw, bytes):
        text = raw.decode("utf-8", errors="replace")
    else:
        text = str(raw)
    return _dumps({"legacy_metadata": text}), None


def _user_id(metadata: Mapping[str, object]) -> str:
    for key in ("user_id", "created_by"):
        value = metadata.get(key)
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    return FALLBACK_USER_ID


def _events(raw: object, start_ms: int | None, errors: list[str]) -> tuple[list[tuple[str, int, str]], int | None]:
    """The events as ``(event_type, timestamp_ms, event_data)`` and the last STATE_CHANGED state, if any."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return [], None
    if not isinstance(raw, str):
        errors.append("events is not JSON text")
        return [], None
    try:
        parsed = _loads(raw)
    except ValueError:
        errors.append("events is not valid JSON")
        return [], None
    if parsed is None:
        return [], None
    if not isinstance(parsed, list):
        errors.append("events is not a JSON array")
        return [], None
    events: list[tuple[str, int, str]] = []
    last_state: int | None = None
    for index, event in enumerate(parsed):
        if not isinstance(event, dict):
            errors.append(f"events[{index}] is not a JSON object")
            continue
        event_type = event.get("event_type")
        if not isinstance(event_type, str) or not 1 <= len(event_type) <= MAX_EVENT_TYPE_LEN:
            errors.append(f"events[{index}] has no valid event_type ({event_type!r})")
            continue
        raw_ts = event.get("timestamp")
        try:
            ts = parse_legacy_timestamp(raw_ts)
        except ValueError:
            errors.append(f"events[{index}] timestamp {raw_ts!r} is not an ISO-8601 timestamp")
            continue
        if event_type == "STATE_CHANGED":
            key = next((k for k in STATE_KEYS if event.get(k) is not None), None)
            if key is not None:
                last_state = _as_state(event[key])
                if last_state is None:
                    errors.append(
                        f"events[{index}] STATE_CHANGED {key}={event[key]!r} is not a state code"
                        f" in {MIN_STATE}..{MAX_STATE}"
                    )
        data = {k: v for k, v in event.items() if k not in ("event_type", "timestamp")}
        try:
            data_text = _dumps(data)
        except ValueError:  # e.g. 1e999 parsed as inf: not representable in strict JSON
            errors.append(f"events[{index}] data cannot be stored as strict JSON")
            continue
        if ts is None:
            ts = start_ms
        if ts is not None:
            events.append((event_type, ts, data_text))
    return events, last_state


# -- JSON, strict both ways -----------------------------------------------------------------------------------------
def _reject_constant(token: str) -> object:
    raise ValueError(f"{token} is not valid JSON")


# Strict JSON both ways: NaN and Infinity (accepted by Python, refused by SQLite's json_valid) are errors.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_ASCII_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _loads(text: str) -> object:
    return _DECODER.decode(text)


def _dumps(value: object) -> str:
    text = _ENCODER.encode(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from \\ud800-style escapes: keep them escaped
        text = _ASCII_ENCODER.encode(value)
    return text


def _plain(value: object) -> object:
    if isinstance(value, bytes):
        return {"blob_hex": value.hex()}
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def row_json(names: Sequence[str], values: Sequence[object]) -> str:
    """The whole legacy row as strict JSON, for ``legacy_rejected``: blobs as hex, NaN/Infinity as text."""
    return _dumps({name: _plain(value) for name, value in zip(names, values, strict=True)})
