"""Command line: ``python -m service serve | migrate | backup | cleanup | copy-to-postgres``.

Exit codes: 0 success; 1 a maintenance command failed (or, with WORKERS > 1, a worker had to be killed at the
end of the grace period); 2 a configuration error (nothing was started); 3 the server could not start (database,
HTTP client, address in use; with WORKERS > 1 also a worker that could not start); 128 + N stopped by signal N
during start-up (with WORKERS > 1: or a second signal during the drain, which kills the workers).
Every failure ends with one line on stderr naming its cause, without a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Awaitable
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.settings import Settings, SettingsError, load_settings

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_STARTUP = 3
EPILOG = (
    "exit codes: 0 ok; 1 a maintenance command failed; 2 configuration error (bad environment variable); "
    "3 the server could not start (or, with WORKERS > 1, one of its workers); 128+N stopped by signal N during "
    "start-up (WORKERS > 1: or by a second signal while draining)"
)

log = logging.getLogger("service")


class StartupReport:
    """Wraps the app for uvicorn to keep the reason a start-up failed.

    Starlette hands uvicorn the whole traceback of a failed lifespan start-up, and uvicorn logs it as an ERROR.
    What fails there is the operator's to fix (a path, a certificate, a newer schema), so ``serve`` prints one
    line naming it instead; the traceback is logged at DEBUG."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.started = False
        self.failure: BaseException | None = None

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine function, so a request costs no extra await (hence ``interface="asgi3"`` below).
        if scope["type"] == "lifespan":
            return self._lifespan(scope, receive, send)
        return self.app(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def relay(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                self.started = True
            elif message["type"] == "lifespan.startup.failed":
                message = {"type": "lifespan.startup.failed", "message": ""}
            await send(message)

        try:
            await self.app(scope, receive, relay)
        except Exception as exc:
            if not self.started:
                self.failure = exc
                log.debug("start-up failure", exc_info=exc)
            raise


def _exit_now(code: int, line: str) -> NoReturn:
    """Log ``line``, write out the log queue and end the process without waiting for other threads.

    Nothing was served yet, so there is nothing to drain: whatever a failed start-up left running (a thread of
    a half-opened resource) must not keep the process alive, as it did when uvicorn gave up but an aiosqlite
    thread stayed."""
    from service import logging_setup

    log.critical("%s", line)
    logging_setup.shutdown()
    sys.stderr.flush()
    os._exit(code)


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerArgs:
    """What the supervisor (``service.supervisor``) hands a worker on its command line."""

    listen_fd: int  # the shared listening socket
    supervisor_fd: int  # read end of a pipe: EOF once the supervisor is gone
    metrics_dir: str  # the shared PROMETHEUS_MULTIPROC_DIR


def _watch_supervisor(fd: int, server: Any) -> None:
    """Block on the supervisor's pipe (a thread of its own); at EOF the supervisor is gone: stop serving."""
    while True:
        try:
            if not os.read(fd, 64):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    if not server.started:
        _exit_now(EXIT_STARTUP, "start-up interrupted: the supervisor is gone")
    log.warning("the supervisor is gone: shutting down")
    server.should_exit = True


def serve(settings: Settings, worker: WorkerArgs | None = None) -> int:
    """One server process: the whole service (``WORKERS=1``), or one worker of a supervisor (``worker``)."""
    import uvicorn

    from service.app import create_app
    from service.listener import Listener
    from service.logging_setup import configure

    configure(settings.log_level, as_json=settings.log_json, access_log=settings.access_log)
    app = StartupReport(create_app(settings, metrics_dir=worker.metrics_dir if worker else None))
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        interface="asgi3",
        log_config=None,
        log_level=settings.log_level,
        access_log=False,  # our middleware writes the access log, with the request id
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        server_header=False,
    )

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if not self.started:
                # A start-up (a migration, a wait for a lock) is not worth finishing when asked to stop: nothing
                # has been served yet, and every database change is one transaction.
                _exit_now(128 + sig, f"start-up interrupted by {signal.Signals(sig).name}")
            super().handle_exit(sig, frame)  # the graceful drain

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            """uvicorn's own start-up (the lifespan, then listening: ``uvicorn.Server.startup``), listening with
            ``service.listener.Listener``, which accepts connections in batches instead of one per loop turn.
            tests/reliability/test_listener.py fails loudly if an uvicorn upgrade moves what this relies on."""
            await self.lifespan.startup()
            if self.lifespan.should_exit:
                sys.exit(EXIT_STARTUP)
            config = self.config
            owns = sockets is None
            if sockets is None:
                try:
                    sockets = [config.bind_socket()]  # logs where it listens, or why it cannot, like uvicorn
                except SystemExit:
                    await self.lifespan.shutdown()  # close the database: its threads would keep us alive
                    raise

            def create_protocol() -> asyncio.Protocol:
                protocol: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
                    config=config, server_state=self.server_state, app_state=self.lifespan.state
                )
                return protocol

            loop = asyncio.get_running_loop()
            listeners = [Listener(loop, s, create_protocol, backlog=config.backlog, owns_socket=owns) for s in sockets]
            self.servers = listeners  # type: ignore[assignment]  # what uvicorn calls: close(), wait_closed()
            self.started = True

    server = Server(config)
    # uvicorn installs ``handle_exit`` while it runs and re-raises a captured SIGTERM/SIGINT after its graceful
    # shutdown; with the default handlers the process would then die of the signal (exit 143, atexit hooks
    # skipped) after a clean drain. The same handler before and after uvicorn's absorbs that re-raise.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, server.handle_exit)
    # Everything imported and built so far lives as long as the process: take it out of the cyclic GC, so a full
    # collection scans only request garbage (bench: event-loop lag spikes of 25-55 ms down to 2-13 ms).
    gc.collect()
    gc.freeze()
    sockets = None
    if worker is not None:
        sockets = [socket.socket(fileno=worker.listen_fd)]
        watcher = threading.Thread(
            target=_watch_supervisor, args=(worker.supervisor_fd, server), name="supervisor-watch", daemon=True
        )
        watcher.start()
    try:
        server.run(sockets=sockets)
    except SystemExit:  # uvicorn's way out of a failed start-up (the lifespan, or the address in use)
        if server.started:
            raise
    if not server.started:
        if app.failure is not None:
            cause = " ".join(str(app.failure).split())
        elif app.started and worker is None:  # uvicorn logged why it could not listen
            cause = f"cannot listen on {settings.host}:{settings.port} (see the error above)"
        else:
            cause = "see the error logged above"
        _exit_now(EXIT_STARTUP, f"start-up failed: {cause}")
    # A clean stop after SIGTERM is a success for the container runtime.
    return 0


def serve_workers(settings: Settings) -> int:
    """``WORKERS`` > 1: migrate once (SQLite), bind the port, then supervise the workers (``service.supervisor``)."""
    from service.logging_setup import configure
    from service.supervisor import Supervisor, listen

    configure(settings.log_level, as_json=settings.log_json, access_log=settings.access_log)

    def interrupted(sig: int, frame: FrameType | None) -> None:
        _exit_now(128 + sig, f"start-up interrupted by {signal.Signals(sig).name}")

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, interrupted)
    # What one process's start-up does, once, before any worker opens the database: SQLite is migrated (the workers
    # then find it current; the version is re-read under the write lock, for supervisors started together); on
    # PostgreSQL the migration is the one-off job's, so this only refuses a newer schema.
    try:
        result = asyncio.run(_with_storage(settings, "start", argparse.Namespace()))
    except Exception as exc:
        cause = " ".join(str(exc).split()) or type(exc).__name__
        # the URL carries a password: named, never shown
        where = (
            "DATABASE_URL" if settings.database_url.get_secret_value() else f"DATABASE_PATH={settings.database_path}"
        )
        _exit_now(EXIT_STARTUP, f"start-up failed: cannot open the database {where}: {cause}")
    for line in result["applied"] if isinstance(result["applied"], list) else []:
        log.info("migration: %s", line)
    try:
        sock = listen(settings.host, settings.port)
    except OSError as exc:
        _exit_now(EXIT_STARTUP, f"start-up failed: cannot listen on {settings.host}:{settings.port}: {exc}")
    return Supervisor(settings, sock).run()


async def _with_storage(settings: Settings, action: str, args: argparse.Namespace) -> dict[str, object]:
    from service.storage import open_storage

    storage = open_storage(settings.replace(db_read_connections=1))
    await storage.open(run_migrations=storage.migrates_on_start if action == "start" else True)
    try:
        if action == "start":
            return {"applied": storage.migrations_applied}
        if action == "migrate":
            return {"applied": storage.migrations_applied or ["schema already current"]}
        if action == "backup":
            return dataclasses.asdict(await storage.backup(args.dest or settings.backup_dir))
        result = await storage.cleanup(keep_newest=args.keep_newest, older_than_days=args.older_than_days)
        return dataclasses.asdict(result)
    finally:
        await storage.close()


async def _copy_to_postgres(settings: Settings) -> dict[str, object]:
    """Migrate the PostgreSQL target (a fresh database gets the schema), then copy the SQLite file into it."""
    from service.storage.postgres import PostgresStorage
    from service.storage.postgres.from_sqlite import copy_sqlite_to_postgres
    from service.storage.sqlite import migrations as sqlite_migrations

    target = PostgresStorage.from_settings(settings.replace(db_pool_size=1))
    await target.open(run_migrations=True)
    await target.close()
    result = await copy_sqlite_to_postgres(
        settings.database_path,
        settings.database_url.get_secret_value(),
        expected_version=sqlite_migrations.SCHEMA_VERSION,
    )
    return {"copied": result.rows, "seconds": round(result.seconds, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description="Session & RAG gateway", epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True)
    serve_cmd = sub.add_parser(
        "serve", help="run the HTTP server (HOST, PORT, DATABASE_PATH, WORKERS, ... from the environment)"
    )
    # A worker of ``WORKERS`` > 1, started by the supervisor; not for hand use (hence hidden).
    serve_cmd.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)
    serve_cmd.add_argument("--supervisor-fd", type=int, help=argparse.SUPPRESS)
    serve_cmd.add_argument("--metrics-dir", help=argparse.SUPPRESS)
    sub.add_parser("migrate", help="bring the database schema up to date (converts a legacy database)")
    backup = sub.add_parser("backup", help="online backup of the database to a timestamped file")
    backup.add_argument("--dest", help="directory for the backup file (default: BACKUP_DIR)")
    cleanup = sub.add_parser("cleanup", help="delete ended sessions beyond a retention rule")
    cleanup.add_argument("--keep-newest", type=int, help="keep the N most recently ended sessions")
    cleanup.add_argument("--older-than-days", type=float, help="delete sessions ended more than D days ago")
    sub.add_parser(
        "copy-to-postgres",
        help="copy the SQLite database at DATABASE_PATH into the empty PostgreSQL database at DATABASE_URL",
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings(serving=args.command == "serve")
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "serve":
        if args.listen_fd is not None:
            if args.supervisor_fd is None or args.metrics_dir is None:
                parser.error("--listen-fd goes with --supervisor-fd and --metrics-dir (the supervisor's own use)")
            return serve(settings, WorkerArgs(args.listen_fd, args.supervisor_fd, args.metrics_dir))
        return serve_workers(settings) if settings.workers > 1 else serve(settings)
    if args.command == "cleanup" and args.keep_newest is None and args.older_than_days is None:
        parser.error("cleanup needs --keep-newest and/or --older-than-days")
    if args.command == "cleanup" and ((args.keep_newest or 0) < 0 or (args.older_than_days or 0) < 0):
        parser.error("--keep-newest and --older-than-days must be >= 0")
    if args.command == "copy-to-postgres":
        return _copy_command(settings, parser)
    on_file = not settings.database_url.get_secret_value()  # SQLite: the file must exist
    if args.command in ("backup", "cleanup") and on_file and not Path(settings.database_path).is_file():
        # a mistyped DATABASE_PATH must not "succeed" on a fresh empty database
        parser.error(f"no database at DATABASE_PATH={settings.database_path!r} (run 'migrate' to create one)")
    from service.storage import NotSupportedByEngine, StorageError

    try:
        result = asyncio.run(_with_storage(settings, args.command, args))
    except NotSupportedByEngine as exc:  # backup on PostgreSQL: the message names pg_dump
        print(f"{args.command} failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (OSError, StorageError, RuntimeError) as exc:  # a locked or unreadable file, a newer schema
        cause = exc.__cause__ if isinstance(exc, StorageError) and exc.__cause__ is not None else exc
        print(f"{args.command} failed: {type(cause).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_FAILED
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _copy_command(settings: Settings, parser: argparse.ArgumentParser) -> int:
    if not settings.database_url.get_secret_value():
        parser.error("copy-to-postgres needs DATABASE_URL (the empty PostgreSQL database to copy into)")
    if not Path(settings.database_path).is_file():
        parser.error(f"no database at DATABASE_PATH={settings.database_path!r} (the SQLite file to copy)")
    from service.storage import StorageError
    from service.storage.postgres.from_sqlite import CopyRefused

    try:
        result = asyncio.run(_copy_to_postgres(settings))
    except CopyRefused as exc:
        print(f"copy-to-postgres refused: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (OSError, StorageError, RuntimeError, ValueError) as exc:
        cause = exc.__cause__ if isinstance(exc, StorageError) and exc.__cause__ is not None else exc
        print(f"copy-to-postgres failed: {type(cause).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_FAILED
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
