"""Pure ASGI middlewares, one concern each; the app factory lists them in the order they must run."""

from service.middleware.access_log import AccessLogMiddleware
from service.middleware.body_size import BodySizeLimitMiddleware
from service.middleware.body_timeout import BodyReadTimeoutMiddleware
from service.middleware.disconnect import ClientDisconnectMiddleware
from service.middleware.load_shedding import LoadSheddingMiddleware
from service.middleware.request_id import RequestIdMiddleware
from service.middleware.shutdown import ShutdownMiddleware

__all__ = [
    "AccessLogMiddleware",
    "BodyReadTimeoutMiddleware",
    "BodySizeLimitMiddleware",
    "ClientDisconnectMiddleware",
    "LoadSheddingMiddleware",
    "RequestIdMiddleware",
    "ShutdownMiddleware",
]
