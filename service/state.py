"""What the lifespan creates and every handler reaches through ``request.state.ctx``."""

from __future__ import annotations

from dataclasses import dataclass

from service.auth import Authenticator
from service.db import Database
from service.downstream import Downstream
from service.metrics import Metrics
from service.settings import Settings


@dataclass(slots=True)
class AppContext:
    settings: Settings
    db: Database
    downstream: Downstream
    auth: Authenticator
    metrics: Metrics
