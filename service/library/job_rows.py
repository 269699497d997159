"""The ingestion job row's JSON documents, the same for every engine: pure, no I/O, no SQL."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

JSON_COLUMNS = ("params", "files", "results", "errors")
# recorded when a job whose process died too often fails instead of being claimed again
DIED_TOO_OFTEN = {"filename": "", "error": "the process running it died too many times"}


def new_job_documents(files: list[tuple[int, str]], params: dict[str, Any], extra: dict[str, Any]) -> tuple[str, str]:
    """The ``params`` and ``files`` columns of a new job: what ``process_documents`` gets, and (id, name) pairs."""
    return json.dumps({"process": params, "extra": extra}), json.dumps([{"id": i, "filename": n} for i, n in files])


def parsed(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row with its JSON columns parsed."""
    return {**row, **{column: json.loads(row[column]) for column in JSON_COLUMNS}}
