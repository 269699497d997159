"""A client that hangs up while its body is being read is not a server error."""

from __future__ import annotations

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from service.middleware.access_log import UNANSWERED_STATUS


class ClientDisconnectMiddleware:
    """Ends the request quietly (no one to answer, no traceback) and has it recorded as 499, nginx's status for
    "client closed request"; a response already under way keeps the status it was sent with."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except ClientDisconnect:
            scope[UNANSWERED_STATUS] = 499
