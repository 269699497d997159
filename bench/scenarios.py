"""What each scenario sends, and the set-up it needs (done through the server's own API before measuring).

A scenario builds a *plan*: a list of requests that ``bench/lua/plan.lua`` replays round-robin. The same
plan builder runs against the gateway, the baseline and the naive async port (same paths, bodies and tokens),
each on a fresh copy of its seeded database (the naive port's is the baseline's). Tokens are the reference
downstream's generated ``dev:<role>:<user>`` tokens, one set per scenario; the auth cache is warm after set-up
and warm-up, so measured requests use cached tokens.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

GATEWAY = "gateway"
BASELINE = "baseline"
# the naive async port of the legacy design (bench/naive/): measured wherever the baseline is, right after it
NAIVE = "naive"

# Scenario groups selectable with --scenarios (rag expands to the three concurrencies).
GROUPS = ("ceiling", "read", "write", "list", "rag", "mixed", "transport", "overhead", "lag", "scale", "wal")
# "lag": the gateway again at about half the throughput it reached saturated (paced wrk), so the event-loop lag
# shows blocking calls rather than the queueing every closed-loop saturating load causes.
LAG_SCENARIOS = ("ceiling", "read", "write", "list", "rag_c1000", "mixed")
LAG_LOAD_FRACTION = 0.5
PACED = "~50% load"
RAG_CONNECTIONS = (100, 500, 1000)
TRANSPORT_CONNECTIONS = (100, 1000)
RAG_LATENCY_MS = 100
# "scale": the same scenarios (same seeded data, same plans) on SQLite and PostgreSQL with one and two worker
# processes behind one port; only the gateway's environment and its CPUs differ (bench/README.md, "Scale-out").
SQLITE = "sqlite"
POSTGRES = "postgres"
SCALE_SCENARIOS = ("read", "write", "rag_c500")
SCALE_CONFIGS: tuple[tuple[str, int], ...] = ((SQLITE, 1), (SQLITE, 2), (POSTGRES, 1), (POSTGRES, 2))


def scale_variant(engine: str, workers: int) -> str:
    return f"{engine} WORKERS={workers}"


# "wal": the write scenario with SQLite's automatic checkpoint every N WAL pages (the service's
# DB_WAL_AUTOCHECKPOINT; 1000 is its default), back to back so the ratios come from neighbouring runs.
WAL_AUTOCHECKPOINTS = (1000, 4000, 8000)
WAL_DEFAULT_PAGES = 1000


def wal_variant(pages: int) -> str:
    return f"DB_WAL_AUTOCHECKPOINT={pages}"


CORPUS = [
    "Photosynthesis is the process by which green plants convert light energy into chemical energy. "
    "Chlorophyll in the chloroplasts absorbs mostly blue and red light.",
    "The light-dependent reactions take place in the thylakoid membranes and produce ATP and NADPH. "
    "Water is split and oxygen is released as a by-product.",
    "The Calvin cycle runs in the stroma. It fixes carbon dioxide into sugars using the ATP and NADPH "
    "made by the light-dependent reactions; the enzyme RuBisCO catalyses the first step.",
    "Cellular respiration is the reverse process: cells break glucose down to release energy, "
    "consuming oxygen and producing carbon dioxide and water.",
    "Limiting factors of photosynthesis include light intensity, carbon dioxide concentration and "
    "temperature; the slowest factor sets the overall rate.",
]
QUERIES = [
    "What is photosynthesis?",
    "Where does the Calvin cycle take place?",
    "Which light does chlorophyll absorb?",
    "What limits the rate of photosynthesis?",
    "What does RuBisCO do?",
    "How is oxygen released during the light-dependent reactions?",
]


@dataclass(frozen=True)
class PlanLine:
    method: str
    path: str
    token: str | None = None
    body: dict[str, Any] | None = None

    def render(self) -> str:
        body = "" if self.body is None else json.dumps(self.body, separators=(",", ":"))
        if "\t" in self.path or "\n" in body:
            raise ValueError("plan lines cannot contain tabs or newlines")
        return f"{self.method}\t{self.path}\t{self.token or '-'}\t{body}"


def write_plan(lines: Sequence[PlanLine], path: Path) -> Path:
    path.write_text("".join(line.render() + "\n" for line in lines))
    return path


@dataclass(frozen=True)
class Scale:
    """Sizes of the set-up (smaller in --quick mode)."""

    read_sessions: int = 100
    write_sessions: int = 200
    rag_sessions: int = 50
    rag_students: int = 200
    mixed_teachers: int = 20
    mixed_sessions_per_teacher: int = 10
    mixed_students: int = 100
    mixed_plan: int = 4000

    @classmethod
    def quick(cls) -> Scale:
        return cls(
            read_sessions=10,
            write_sessions=20,
            rag_sessions=5,
            rag_students=10,
            mixed_teachers=3,
            mixed_sessions_per_teacher=3,
            mixed_students=10,
            mixed_plan=400,
        )


class SetupError(RuntimeError):
    pass


@dataclass
class Setup:
    """Talks to the server under test (and the reference downstream) to prepare a scenario."""

    base_url: str
    devstack_url: str
    scale: Scale
    client: httpx.AsyncClient = field(init=False)

    async def __aenter__(self) -> Setup:
        self.client = httpx.AsyncClient(timeout=30.0, limits=httpx.Limits(max_connections=32))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    async def create_sessions(self, token: str, n: int, *, label: str) -> list[str]:
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> str:
            async with sem:
                r = await self.client.post(
                    f"{self.base_url}/sessions",
                    json=session_body(f"{label} {i}"),
                    headers={"Authorization": f"Bearer {token}"},
                )
            if r.status_code != 201:
                raise SetupError(f"POST /sessions answered {r.status_code}: {r.text[:300]}")
            sid: str = r.json()["session_id"]
            return sid

        return list(await asyncio.gather(*(one(i) for i in range(n))))

    async def upload_documents(self, session_ids: Sequence[str]) -> None:
        """Give each session a small document in the reference RAG service (directly: identical for both
        servers, and not what is being measured)."""
        sem = asyncio.Semaphore(16)

        async def one(sid: str) -> None:
            async with sem:
                r = await self.client.post(
                    f"{self.devstack_url}/process-and-store",
                    json={
                        "text": "\n\n".join(CORPUS),
                        "metadata": {"session_id": sid, "filename": "photosynthesis.md"},
                        "collection_name": f"session_{sid}",
                        "chunk_size": 400,
                        "chunk_overlap": 40,
                        "chunk_strategy": "paragraph",
                        "embedding_model": "default",
                    },
                )
            if r.status_code != 200:
                raise SetupError(f"devstack /process-and-store answered {r.status_code}: {r.text[:300]}")

        await asyncio.gather(*(one(sid) for sid in session_ids))

    async def check(self, line: PlanLine) -> None:
        """Send one plan request and insist on a 2xx: a broken plan fails fast instead of measuring errors."""
        headers = {"Authorization": f"Bearer {line.token}"} if line.token else {}
        r = await self.client.request(line.method, self.base_url + line.path, json=line.body, headers=headers)
        if not 200 <= r.status_code < 300:
            raise SetupError(f"{line.method} {line.path} answered {r.status_code}: {r.text[:300]}")


def session_body(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "category": "science",
        "description": "Benchmark session",
        "start_state": 1,
        "metadata": {"course": "biology-101", "room": "B12"},
    }


def event_body(k: int) -> dict[str, Any]:
    return {"event_type": "ANSWER_SUBMITTED", "event_data": {"question": k % 20, "correct": k % 3 != 0}}


def rag_body(session_id: str, k: int) -> dict[str, Any]:
    return {"session_id": session_id, "query": QUERIES[k % len(QUERIES)], "top_k": 3}


# ------------------------------------------------------------------------------------------- plans

PlanBuilder = Callable[[Setup], Awaitable[list[PlanLine]]]


async def plan_ceiling(setup: Setup) -> list[PlanLine]:
    return [PlanLine("GET", "/health")]


async def plan_read(setup: Setup) -> list[PlanLine]:
    token = "dev:teacher:bench-read"
    ids = await setup.create_sessions(token, setup.scale.read_sessions, label="read")
    return [PlanLine("GET", f"/sessions/{sid}", token) for sid in ids]


async def plan_write(setup: Setup) -> list[PlanLine]:
    """Half POST /sessions, half POST /sessions/{id}/events spread over many sessions (no single hot row)."""
    token = "dev:teacher:bench-write"
    ids = await setup.create_sessions(token, setup.scale.write_sessions, label="write")
    lines: list[PlanLine] = []
    for k, sid in enumerate(ids):
        lines.append(PlanLine("POST", "/sessions", token, session_body(f"write-new {k}")))
        lines.append(PlanLine("POST", f"/sessions/{sid}/events", token, event_body(k)))
    return lines


async def plan_list(setup: Setup) -> list[PlanLine]:
    return [PlanLine("GET", "/sessions?status=ACTIVE&limit=100", "dev:admin:bench-list")]


async def plan_rag(setup: Setup) -> list[PlanLine]:
    teacher = "dev:teacher:bench-rag"
    ids = await setup.create_sessions(teacher, setup.scale.rag_sessions, label="rag")
    await setup.upload_documents(ids)
    students = [f"dev:student:bench-s{i:03d}" for i in range(setup.scale.rag_students)]
    n = max(len(students), len(ids)) * 5
    return [
        PlanLine("POST", "/rag/query", students[k % len(students)], rag_body(ids[k % len(ids)], k)) for k in range(n)
    ]


async def plan_mixed(setup: Setup) -> list[PlanLine]:
    """A class in progress: teachers create sessions and log events, students read, list and ask the RAG
    service. Weights: read 45%, list 10%, event 15%, create 5%, RAG query 25%."""
    scale = setup.scale
    teachers = [f"dev:teacher:bench-t{i:02d}" for i in range(scale.mixed_teachers)]
    students = [f"dev:student:bench-m{i:03d}" for i in range(scale.mixed_students)]
    owned: list[tuple[str, str]] = []
    for t in teachers:
        owned += [(t, sid) for sid in await setup.create_sessions(t, scale.mixed_sessions_per_teacher, label="mixed")]
    await setup.upload_documents([sid for _, sid in owned])
    rng = random.Random(42)
    kinds = ["read_student", "read_teacher", "list", "event", "create", "rag"]
    weights = [25, 20, 10, 15, 5, 25]
    lines: list[PlanLine] = []
    for k in range(scale.mixed_plan):
        kind = rng.choices(kinds, weights)[0]
        teacher, sid = owned[rng.randrange(len(owned))]
        student = students[rng.randrange(len(students))]
        if kind == "read_student":
            lines.append(PlanLine("GET", f"/sessions/{sid}", student))
        elif kind == "read_teacher":
            lines.append(PlanLine("GET", f"/sessions/{sid}", teacher))
        elif kind == "list":
            lines.append(PlanLine("GET", "/sessions?status=ACTIVE&limit=20", student))
        elif kind == "event":
            lines.append(PlanLine("POST", f"/sessions/{sid}/events", teacher, event_body(k)))
        elif kind == "create":
            lines.append(PlanLine("POST", "/sessions", teacher, session_body(f"mixed-new {k}")))
        else:
            lines.append(PlanLine("POST", "/rag/query", student, rag_body(sid, k)))
    return lines


# ------------------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Scenario:
    name: str
    group: str
    title: str
    connections: int
    build: PlanBuilder
    downstream_latency_ms: int = 0
    # typical response time well below saturation (used to pace the "lag" runs)
    light_load_latency_ms: int = 0


@dataclass(frozen=True)
class Run:
    scenario: Scenario
    target: str  # GATEWAY, BASELINE or NAIVE
    variant: str = "default"
    env: tuple[tuple[str, str], ...] = ()
    group: str = ""
    paced: bool = False
    engine: str = SQLITE  # POSTGRES: the runner gives the gateway a fresh PostgreSQL database (DATABASE_URL)
    workers: int = 1  # WORKERS; the server gets that many CPUs (servers.Cores.server_cores)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.scenario.name, self.target, self.variant)

    @property
    def label(self) -> str:
        extra = "" if self.variant == "default" else f" [{self.variant}]"
        return f"{self.scenario.name} · {self.target}{extra}"


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario("ceiling", "ceiling", "GET /health (no I/O)", 64, plan_ceiling),
        Scenario("read", "read", "GET /sessions/{id}, cached token", 64, plan_read),
        Scenario("write", "write", "POST /sessions + POST /sessions/{id}/events (50/50)", 64, plan_write),
        Scenario("list", "list", "GET /sessions?status=ACTIVE&limit=100, 100k sessions", 64, plan_list),
        *[
            Scenario(
                f"rag_c{c}",
                "rag",
                f"POST /rag/query, downstream +100 ms, {c} conns",
                c,
                plan_rag,
                RAG_LATENCY_MS,
                RAG_LATENCY_MS + 5,
            )
            for c in RAG_CONNECTIONS
        ],
        Scenario(
            "mixed",
            "mixed",
            "blend: read 45 / list 10 / event 15 / create 5 / rag 25 %",
            200,
            plan_mixed,
            RAG_LATENCY_MS,
            30,  # a quarter of the requests wait for the downstream
        ),
    ]
}

# Downstream transport comparison (rag scenario, gateway only): the gateway's own HTTP/1.1 transport (the default),
# aiohttp and httpcore. aiohttp's connector uses only the connection limit (it keeps every idle connection up to
# it); the others have both knobs.
TRANSPORT_VARIANTS: list[tuple[str, dict[str, str]]] = [
    ("default", {}),  # HTTP_TRANSPORT=native (service/downstream/http11.py), HTTP_MAX_CONNECTIONS=200, KEEPALIVE=100
    ("aiohttp conn=200", {"HTTP_TRANSPORT": "aiohttp"}),
    ("httpx conn=200 ka=100", {"HTTP_TRANSPORT": "httpx", "HTTP_MAX_CONNECTIONS": "200", "HTTP_MAX_KEEPALIVE": "100"}),
    ("httpx conn=200 ka=8", {"HTTP_TRANSPORT": "httpx", "HTTP_MAX_CONNECTIONS": "200", "HTTP_MAX_KEEPALIVE": "8"}),
]
OVERHEAD_VARIANT = ("metrics+access log off", {"METRICS_ENABLED": "false", "ACCESS_LOG": "false"})
# which of the two costs more (ceiling only: the cheapest request shows per-request overhead best)
OVERHEAD_SPLIT = [
    ("access log off", {"ACCESS_LOG": "false"}),
    ("metrics off", {"METRICS_ENABLED": "false"}),
]


def plan_runs(
    groups: Sequence[str],
    *,
    baseline: bool = True,
    naive: bool = True,
    scale_scenarios: Sequence[str] = SCALE_SCENARIOS,
) -> list[Run]:
    """The ordered, de-duplicated list of runs for the selected groups (``scale_scenarios``: the scenarios of the
    ``scale`` group). ``baseline``: the peers (the baseline, and the naive port unless ``naive`` is false) run
    right after the gateway's run of each scenario they serve, so their ratios come from neighbouring runs."""
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown scenario group(s) {sorted(unknown)}; choose from {', '.join(GROUPS)}")
    unknown = set(scale_scenarios) - set(SCENARIOS)
    if unknown or not scale_scenarios:
        raise ValueError(f"unknown scale scenario(s) {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    runs: list[Run] = []
    peer_targets = [t for t, on in ((BASELINE, baseline), (NAIVE, baseline and naive)) if on]

    def add(
        scenario: str,
        target: str,
        group: str,
        variant: str = "default",
        env: dict[str, str] | None = None,
        paced: bool = False,
        engine: str = SQLITE,
        workers: int = 1,
    ) -> None:
        env_items = tuple(sorted((env or {}).items()))
        run = Run(SCENARIOS[scenario], target, variant, env_items, group, paced, engine, workers)
        if all(r.key != run.key for r in runs):
            runs.append(run)

    def add_peers(scenario: str, group: str) -> None:
        for target in peer_targets:
            add(scenario, target, group)

    for name in ("ceiling", "read"):
        if name in groups:
            add(name, GATEWAY, name)
        if "overhead" in groups:
            add(name, GATEWAY, "overhead")
            add(name, GATEWAY, "overhead", OVERHEAD_VARIANT[0], OVERHEAD_VARIANT[1])
            if name == "ceiling":
                for variant, env in OVERHEAD_SPLIT:
                    add(name, GATEWAY, "overhead", variant, env)
        if name in groups:
            add_peers(name, name)
    for name in ("write", "list"):
        if name in groups:
            add(name, GATEWAY, name)
            add_peers(name, name)
    for c in RAG_CONNECTIONS:
        name = f"rag_c{c}"
        if "rag" in groups:
            add(name, GATEWAY, "rag")
            add_peers(name, "rag")
        if "transport" in groups and c in TRANSPORT_CONNECTIONS:
            for variant, env in TRANSPORT_VARIANTS:
                add(name, GATEWAY, "transport", variant, env)
    if "mixed" in groups:
        add("mixed", GATEWAY, "mixed")
        add_peers("mixed", "mixed")
    if "lag" in groups:
        for name in LAG_SCENARIOS:
            add(name, GATEWAY, "lag")  # the saturated run it is paced from (already there unless deselected)
        for name in LAG_SCENARIOS:
            add(name, GATEWAY, "lag", PACED, paced=True)
    if "scale" in groups:
        # scenario by scenario, the four configurations back to back: their ratios come from neighbouring runs
        for name in scale_scenarios:
            for engine, workers in SCALE_CONFIGS:
                env = {"WORKERS": str(workers)}
                add(name, GATEWAY, "scale", scale_variant(engine, workers), env, engine=engine, workers=workers)
    if "wal" in groups:
        for pages in WAL_AUTOCHECKPOINTS:  # 1000 too, set explicitly: its own run beside the others
            add("write", GATEWAY, "wal", wal_variant(pages), {"DB_WAL_AUTOCHECKPOINT": str(pages)})
    return runs
