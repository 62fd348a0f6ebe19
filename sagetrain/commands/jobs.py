"""`sagetrain jobs`: create, list, inspect, control and watch fine-tuning jobs on a server.

Also holds what the other client commands (`files`, `checkpoints`) share: the connection
options and the one place that turns client errors into `error: ...` and exit code 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sage_core.names import DEFAULT_TASK, OPTIMIZERS, TASKS
from sagetrain.commands.hyperparameters import (
    add_hyperparameter_arguments,
    add_resource_arguments,
    hyperparameters_from_args,
    resources_from_args,
)
from sagetrain.commands.tables import render, when

if TYPE_CHECKING:
    from sagetrain.client import Client

CONNECTION_HELP = ("Talks to a sagetrain server: SAGETRAIN_BASE_URL (e.g. "
                   "http://127.0.0.1:8000) and SAGETRAIN_API_KEY, or --base-url/--api-key.")
WATCH_EXIT_CODES = ("exit status: 0 if the job succeeded, 1 if it failed (its error is "
                    "printed) or on an API error, 2 if it was cancelled")
EXIT_SUCCEEDED, EXIT_FAILED, EXIT_CANCELLED = 0, 1, 2
RECONNECTS = 5


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server")
    group.add_argument("--base-url", metavar="URL", default=None,
                       help="server URL (default: SAGETRAIN_BASE_URL)")
    group.add_argument("--api-key", metavar="KEY", default=None,
                       help="API key (default: SAGETRAIN_API_KEY)")


def call(args: argparse.Namespace, action: Callable[[Client], int]) -> int:
    """Run `action` with a client; client errors print `error: ...` and return 1."""
    from sagetrain.client import Client, SageTrainAPIError, SageTrainError

    try:
        with Client(base_url=args.base_url, api_key=args.api_key) as client:
            return action(client)
    except SageTrainAPIError as exc:
        where = f" (param: {exc.param})" if exc.param else ""
        print(f"error: {exc.message}{where}", file=sys.stderr)
        return 1
    except SageTrainError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1


def print_json(value: Any) -> int:
    print(json.dumps(value, indent=2))
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Manage fine-tuning jobs on a sagetrain server. " + CONNECTION_HELP
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    create = sub.add_parser("create", help="create a fine-tuning job (prints it as JSON)",
                            description="Create a fine-tuning job and print it as JSON; "
                            "hyperparameters left out take the server's defaults. With "
                            "--watch, then follow it as `jobs watch` does (same " +
                            WATCH_EXIT_CODES.removeprefix("exit status: ") + ").")
    create.add_argument("--model", metavar="NAME", required=True,
                        help="base model name the server knows (see GET /v1/models)")
    create.add_argument("--training-file", metavar="ID", required=True,
                        help="id of an uploaded file (file-...)")
    create.add_argument("--validation-file", metavar="ID", default=None,
                        help="id of an uploaded validation file")
    create.add_argument("--task", choices=TASKS, default=None,
                        help="what to train (default: the training file's task, as its "
                        f"upload recognised it; {DEFAULT_TASK} for text rows)")
    add_hyperparameter_arguments(create.add_argument_group(
        "hyperparameters (unset: the server's defaults)"))
    create.add_argument("--sweep-lr", metavar="X", type=float, nargs="+", default=None,
                        help="a sweep: one child job per learning rate (2 to 8; needs "
                        "--validation-file); the printed job is the parent")
    create.add_argument("--sweep-seeds", metavar="N", type=int, nargs="+", default=None,
                        help="run every optimizer and learning rate once per seed (1 to 5, "
                        "e.g. 1 2 3): the sweep's report then gives mean ± std and paired "
                        "95%% intervals (not with --seed; needs --validation-file)")
    create.add_argument("--compare-to", metavar="OPT[=X,...]", nargs="+", default=None,
                        type=_compare_to,
                        help="also run these optimizers on the same data, seed and "
                        "schedule, each over the learning rates after '=' or else its "
                        "default grid (e.g. adamw or adamw=5e-5,1e-4; needs "
                        "--validation-file)")
    add_resource_arguments(create)
    create.add_argument("--integration", metavar="TYPE[=X]", action="append", default=None,
                        type=_integration, dest="integrations",
                        help="report the run to: tensorboard (event files as a result "
                        "file), wandb=PROJECT, mlflow (the server's tracking URI) or "
                        "mlflow=https://HOST; or an integration as JSON, e.g. "
                        "'{\"type\": \"wandb\", \"wandb\": {\"project\": \"p\", "
                        "\"tags\": [\"a\"]}}'; repeatable")
    create.add_argument("--suffix", metavar="S", default=None,
                        help="added to the fine-tuned model's name")
    create.add_argument("--seed", metavar="N", type=int, default=None, help="random seed")
    create.add_argument("--idempotency-key", metavar="KEY", default=None,
                        help="the same key and options return the same job")
    create.add_argument("--watch", action="store_true",
                        help="print one line instead of the job's JSON, then follow the job "
                        "until it ends")
    _add_progress_flag(create)

    listing = sub.add_parser(
        "list", help="list your jobs, newest first, as a table",
        description="List your jobs, newest first, as a table: id, status (a queued job's "
        "place in the queue as #N), base model, created (local time), steps done/total (a "
        "sweep's parent: its runs), fine-tuned model. A sweep's child jobs are listed under "
        "their parent, marked └. --json prints the API's page as it came.")
    listing.add_argument("--limit", metavar="N", type=int, default=None,
                         help="at most N jobs (default: the server's, 20)")
    listing.add_argument("--after", metavar="ID", default=None,
                         help="start after this job id (paging)")
    listing.add_argument("--json", action="store_true", help="print the page as JSON")

    for name, help_text in (("get", "show a job (JSON)"),
                            ("cancel", "cancel a queued, running or paused job"),
                            ("pause", "pause a job; a running one saves a checkpoint first"),
                            ("resume", "queue a paused job again, from its last checkpoint")):
        action = sub.add_parser(name, help=help_text,
                                description=f"{help_text[0].upper()}{help_text[1:]}; prints "
                                "the job as JSON.")
        action.add_argument("job_id", metavar="JOB_ID")

    watch = sub.add_parser("watch", help="follow a job live until it ends",
                           description="Follow a job's live stream: a progress bar with "
                           "step/total, loss, learning rate, throughput and ETA, and its "
                           "events as lines, until it ends. " + WATCH_EXIT_CODES + ".")
    watch.add_argument("job_id", metavar="JOB_ID")
    _add_progress_flag(watch)

    sweep = sub.add_parser(
        "sweep", help="show a sweep's report as a table",
        description="Print a sweep's report as a table: each optimizer and learning rate "
        "with the mean ± std of its last validation metric over its seeds (the best rate of "
        "each optimizer marked *), each comparison of the job's optimizer with another at "
        "their best rates (the paired difference, its 95% interval and a verdict), and the "
        "warnings. --json prints the whole report (every child, the best child of each "
        "optimizer with a summary of its sensitivity report, ...). JOB_ID is the parent, as "
        "`jobs create --sweep-lr/--sweep-seeds/--compare-to` printed it.")
    sweep.add_argument("job_id", metavar="JOB_ID")
    sweep.add_argument("--json", action="store_true", help="print the report as JSON")

    sensitivity = sub.add_parser(
        "sensitivity", help="show a finished job's parameter sensitivity report",
        description="Print a succeeded job's parameter sensitivity report (I = "
        "|theta * grad|, measured on its validation data) as JSON, or save it with --output: "
        "a .png file gets a plot (log10(I) histogram and per-block means), any other name "
        "the JSON. A job still running, or trained without a validation file, has none "
        "(exit status 1).")
    sensitivity.add_argument("job_id", metavar="JOB_ID")
    sensitivity.add_argument("--output", "-o", metavar="FILE", default=None,
                             help="save to FILE instead of printing: PNG if it ends in "
                             ".png, else JSON")

    for each in (create, listing, watch, sensitivity, sweep, *[sub.choices[n] for n in
                                           ("get", "cancel", "pause", "resume")]):
        add_connection_arguments(each)


def _add_progress_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar (events and the outcome are still printed)")


def _compare_to(text: str) -> str | dict[str, Any]:
    """`adamw` or `adamw=5e-5,1e-4` (argparse type)."""
    name, sep, rates = text.partition("=")
    if name not in OPTIMIZERS:
        raise argparse.ArgumentTypeError(
            f"unknown optimizer {name!r}: one of {', '.join(OPTIMIZERS)}")
    if not sep:
        return name
    try:
        return {"optimizer": name, "learning_rate": [float(x) for x in rates.split(",")]}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a list of learning rates: {rates!r} (e.g. adamw=5e-5,1e-4)") from None


def _integration(text: str) -> dict[str, Any]:
    """`tensorboard`, `wandb=PROJECT`, `mlflow[=URI]` or a JSON object (argparse type);
    the server checks the rest."""
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError("give a JSON object: {\"type\": ...}")
        return value
    kind, sep, value = text.partition("=")
    if kind == "tensorboard" and not sep:
        return {"type": "tensorboard"}
    if kind == "wandb" and value:
        return {"type": "wandb", "wandb": {"project": value}}
    if kind == "mlflow":
        return {"type": "mlflow", "mlflow": {"tracking_uri": value} if value else {}}
    raise argparse.ArgumentTypeError(
        f"{text!r}: give tensorboard, wandb=PROJECT, mlflow, mlflow=URI or a JSON object")


def _sweep(args: argparse.Namespace) -> dict[str, list[float] | list[int]] | None:
    sweep: dict[str, list[float] | list[int]] = {}
    if args.sweep_lr:
        sweep["learning_rate"] = args.sweep_lr
    if args.sweep_seeds:
        sweep["seeds"] = args.sweep_seeds
    return sweep or None


def _num(value: Any, fmt: str = ".4f") -> str:
    return format(value, fmt) if isinstance(value, int | float) else "-"


def sweep_table(report: dict[str, Any]) -> str:
    """A sweep's report as text: the rates table, the comparisons, the warnings."""
    metric = report.get("metric", "")
    better = "higher" if report.get("greater_is_better") else "lower"
    rows = report.get("validation_rows")
    lines = [f"sweep {report.get('fine_tuning_job_id')}: {report.get('status')}; {metric} "
             f"({better} is better) on {rows if rows is not None else '?'} validation rows",
             ""]
    statuses: dict[tuple[str, float], list[str]] = {}
    for child in report.get("children") or []:
        statuses.setdefault((child["optimizer"], child["learning_rate"]), []).append(
            child["status"])
    table = [("", "optimizer", "learning rate", "mean", "± std", "seeds", "runs")]
    for rate in report.get("rates") or []:
        runs = statuses.get((rate["optimizer"], rate["learning_rate"]), [])
        counts = ", ".join(f"{runs.count(s)} {s}" for s in dict.fromkeys(runs))
        table.append(("*" if rate.get("best") else "", rate["optimizer"],
                      f"{rate['learning_rate']:g}", _num(rate.get("mean")),
                      _num(rate.get("std")), str(rate.get("n", 0)), counts))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     .rstrip())
    lines.append("* the optimizer's best learning rate by mean")
    comparisons = report.get("comparisons") or []
    if comparisons:
        lines.append("")
    for c in comparisons:
        interval = (f"95% interval [{_num(c['low'])}, {_num(c['high'])}]"
                    if c.get("low") is not None else "no interval")
        lines.append(f"{c['a']} at {_num(c.get('a_learning_rate'), 'g')} vs {c['b']} at "
                     f"{_num(c.get('b_learning_rate'), 'g')}: difference "
                     f"{_num(c.get('difference'), '+.4f')} over {len(c.get('seeds') or [])} "
                     f"paired seeds, {interval}: {c['verdict']}")
    warnings = report.get("warnings") or []
    if warnings:
        lines.append("")
    lines += [f"warning: {w['code']}: {w['message']}" for w in warnings]
    best = report.get("best")
    if best:
        lines += ["", f"best child: {best['id']} ({best['optimizer']}, learning rate "
                      f"{best['learning_rate']:g}, seed {best.get('seed')}, {metric}="
                      f"{_num(best.get('score'))})"
                      + (f", model {best['fine_tuned_model']}" if best.get("fine_tuned_model")
                         else "")]
    return "\n".join(lines)


MODEL_WIDTH = 40
CHILD_MARK = "└ "


def jobs_table(page: dict[str, Any]) -> str:
    """A page of `GET /fine_tuning/jobs` as a table, newest first, with each sweep's child
    jobs under their parent (oldest first, as the sweep made them), marked └."""
    jobs: list[dict[str, Any]] = page.get("data") or []
    if not jobs:
        return "no jobs"
    shown = {job["id"] for job in jobs}
    children: dict[str, list[dict[str, Any]]] = {}
    for job in reversed(jobs):
        if job.get("parent_job_id") in shown:
            children.setdefault(job["parent_job_id"], []).append(job)
    rows: list[list[str]] = []
    orphans: set[str] = set()
    for job in jobs:
        if job.get("parent_job_id") in shown:
            continue  # listed under its parent
        if job.get("parent_job_id"):
            orphans.add(job["parent_job_id"])
        rows.append(_job_row(job))
        rows += [_job_row(child) for child in children.get(job["id"], [])]
    header = ["id", "status", "model", "created", "steps", "fine-tuned model"]
    lines = [render(header, rows, {2: MODEL_WIDTH})]
    if orphans:
        lines.append(f"{CHILD_MARK}a sweep's child job; not on this page, its parent: "
                     + ", ".join(sorted(orphans)))
    if page.get("has_more"):
        lines.append(f"more: --after {jobs[-1]['id']}")
    return "\n".join(lines)


def _job_row(job: dict[str, Any]) -> list[str]:
    status = job["status"]
    if status == "queued" and job.get("queue_position") is not None:
        status += f" #{job['queue_position']}"
    progress = job.get("progress") or {}
    if job.get("sweep"):
        steps = f"{len(job['sweep'].get('runs') or [])} runs"
    elif progress.get("total_steps"):
        steps = f"{progress.get('step', 0)}/{progress['total_steps']}"
    else:
        steps = "-"
    mark = CHILD_MARK if job.get("parent_job_id") else ""
    return [mark + job["id"], status, job["model"], when(job.get("created_at")), steps,
            job.get("fine_tuned_model") or "-"]


def run(args: argparse.Namespace) -> int:
    def action(client: Client) -> int:
        if args.action == "create":
            job = client.create_job(
                args.model, args.training_file, validation_file=args.validation_file,
                hyperparameters=hyperparameters_from_args(args) or None, suffix=args.suffix,
                seed=args.seed, task=args.task, idempotency_key=args.idempotency_key,
                sweep=_sweep(args),
                compare_to=args.compare_to, resources=resources_from_args(args) or None,
                integrations=args.integrations)
            if not args.watch:
                return print_json(job)
            hp = job["hyperparameters"]
            # one line, then the live view (`jobs get ID` shows the whole job)
            print(f"created {job['id']}: {job['model']}, {job['task']}, {hp['optimizer']} at "
                  f"{hp['learning_rate']:g}, {hp['n_epochs']} epochs ({job['status']})",
                  flush=True)
            return watch(client, job["id"], args.progress)
        if args.action == "list":
            page = client.list_jobs(after=args.after, limit=args.limit)
            if args.json:
                return print_json(page)
            print(jobs_table(page))
            return 0
        if args.action == "watch":
            return watch(client, args.job_id, args.progress)
        if args.action == "sensitivity":
            return _sensitivity(client, args.job_id, args.output)
        if args.action == "sweep":
            report = client.sweep_report(args.job_id)
            if args.json:
                return print_json(report)
            print(sweep_table(report))
            return 0
        method = {"get": client.get_job, "cancel": client.cancel_job,
                  "pause": client.pause_job, "resume": client.resume_job}[args.action]
        return print_json(method(args.job_id))

    return call(args, action)


def _sensitivity(client: Client, job_id: str, output: str | None) -> int:
    if output is None:
        return print_json(client.sensitivity(job_id))
    path = Path(output)
    if path.suffix.lower() == ".png":
        path.write_bytes(client.sensitivity(job_id, format="png"))
    else:
        path.write_text(json.dumps(client.sensitivity(job_id), indent=2) + "\n")
    print(f"saved {path}", file=sys.stderr)
    return 0


class _Bar:
    """A tqdm bar fed by the stream's metrics rows; event lines print above it. The rows up
    to `replayed` (the job's step when the watch began: the stream replays them at once)
    only fill the postfix: the bar starts at the first live row, so its rate is the job's
    and not the replay's."""

    def __init__(self, enabled: bool, total: int | None, replayed: int = 0) -> None:
        self.enabled, self.total, self.replayed = enabled, total, replayed
        self.bar: Any = None
        self.postfix: dict[str, str] = {}
        self.last_step: int | None = None

    def metrics(self, row: dict[str, Any]) -> None:
        from tqdm import tqdm

        self.last_step = int(row["step"])
        live = int(row["step"]) > self.replayed
        if self.bar is None and self.enabled and live:
            # Starts at the row's step: the bar's rate then counts from this row, so its
            # first tick shows no rate instead of one step over a microsecond.
            self.bar = tqdm(total=self.total, unit="step", dynamic_ncols=True, desc="training",
                            initial=int(row["step"]))
        for key, label, fmt in (("train_loss", "loss", ".4f"), ("learning_rate", "lr", ".2e"),
                                ("samples_per_second", "samples/s", ".1f"),
                                ("valid_loss", "valid_loss", ".4f"),
                                ("valid_accuracy", "valid_accuracy", ".4f"),
                                ("valid_spearman", "valid_spearman", ".4f")):
            if isinstance(row.get(key), int | float):
                self.postfix[label] = format(row[key], fmt)
        if self.bar is not None:
            self.bar.update(int(row["step"]) - self.bar.n)
            self.bar.set_postfix(self.postfix, refresh=True)

    def write(self, line: str) -> None:
        from tqdm import tqdm

        if self.bar is not None:
            tqdm.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        from tqdm import tqdm

        if self.bar is None and self.enabled and self.last_step is not None:
            # only replayed rows (a job that had ended): show where they got to, no rate
            self.bar = tqdm(total=self.total, unit="step", dynamic_ncols=True,
                            desc="training", initial=self.last_step)
            self.bar.set_postfix(self.postfix, refresh=True)
        if self.bar is not None:
            self.bar.close()


def watch(client: Client, job_id: str, progress: bool = True) -> int:
    """Follow the job's stream to its end, reconnecting from the last cursor if the
    connection drops; the exit status follows the job's outcome."""
    import httpx

    job = client.get_job(job_id)
    bar = _Bar(progress, (job.get("progress") or {}).get("total_steps"),
               int((job.get("progress") or {}).get("step") or 0))
    cursor: str | None = None
    drops = 0
    try:
        while True:
            try:
                for name, data, message_id in client.stream(job_id, last_event_id=cursor):
                    cursor = message_id or cursor
                    if name == "metrics":
                        if bar.total is None:
                            bar.total = (client.get_job(job_id).get("progress") or {}).get(
                                "total_steps")
                        bar.metrics(data)
                    elif name == "event" and data.get("type") != "metrics":
                        when = datetime.fromtimestamp(data.get("created_at", 0))
                        level = data.get("level", "info")
                        prefix = "" if level == "info" else f"{level}: "
                        bar.write(f"[{when:%H:%M:%S}] {prefix}{data.get('message', '')}")
                    elif name == "end":
                        break
                break
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ReadTimeout):
                drops += 1
                if drops > RECONNECTS:
                    raise
    finally:
        bar.close()
    return _outcome(client.get_job(job_id))


def _outcome(job: dict[str, Any]) -> int:
    step = job.get("progress") or {}
    print(f"status: {job['status']} at step {step.get('step')}/{step.get('total_steps')}")
    if job["status"] == "succeeded":
        if job.get("fine_tuned_model"):
            print(f"fine-tuned model: {job['fine_tuned_model']}")
        for warning in job.get("warnings") or []:
            print(f"warning: {warning.get('code')}: {warning.get('message')}")
        return EXIT_SUCCEEDED
    if job["status"] == "cancelled":
        return EXIT_CANCELLED
    error = job.get("error") or {}
    print(f"error: {error.get('message') or 'the job failed'}", file=sys.stderr)
    return EXIT_FAILED
