"""`sagetrain serve`: migrations, the HTTP API (uvicorn), the local job executor and the
webhook sender, with nothing else to set up. SQLite and artifacts live under
SAGETRAIN_DATA_DIR. With SAGETRAIN_BROKER_URL set, jobs go to Celery workers (`sagetrain
worker`) instead."""

from __future__ import annotations

import argparse
import logging


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


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from api.main import create_app
    from sage_core.db.migrate import upgrade
    from sage_core.settings import get_settings
    from sage_core.webhooks import WebhookSender
    from sagetrain.dispatchers import build_job_running

    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    try:
        jobs = build_job_running(args.executor, settings)
    except ValueError as exc:
        logging.getLogger("sagetrain").error("%s", exc)
        return 2
    app = create_app(settings, dispatcher=jobs.dispatcher)
    jobs.start()
    webhooks = WebhookSender(settings, app.state.session_factory).start()
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            access_log=args.access_log)
    try:
        uvicorn.Server(config).run()
    finally:
        webhooks.stop()
        jobs.stop()
    return 0
