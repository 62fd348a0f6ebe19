"""MLflow, through the `mlflow` client (the `mlflow-skinny` package is enough).

The run goes to the user's http(s) tracking server, or to the operator's
SAGETRAIN_MLFLOW_TRACKING_URI when the integration names none (which may also be a store
on the workers' disks, such as sqlite:////srv/mlflow.db: users cannot name one). The
operator's MLflow credentials in the environment (MLFLOW_TRACKING_TOKEN, _USERNAME,
_PASSWORD, ...) are sent to the operator's tracking URI only, never to a user's.

One MLflow run per job, found again by its tag sagetrain.job_id, so a paused or requeued
job's later attempts continue it. Rows are sent in batches, at most every
FLUSH_SECONDS and at each evaluation, so that a slow server costs the training little;
MLflow's HTTP retries default here to a few seconds in all (MLFLOW_HTTP_REQUEST_* in the
environment override it).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from sage_core.integration_specs import Integration
from sage_core.net_guard import resolve_public
from worker.tracking.base import RunInfo

DEFAULT_EXPERIMENT = "sagetrain"
FLUSH_SECONDS = 5.0
# MLflow's own defaults (7 retries, 120 s a request) would stall a job for minutes on a
# dead server before its integration is dropped.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
OPERATOR_CREDENTIALS = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME",
                        "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_CLIENT_CERT_PATH",
                        "MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_TRACKING_AUTH")
MAX_PARAM_LENGTH = 6000  # MLflow refuses longer parameter values


def flat_params(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested hyperparameters as MLflow parameters: {"lora": {"r": 8}} -> {"lora.r": "8"}."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_params(value, f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_LENGTH]
    return flat


class MlflowTracker:
    name = "mlflow"

    def __init__(self, run: RunInfo) -> None:
        self.info = run
        self._client: Any = None
        self._run_id: str | None = None
        self._pending: list[Any] = []
        self._flushed = time.monotonic()
        self._last_step = 0

    def start(self, integration: Integration, hyperparameters: dict[str, Any]) -> None:
        spec = integration.mlflow
        assert spec is not None
        uri = spec.tracking_uri or self.info.settings.mlflow_tracking_uri
        if not uri:
            raise RuntimeError("no tracking_uri, and this server has no "
                               "SAGETRAIN_MLFLOW_TRACKING_URI")
        for name, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        if spec.tracking_uri is not None and spec.tracking_uri != \
                self.info.settings.mlflow_tracking_uri:
            # this process runs this job only: the operator's secrets go nowhere else
            for name in OPERATOR_CREDENTIALS:
                os.environ.pop(name, None)
            # A user's server: never one on the workers' own network (checked here, where
            # it is called; the MLflow client resolves the name again, so a name that
            # changes its address in between is not caught: egress filtering does that).
            resolve_public(uri, allow_private=self.info.settings.allow_private_targets)
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        name = spec.experiment or DEFAULT_EXPERIMENT
        experiment = client.get_experiment_by_name(name)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else client.create_experiment(name))
        earlier = client.search_runs(
            [experiment_id], filter_string=f"tags.`sagetrain.job_id` = '{self.info.job_id}'",
            max_results=1)
        if earlier:
            self._run_id = earlier[0].info.run_id
            client.update_run(self._run_id, status="RUNNING")
        else:
            tags = {"sagetrain.job_id": self.info.job_id, "sagetrain.model": self.info.model,
                    "sagetrain.task": self.info.task}
            if self.info.parent_job_id:
                tags["sagetrain.parent_job_id"] = self.info.parent_job_id
            run = client.create_run(experiment_id, run_name=self.info.job_id, tags=tags)
            self._run_id = run.info.run_id
            params = [Param(k, v) for k, v in flat_params(hyperparameters).items()]
            for start in range(0, len(params), 100):  # MLflow takes 100 a batch
                client.log_batch(self._run_id, params=params[start:start + 100])
        self._client = client

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._last_step = step
        self._pending += [Metric(key, value, now, step) for key, value in metrics.items()]
        evaluation = any(key.startswith("valid_") for key in metrics)
        if evaluation or time.monotonic() - self._flushed >= FLUSH_SECONDS:
            self._flush()

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        self._flushed = time.monotonic()
        for start in range(0, len(pending), 1000):  # MLflow takes 1000 metrics a batch
            self._client.log_batch(self._run_id, metrics=pending[start:start + 1000])

    def finish(self, summary: dict[str, float], *, status: str) -> Path | None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending += [Metric(key, value, now, self._last_step)
                          for key, value in summary.items()]
        self._flush()
        self._client.set_tag(self._run_id, "sagetrain.status", status)
        mlflow_status = {"succeeded": "FINISHED", "failed": "FAILED"}.get(status, "KILLED")
        self._client.set_terminated(self._run_id, status=mlflow_status)
        self._client = None
        return None

    def close(self) -> None:
        self._client = None
