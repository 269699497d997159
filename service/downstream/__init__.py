"""The one place that knows httpx: the shared client, its limits, retries and error mapping."""

from service.downstream.client import Downstream, DownstreamError

__all__ = ["Downstream", "DownstreamError"]
