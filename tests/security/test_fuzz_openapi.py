"""Property-based fuzzing of every documented operation with schemathesis (bounded and deterministic).

The schema under test is the document the gateway serves at ``/openapi.json``: it is built from the same
endpoint list at import time (so schemathesis can generate one pytest item per operation) and
``test_served_document_is_the_fuzzed_document`` proves the served document is that same document.

Each operation is fuzzed as admin, as a teacher and as a student, with positive and negative data
(schemathesis "examples", "coverage" and "fuzzing" phases, fixed seed, derandomized; on PostgreSQL too, without
the "fuzzing" phase: see ``SCHEMA_POSTGRES``), and every response
must: not be a 5xx, use a documented status code and content type, conform to the documented response
schema and headers, reject schema-violating input with a 4xx, and carry no stack trace or SQL.
Path and body ``session_id`` values are swapped (deterministically) for real sessions in most positive
cases, so the handlers run past the "not found" branch.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.schemas import BaseSchema
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from security_kit import Gateway, assert_no_leak, create_session, end_session, security_settings, upload_document

from service.api.openapi import build_openapi
from service.app import all_endpoints, create_app
from support.servers import ServerThread, auth

pytestmark = pytest.mark.engines

# SQLite gets the full budget. PostgreSQL repeats every operation and role with the "examples" and "coverage" phases
# (each schema's boundaries and violations: huge numbers, long and odd strings, missing and extra fields, which is
# where an engine's column ranges and text rules differ) but without the random "fuzzing" phase: what differs
# between the engines is the storage under the handlers, and a second full budget would double the suite's longest
# module (measured: full 25 examples +100 s, coverage only +50 s on a loaded 2-core box).
MAX_EXAMPLES = 25
SEED = 20_251_125


def fuzz_config(*, fuzzing: bool) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True},
            "phases": {"stateful": {"enabled": False}, "fuzzing": {"enabled": fuzzing}},
            "request-timeout": 10,
            # A schema-violating request refused as too large (e.g. more file parts than MAX_UPLOAD_FILES, a bound
            # the document cannot state because it is a setting) is still refused: 413 counts as a rejection too.
            "checks": {
                "negative_data_rejection": {
                    "expected-statuses": [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429, "5xx"]
                }
            },
        }
    )


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]
DOCUMENT = build_openapi(all_endpoints())
# Every route is served twice (``/x`` and ``/api/x``, operation ids ``name`` and ``name_api``) by one handler;
# fuzz each handler once, under its primary path.
def fuzz_schema(*, fuzzing: bool) -> BaseSchema:
    schema = schemathesis.openapi.from_dict(DOCUMENT, config=fuzz_config(fuzzing=fuzzing))
    return schema.exclude(operation_id_regex="^(?!process).*_api$").exclude(operation_id="process_and_store")


SCHEMA = fuzz_schema(fuzzing=True)
SCHEMA_POSTGRES = fuzz_schema(fuzzing=False)


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    """One connection pool for every fuzzed call (schemathesis makes a session per call otherwise)."""
    with requests.Session() as session:
        yield session


@pytest.fixture(scope="module")
def seeder(shared_gateway: Gateway) -> Iterator[httpx.Client]:
    """One client for the seeding of every operation's pool (making one loads the CA bundle, ~50 ms)."""
    with httpx.Client(base_url=shared_gateway.url, timeout=30) as client:
        yield client


@pytest.fixture
def pool(seeder: httpx.Client) -> list[str]:
    """Fresh real sessions for each operation: teacher's active (with a document), teacher's ended,
    teacher2's active, and a second teacher active one (fuzzed DELETE/end calls consume them)."""
    active = create_session(seeder, "teacher")
    upload_document(seeder, active)
    ended = create_session(seeder, "teacher")
    end_session(seeder, ended)
    other = create_session(seeder, "teacher2")
    spare = create_session(seeder, "teacher")
    return [active, ended, other, spare]


def _use_real_ids(case: Any, pool: list[str]) -> None:
    """Most positive cases aim at real sessions (chosen by a hash of the generated value: deterministic)."""
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return

    def pick(generated: object) -> str | None:
        slot = zlib.crc32(repr(generated).encode()) % (len(pool) + 1)
        return pool[slot] if slot < len(pool) else None  # one slot in five keeps the generated id

    if case.path_parameters and "session_id" in case.path_parameters:
        real = pick(case.path_parameters["session_id"])
        if real is not None:
            case.path_parameters["session_id"] = real
    if isinstance(case.body, dict) and isinstance(case.body.get("session_id"), str):
        real = pick(case.body["session_id"])
        if real is not None:
            case.body["session_id"] = real


@pytest.mark.sqlite_only
@pytest.mark.parametrize("role", ["admin", "teacher", "student"])
@SCHEMA.parametrize()
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # `pool` is fresh per operation, on purpose
def test_fuzz_operation(case: Any, role: str, shared_gateway: Gateway, pool: list[str], http: requests.Session) -> None:
    fuzz(case, role, shared_gateway, pool, http, "sqlite")


@pytest.mark.postgres_only
@pytest.mark.parametrize("role", ["admin", "teacher", "student"])
@SCHEMA_POSTGRES.parametrize()
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fuzz_operation_on_postgres(
    case: Any, role: str, shared_gateway: Gateway, pool: list[str], http: requests.Session, module_db_engine: str
) -> None:
    fuzz(case, role, shared_gateway, pool, http, module_db_engine)


def fuzz(case: Any, role: str, gateway: Gateway, pool: list[str], http: requests.Session, engine: str) -> None:
    _use_real_ids(case, pool)
    # On PostgreSQL a backup is pg_dump's job: the documented 501 is a server error by number only (checked below)
    engine_501 = engine == "postgres" and case.operation.path == "/admin/backup"
    checks = [check for check in CHECKS if not (engine_501 and check is not_a_server_error)]
    response = case.call_and_validate(base_url=gateway.url, headers=auth(role), checks=checks, session=http)
    if engine_501:
        assert response.status_code < 500 or (
            response.status_code == 501 and response.json()["error"]["code"] == "not_supported"
        ), response.text
    if response.status_code >= 400:
        assert_no_leak(response.text, sent=_sent_strings(case))


def _sent_strings(case: Any) -> list[str]:
    """Strings the client sent (an error may echo them back: that is not a leak)."""
    out: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(k)
                walk(v)
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v)

    walk([case.path_parameters, case.query, case.body])
    return out


def test_served_document_is_the_fuzzed_document(shared_gateway: Gateway) -> None:
    served = httpx.get(shared_gateway.url + "/openapi.json", timeout=10)
    assert served.status_code == 200
    assert served.json() == DOCUMENT
    assert served.json()["openapi"].startswith("3.1")


def test_every_endpoint_is_documented_and_fuzzed() -> None:
    fuzzed: set[tuple[str, str]] = set()
    for result in SCHEMA.get_all_operations():
        assert isinstance(result, Ok), result  # every operation of the document loads
        fuzzed.add((result.ok().method.upper(), result.ok().path))
    documented = {(m.upper(), p) for p, ops in DOCUMENT["paths"].items() for m in ops}
    for ep in all_endpoints():
        twin = ep.path.removeprefix("/api") if ep.path.startswith("/api/") else "/api" + ep.path
        assert (ep.method, ep.path) in documented and (ep.method, twin) in documented
        assert (ep.method, ep.path) in fuzzed or (ep.method, twin) in fuzzed, ep.path


# -- downstream down: every authenticated call answers 503, probes report "degraded" -------------------------
DEGRADED = schemathesis.openapi.from_dict(
    DOCUMENT,
    config=schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {"max-examples": 5, "deterministic": True, "mode": "positive"},
            "phases": {"stateful": {"enabled": False}, "coverage": {"enabled": False}},
            "request-timeout": 15,
        }
    ),
).exclude(operation_id_regex="_api$")


@pytest.fixture(scope="module")
def degraded_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{sock.getsockname()[1]}"  # bound, never listening: connections are refused
    settings = security_settings(tmp_path_factory.mktemp("degraded-gw"), dead, http_retries=0)
    server = ServerThread(create_app(settings)).start()
    yield Gateway(server, settings)
    server.stop()
    sock.close()


# The role parameter also gives each item a test id of its own: schemathesis on pytest >= 9.2 builds the node id of
# an item without a pytest parameter from the bare function name, so all of this test's operations shared one id,
# and pytest-xdist (which schedules by node id) ran only one of them. tests/conftest.py refuses such duplicates.
@pytest.mark.parametrize("role", ["admin"])
@DEGRADED.parametrize()
def test_fuzz_with_downstream_down(case: Any, role: str, degraded_gateway: Gateway) -> None:
    response = case.call_and_validate(base_url=degraded_gateway.url, headers=auth(role), checks=CHECKS[1:])
    assert response.status_code < 500 or response.status_code == 503, response.text
    if response.status_code >= 400:
        assert_no_leak(response.text, sent=_sent_strings(case))
