"""`sagetrain serve`: migrations, the HTTP API (uvicorn), the local job executor and the
webhook sender, with nothing else to set up. SQLite and artifacts live under
SAGETRAIN_DATA_DIR. With SAGETRAIN_BROKER_URL set, jobs go to Celery workers (`sagetrain
worker`) instead."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from sagetrain.commands.database import add_database_arguments

if TYPE_CHECKING:
    from sage_core.settings import Settings

WILDCARD_HOSTS = ("0.0.0.0", "::", "")
log = logging.getLogger("sagetrain.serve")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--executor", choices=("auto", "local", "celery", "none"),
                        default="auto",
                        help="local: run queued jobs here, one at a time, each in a child "
                             "process; celery: send them to Celery workers (needs "
                             "SAGETRAIN_BROKER_URL); none: only serve the API; auto "
                             "(default): celery if a broker URL is set, else local")
    parser.add_argument("--log-level", default="info",
                        choices=("critical", "error", "warning", "info", "debug"))
    parser.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True,
                        help="log every request (default on)")
    add_database_arguments(parser, init_help=None, what="the data folder: the SQLite "
                           "database, artifacts and job logs")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from api.main import create_app
    from sage_core.db.migrate import upgrade
    from sage_core.stopping import stop_grace
    from sage_core.webhooks import WebhookSender
    from sagetrain.commands.database import settings_from_args
    from sagetrain.dispatchers import build_job_running
    from sagetrain.http_protocol import protocol_with_header_timeout
    from sagetrain.stopping import StoppingServer

    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_from_args(args, export=True)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    try:
        jobs = build_job_running(args.executor, settings)
    except ValueError as exc:
        logging.getLogger("sagetrain").error("%s", exc)
        return 2
    app = create_app(settings, dispatcher=jobs.dispatcher)
    jobs.start()
    print(start_message(args.host, args.port, settings), flush=True)
    webhooks = WebhookSender(settings, app.state.session_factory).start()
    deadline = settings.shutdown_timeout_seconds

    def stop_jobs() -> None:
        jobs.stop(stop_grace(deadline))
        webhooks.stop(min(deadline, settings.webhook_timeout))

    # Idle and slow connections are closed, and requests still in flight at the stop's
    # deadline answered 503: see sagetrain/http_protocol.py and sagetrain/stopping.py.
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            access_log=args.access_log,
                            http=protocol_with_header_timeout(
                                settings.header_timeout, shutdown_timeout=deadline),
                            timeout_keep_alive=settings.keep_alive_timeout,  # type: ignore[arg-type]
                            timeout_graceful_shutdown=int(deadline) + 1)
    server = StoppingServer(config, timeout=deadline, on_stop=stop_jobs,
                            running_jobs=jobs.running_jobs, kill_jobs=jobs.kill_jobs)
    try:
        server.run()
    finally:
        if server.stopper is None:  # it stopped without a signal (it could not start)
            stop_jobs()
        server.wait_for_stop()
    log.info("stopped")
    return 0


def start_message(host: str, port: int, settings: Settings) -> str:
    """Where to point a browser, and which data folder and database this server uses (what
    `sagetrain keys create` must find)."""
    from sagetrain.commands.database import describe_database

    shown = "127.0.0.1" if host in WILDCARD_HOSTS else host
    base = f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"
    everywhere = f" (listening on every address, {host or '0.0.0.0'})" \
        if host in WILDCARD_HOSTS else ""
    url = settings.resolved_database_url
    if settings.database_url:
        keys = "sagetrain keys create --name NAME (with the same SAGETRAIN_DATABASE_URL)"
    else:
        keys = f"sagetrain keys create --name NAME --data-dir {settings.data_dir.resolve()}"
    return "\n".join([
        f"sagetrain serve{everywhere}",
        f"  dashboard:  {base}/",
        f"  API docs:   {base}/docs",
        f"  data:       {settings.data_dir.resolve()}",
        f"  database:   {describe_database(url)}",
        f"  API keys:   {keys}",
    ])
