"""Prometheus metrics for `GET /metrics`, in a registry of the app's own (several apps in one
process never share or clash over series).

Two sources:
- `JobsCollector` reads the jobs table at scrape time (jobs by status, queue depth, progress
  of each running job keyed by its worker), so the request path keeps no job bookkeeping;
- `RequestDurationMiddleware` times every HTTP request under its route template.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sage_core.db.models import Job, JobMetric, JobStatus

ALL_STATUSES = (JobStatus.VALIDATING_FILES, JobStatus.QUEUED, JobStatus.RUNNING,
                JobStatus.PAUSED, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
UNMATCHED = "unmatched"
# Label values must stay few: any other method name (a client may send any token) is one.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"
NO_WORKER = "unknown"  # a running job whose lease owner is not recorded (never expected)


@cache
def _status_counts_query() -> Select[str, int]:
    return select(Job.status, func.count()).group_by(Job.status)


@cache
def _running_progress_query() -> Select[Any]:
    # The newest train row of each running job: a backward walk of ix_job_metrics_job_step.
    latest_train = (select(JobMetric.data).where(JobMetric.job_id == Job.id,
                                                 JobMetric.kind == "train")
                    .order_by(JobMetric.step.desc(), JobMetric.id.desc()).limit(1)
                    .correlate(Job).scalar_subquery())
    # Job.sweep comes along to leave out sweep parents: running, but never trained by a
    # worker (their children are). It is SQL NULL or JSON null on other jobs, so the test is
    # made in Python.
    return (select(Job.id, Job.lease_owner, Job.step, Job.total_steps, latest_train,
                   Job.sweep)
            .where(Job.status == JobStatus.RUNNING).order_by(Job.id))


class JobsCollector(Collector):
    """Job figures computed from the database at each scrape: two aggregate queries in a
    session of their own."""

    def __init__(self, session_factory: Callable[[], Session]):
        self._sessions = session_factory

    def describe(self) -> Iterator[Metric]:
        # Names only: registering the collector must not query the database.
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        jobs, queued, samples, step, total = self._families()
        with self._sessions() as session:
            counts: dict[str, int] = dict(session.execute(_status_counts_query()).tuples().all())
            running = session.execute(_running_progress_query()).all()
        queued.add_metric([], counts.get(JobStatus.QUEUED, 0))
        for status in ALL_STATUSES:
            jobs.add_metric([status], counts.pop(status, 0))
        for status, count in sorted(counts.items()):  # a status this module does not know
            jobs.add_metric([status], count)
        for job_id, owner, job_step, total_steps, data, sweep in running:
            if sweep is not None:
                continue
            labels = [owner or NO_WORKER, job_id]
            step.add_metric(labels, job_step)
            if total_steps:
                total.add_metric(labels, total_steps)
            rate = data.get("samples_per_second") if isinstance(data, dict) else None
            if isinstance(rate, int | float):
                samples.add_metric(labels, rate)
        yield from (jobs, queued, samples, step, total)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        worker = ["worker", "job_id"]
        return (
            GaugeMetricFamily("sagetrain_jobs", "Jobs in each status.", labels=["status"]),
            GaugeMetricFamily("sagetrain_queue_depth", "Jobs queued and waiting for a worker."),
            GaugeMetricFamily("sagetrain_worker_samples_per_second",
                              "Training throughput of each running job, from its newest "
                              "train metrics row.", labels=worker),
            GaugeMetricFamily("sagetrain_worker_training_step",
                              "Optimizer steps done by each running job.", labels=worker),
            GaugeMetricFamily("sagetrain_worker_training_total_steps",
                              "Optimizer steps planned for each running job.", labels=worker),
        )


class RequestDurationMiddleware:
    """Pure ASGI: times each HTTP request under (method, route template, status code).

    The route template is the matched route's `path_format` (which FastAPI leaves in the
    scope), so ids never become label values; a request no route matched is `unmatched`,
    and a method outside `KNOWN_METHODS` is `other`: a client cannot add label values.
    """

    def __init__(self, app: ASGIApp, histogram: Histogram):
        self.app = app
        self._histogram = histogram
        # labels() takes a lock and builds a key each call; the label sets are few.
        self._children: dict[tuple[str, str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # an exception before the response starts ends as a 500
        start = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path_format", None) or UNMATCHED
            method = scope["method"] if scope["method"] in KNOWN_METHODS else OTHER_METHOD
            key = (method, template, str(status))
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self._histogram.labels(*key)
            child.observe(time.perf_counter() - start)


def make_registry(session_factory: Callable[[], Session]) -> tuple[CollectorRegistry, Histogram]:
    """The app's registry with the jobs collector, and the request-duration histogram."""
    registry = CollectorRegistry()
    registry.register(JobsCollector(session_factory))
    histogram = Histogram("sagetrain_http_request_duration_seconds",
                          "HTTP request latency, by method, route template and status code.",
                          ["method", "route", "status_code"], registry=registry,
                          buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5,
                                   10))
    return registry, histogram
