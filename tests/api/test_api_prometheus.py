"""`GET /metrics`: Prometheus text, job figures read from the database at scrape time, and
request latency under route templates."""

from __future__ import annotations

from api_helpers import Service
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from sage_core.db.models import Job, JobMetric, JobStatus


def scrape(service: Service) -> list[Sample]:
    response = service.client.get("/metrics")  # no key needed
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return [s for family in text_string_to_metric_families(response.text)
            for s in family.samples]


def values(samples: list[Sample], name: str, label: str) -> dict[str, float]:
    return {s.labels[label]: s.value for s in samples if s.name == name}


def sessions(service: Service) -> sessionmaker[Session]:
    return service.client.app.state.session_factory  # type: ignore[attr-defined]


def test_jobs_by_status_and_queue_depth(service: Service) -> None:
    samples = scrape(service)
    empty = values(samples, "sagetrain_jobs", "status")
    assert empty == {s: 0 for s in ("validating_files", "queued", "running", "paused",
                                    "succeeded", "failed", "cancelled")}
    assert [(s.labels, s.value) for s in samples if s.name == "sagetrain_queue_depth"] == [
        ({}, 0)]

    jobs = [service.create_job() for _ in range(3)]
    r = service.client.post(f"/v1/fine_tuning/jobs/{jobs[0]['id']}/cancel",
                            headers=service.auth())
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    samples = scrape(service)
    by_status = values(samples, "sagetrain_jobs", "status")
    assert by_status["queued"] == 2 and by_status["cancelled"] == 1
    assert sum(by_status.values()) == 3
    assert [s.value for s in samples if s.name == "sagetrain_queue_depth"] == [2]


def test_running_job_progress_under_its_worker(service: Service) -> None:
    running, idle = service.create_job(), service.create_job()
    with sessions(service).begin() as s:
        s.execute(update(Job).where(Job.id == running["id"]).values(
            status=JobStatus.RUNNING, lease_owner="gpu-box-1:4242", step=7, total_steps=20))
        for step, rate in ((5, 11.0), (7, 12.5)):
            s.add(JobMetric(job_id=running["id"], step=step, kind="train",
                            data={"train_loss": 0.5, "samples_per_second": rate}))
        s.add(JobMetric(job_id=running["id"], step=7, kind="eval", data={"valid_loss": 0.4}))
        s.add(JobMetric(job_id=idle["id"], step=1, kind="train",
                        data={"samples_per_second": 99.0}))  # queued: not shown
    samples = scrape(service)
    labels = {"worker": "gpu-box-1:4242", "job_id": running["id"]}

    def gauge(name: str) -> list[tuple[dict[str, str], float]]:
        return [(s.labels, s.value) for s in samples if s.name == name]

    assert gauge("sagetrain_worker_samples_per_second") == [(labels, 12.5)]
    assert gauge("sagetrain_worker_training_step") == [(labels, 7)]
    assert gauge("sagetrain_worker_training_total_steps") == [(labels, 20)]
    assert values(samples, "sagetrain_jobs", "status")["running"] == 1


def test_sweep_parent_counts_as_running_but_has_no_worker_series(service: Service) -> None:
    parent = service.create_job()
    with sessions(service).begin() as s:
        s.execute(update(Job).where(Job.id == parent["id"]).values(
            status=JobStatus.RUNNING, sweep={"runs": []}))
    samples = scrape(service)
    assert values(samples, "sagetrain_jobs", "status")["running"] == 1
    assert not [s for s in samples if s.name.startswith("sagetrain_worker_")]


def test_request_latency_under_the_route_template(service: Service) -> None:
    job = service.create_job()
    for _ in range(2):
        assert service.client.get(f"/v1/fine_tuning/jobs/{job['id']}",
                                  headers=service.auth()).status_code == 200
    assert service.client.get("/v1/fine_tuning/jobs/ftjob-missing",
                              headers=service.auth()).status_code == 404
    assert service.client.get("/no/such/path").status_code == 404
    samples = scrape(service)
    counts = {(s.labels["method"], s.labels["route"], s.labels["status_code"]): s.value
              for s in samples if s.name == "sagetrain_http_request_duration_seconds_count"}
    template = "/v1/fine_tuning/jobs/{job_id}"
    assert counts[("GET", template, "200")] == 2
    assert counts[("GET", template, "404")] == 1
    assert counts[("POST", "/v1/fine_tuning/jobs", "200")] == 1
    assert counts[("GET", "unmatched", "404")] == 1
    buckets = [s for s in samples if s.name == "sagetrain_http_request_duration_seconds_bucket"
               and s.labels["route"] == template and s.labels["status_code"] == "200"]
    assert buckets and max(s.value for s in buckets) == 2  # the +Inf bucket
    for s in samples:
        assert not any(job["id"] in v or "missing" in v for v in s.labels.values()), s


def test_odd_methods_and_paths_add_no_label_values(service: Service) -> None:
    """Issue 17 item 5: every unusual method name (or unknown path) was a new label value
    for good, so a client could grow /metrics without bound."""
    def flood(tag: str) -> None:
        for i in range(40):
            service.client.request(f"X{tag}{i}", "/v1/files", headers=service.auth())
            service.client.request(f"Y{tag}{i}", f"/nothing/{tag}{i}")
            service.client.get(f"/v1/unknown-{tag}-{i}")

    flood("a")
    samples = [s for s in scrape(service) if s.name.startswith("sagetrain_http_request")]
    methods = {s.labels["method"] for s in samples}
    assert methods <= {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "other"}
    assert "other" in methods
    routes = {s.labels["route"] for s in samples}
    assert not any("nothing" in r or "unknown" in r for r in routes), routes
    size = len(service.client.get("/metrics").text)
    flood("b")
    assert len(service.client.get("/metrics").text) < size * 1.05
