"""The reference downstream app (dev/test/benchmark peer, NOT product code).

One Starlette app serves the three downstream contracts of SPEC section 4 (auth, RAG, questions) from
memory, plus the ``/_control`` fault-injection endpoints. See ``devstack/README.md``.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devstack import auth
from devstack.faults import Control, ControlApi, FaultMiddleware
from devstack.questions import QuestionApi
from devstack.rag import RagApi
from devstack.settings import DevstackSettings
from devstack.store import RagStore
from devstack.web import ApiError, api_error_handler, http_error_handler, server_error_handler


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def create_app(settings: DevstackSettings | None = None) -> Starlette:
    """Build a fresh devstack app with its own in-memory state (settings default to ``DEVSTACK_*`` env)."""
    settings = settings if settings is not None else DevstackSettings.from_env()
    control = Control(settings)
    store = RagStore(settings)
    rag = RagApi(store, settings, control)
    questions = QuestionApi(settings)
    users = auth.Users()
    control_api = ControlApi(control, store.clear, on_reset=users.reset)
    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/users/me", users.me, methods=["GET"]),
        Route("/users/me", users.update_me, methods=["PUT"]),
        Route("/users/me/password", users.change_password, methods=["PUT"]),
        Route("/process-and-store", rag.process_and_store, methods=["POST"]),
        Route("/query", rag.query, methods=["POST"]),
        Route("/sessions/{session_id}/reprocess", rag.reprocess, methods=["POST"]),
        Route("/sessions/{session_id}/chunks", rag.chunks, methods=["GET"]),
        Route("/sessions/{session_id}/collection", rag.delete_collection, methods=["DELETE"]),
        Route("/models/generate", questions.generate, methods=["POST"]),
        Route("/_control", control_api.get, methods=["GET"]),
        Route("/_control", control_api.update, methods=["POST"]),
        Route("/_control/reset", control_api.reset, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(FaultMiddleware, control=control)],
        exception_handlers={
            ApiError: api_error_handler,
            HTTPException: http_error_handler,
            Exception: server_error_handler,
        },
    )
    app.state.settings = settings
    app.state.control = control
    app.state.store = store
    return app
