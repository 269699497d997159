"""``python -m devstack``: serve the reference downstream (dev/test only, not product code)."""

from __future__ import annotations

import sys

import uvicorn

from devstack.app import create_app
from devstack.settings import DevstackSettings, DevstackSettingsError


def main() -> int:
    try:
        settings = DevstackSettings.from_env()
    except DevstackSettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        backlog=4096,
        timeout_keep_alive=75,  # outlive the gateway's idle pooled connections
        timeout_graceful_shutdown=3,  # do not wait for injected hangs on Ctrl-C
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
