"""What the lifespan creates and every handler reaches through ``request.state.ctx``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.auth import Authenticator
from service.downstream import Downstream
from service.metrics import Metrics
from service.settings import Settings
from service.storage import Storage

if TYPE_CHECKING:
    from service.library.jobs import JobRunner


@dataclass(slots=True)
class AppContext:
    settings: Settings
    storage: Storage
    downstream: Downstream
    auth: Authenticator
    metrics: Metrics
    jobs: JobRunner | None = None  # the lifespan's ingestion job runner
