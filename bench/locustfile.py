"""Locust user journeys for the gateway (for people who load-test with locust; ``make bench`` uses wrk).

A class in progress: teachers open a session, upload course material and log progress; students find the
session, ask the RAG service and generate practice questions. Run against a gateway wired to the reference
downstream (``make run``), or to real services with real tokens:

    .venv/bin/pip install locust          # or: pip install -e '.[bench]'
    .venv/bin/locust -f bench/locustfile.py --host http://127.0.0.1:8000                  # web UI on :8089
    .venv/bin/locust -f bench/locustfile.py --host http://127.0.0.1:8000 \\
        --headless -u 200 -r 20 -t 5m --csv bench/results/raw/locust                        # headless, CSV out

Environment:
    TEACHER_TOKENS / STUDENT_TOKENS  comma-separated bearer tokens to use (real deployments); by default each
                                     simulated user gets its own reference-downstream token,
                                     ``dev:teacher:locust-tNNNN`` / ``dev:student:locust-sNNNN``
    LOCUST_DOC_BYTES                 size of the document each teacher uploads (default 6000)
    LOCUST_END_AFTER                 events after which a teacher ends the session and opens a new one (default 40)

Request names are grouped by route (``/sessions/{id}``), so locust's statistics match the gateway's
``http_request_duration_seconds{route=...}`` metric. A 409 (session ended meanwhile) or 404 (deleted) seen by
a student is expected in this journey and counted as a success; every other non-2xx is a failure.
"""

from __future__ import annotations

import itertools
import os
import random
import threading
from typing import Any

from locust import HttpUser, between, task

_counter = itertools.count(1)
_lock = threading.Lock()
# ACTIVE sessions opened by the simulated teachers, for the students to work in (bounded).
ACTIVE_SESSIONS: list[str] = []
MAX_SHARED = 500

PARAGRAPHS = [
    "Photosynthesis is the process by which green plants convert light energy into chemical energy. "
    "Chlorophyll in the chloroplasts absorbs mostly blue and red light.",
    "The light-dependent reactions take place in the thylakoid membranes and produce ATP and NADPH. "
    "Water is split and oxygen is released as a by-product.",
    "The Calvin cycle runs in the stroma. It fixes carbon dioxide into sugars using ATP and NADPH; "
    "the enzyme RuBisCO catalyses the first step.",
    "Cellular respiration is the reverse process: cells break glucose down to release energy, "
    "consuming oxygen and producing carbon dioxide and water.",
    "Limiting factors of photosynthesis include light intensity, carbon dioxide concentration and temperature.",
]
QUERIES = [
    "What is photosynthesis?",
    "Where does the Calvin cycle take place?",
    "Which light does chlorophyll absorb?",
    "What limits the rate of photosynthesis?",
    "What does RuBisCO do?",
]
EXPECTED_FOR_STUDENTS = (404, 409)


def _tokens(env: str) -> list[str]:
    return [t.strip() for t in os.environ.get(env, "").split(",") if t.strip()]


def _token(env: str, role: str, prefix: str) -> str:
    n = next(_counter)
    configured = _tokens(env)
    if configured:
        return configured[n % len(configured)]
    return f"dev:{role}:locust-{prefix}{n:04d}"


def _document() -> bytes:
    size = int(os.environ.get("LOCUST_DOC_BYTES", "6000"))
    text = ""
    while len(text) < size:
        text += random.choice(PARAGRAPHS) + "\n\n"
    return text[:size].encode()


def _share(session_id: str) -> None:
    with _lock:
        ACTIVE_SESSIONS.append(session_id)
        if len(ACTIVE_SESSIONS) > MAX_SHARED:
            del ACTIVE_SESSIONS[0]


def _unshare(session_id: str) -> None:
    with _lock:
        if session_id in ACTIVE_SESSIONS:
            ACTIVE_SESSIONS.remove(session_id)


def _pick() -> str | None:
    with _lock:
        return random.choice(ACTIVE_SESSIONS) if ACTIVE_SESSIONS else None


class Teacher(HttpUser):
    """Opens a session, uploads material, logs state changes and events, checks the session, ends it."""

    weight = 1
    wait_time = between(1.0, 3.0)

    def on_start(self) -> None:
        self.client.headers["Authorization"] = f"Bearer {_token('TEACHER_TOKENS', 'teacher', 't')}"
        self.session_id: str | None = None
        self.events = 0
        self.state = 0
        self.open_session()

    def on_stop(self) -> None:
        if self.session_id:
            self.end_session()

    def open_session(self) -> None:
        body = {
            "name": f"Biology lesson {random.randint(1, 10_000)}",
            "category": "science",
            "description": "Photosynthesis and respiration",
            "start_state": 0,
            "metadata": {"course": "biology-101"},
            "rag_settings": {"top_k": 4, "chain_type": "stuff"},
        }
        with self.client.post("/sessions", json=body, name="/sessions", catch_response=True) as r:
            if r.status_code != 201:
                r.failure(f"create answered {r.status_code}")
                return
            self.session_id = r.json()["session_id"]
        self.events = 0
        self.state = 0
        files = [("files", ("photosynthesis.md", _document(), "text/markdown"))]
        data = {
            "session_id": self.session_id,
            "chunk_size": "600",
            "chunk_overlap": "60",
            "chunk_strategy": "paragraph",
        }
        self.client.post(
            "/api/documents/process-and-store", data=data, files=files, name="/api/documents/process-and-store"
        )
        _share(self.session_id)

    def end_session(self) -> None:
        sid = self.session_id
        if sid is None:
            return
        _unshare(sid)
        self.client.post(
            f"/sessions/{sid}/end", json={"status": "COMPLETED", "end_state": 8}, name="/sessions/{id}/end"
        )
        self.session_id = None

    @task(6)
    def log_event(self) -> None:
        if self.session_id is None:
            self.open_session()
            return
        self.events += 1
        body: dict[str, Any] = {"event_type": "SLIDE_SHOWN", "event_data": {"slide": self.events}}
        if self.events % 5 == 0 and self.state < 8:
            self.state += 1
            body["state"] = self.state
        self.client.post(f"/sessions/{self.session_id}/events", json=body, name="/sessions/{id}/events")
        if self.events >= int(os.environ.get("LOCUST_END_AFTER", "40")):
            self.end_session()
            self.open_session()

    @task(3)
    def check_session(self) -> None:
        if self.session_id:
            self.client.get(f"/sessions/{self.session_id}", name="/sessions/{id}")

    @task(1)
    def my_sessions(self) -> None:
        self.client.get("/sessions?limit=20", name="/sessions")

    @task(1)
    def tune_rag(self) -> None:
        if self.session_id:
            body = {"top_k": random.choice([3, 4, 5]), "use_rerank": random.random() < 0.5}
            self.client.patch(
                f"/sessions/{self.session_id}/rag-settings", json=body, name="/sessions/{id}/rag-settings"
            )


class Student(HttpUser):
    """Finds an active session, reads it, asks questions about the material, generates practice questions."""

    weight = 5
    wait_time = between(2.0, 6.0)

    def on_start(self) -> None:
        self.client.headers["Authorization"] = f"Bearer {_token('STUDENT_TOKENS', 'student', 's')}"
        self.client.get("/profile", name="/profile")

    def _expect(self, method: str, path: str, name: str, **kwargs: Any) -> None:
        with self.client.request(method, path, name=name, catch_response=True, **kwargs) as r:
            if r.status_code in EXPECTED_FOR_STUDENTS:
                r.success()  # the teacher ended or deleted the session meanwhile
            elif not 200 <= r.status_code < 300:
                r.failure(f"{r.status_code}: {r.text[:200]}")

    @task(2)
    def browse(self) -> None:
        """Lists active sessions (a JSON array) and, now and then, the next page named by the Link header."""
        r = self.client.get("/sessions?status=ACTIVE&limit=20", name="/sessions?status=ACTIVE")
        following = r.links.get("next", {}).get("url")
        if following and random.random() < 0.25:
            self.client.get(following, name="/sessions?status=ACTIVE (next page)")

    @task(3)
    def read_session(self) -> None:
        sid = _pick()
        if sid:
            self._expect("GET", f"/sessions/{sid}", "/sessions/{id}")

    @task(5)
    def ask(self) -> None:
        sid = _pick()
        if sid:
            body = {"session_id": sid, "query": random.choice(QUERIES), "top_k": 4}
            self._expect("POST", "/rag/query", "/rag/query", json=body)

    @task(1)
    def practice(self) -> None:
        sid = _pick()
        if sid:
            body = {"count": random.randint(3, 8)}
            self._expect("POST", f"/sessions/{sid}/generate-questions", "/sessions/{id}/generate-questions", json=body)
