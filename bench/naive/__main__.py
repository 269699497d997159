"""``python -m bench.naive [--host H] [--port P] [--db PATH]``: serve the naive async port, one uvicorn worker."""

from __future__ import annotations

import argparse
import os

import uvicorn

from bench.naive.app import DEFAULT_DATABASE_PATH, create_app


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.naive", description=__doc__)
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8002")))
    parser.add_argument("--db", default=os.environ.get("DATABASE_PATH", DEFAULT_DATABASE_PATH))
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "info").lower())
    parser.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=_env_bool("ACCESS_LOG", True),
        help="uvicorn access log (default: on, or ACCESS_LOG); set it the same as the gateway under test",
    )
    args = parser.parse_args(argv)
    uvicorn.run(
        create_app(args.db),
        host=args.host,
        port=args.port,
        workers=1,
        log_level=args.log_level,
        access_log=args.access_log,
    )


if __name__ == "__main__":
    main()
