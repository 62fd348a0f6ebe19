"""GET /v1/fine_tuning/jobs/{id}/sensitivity: the stored report as JSON or a PNG plot, a
clear 404 without one; and the client and `sagetrain jobs sensitivity` over it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from api_helpers import Service
from sqlalchemy import select, update

from sage_core.db import transitions
from sage_core.db.models import Job
from sage_core.db.session import make_engine, make_session_factory
from sagetrain.cli import main
from sagetrain.client import Client, SageTrainAPIError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EDGES = [-12.0 + 0.5 * i for i in range(25)]


def _entry(mean: float, peak: int) -> dict[str, Any]:
    counts = [0] * 24
    counts[peak] = 90
    counts[peak + 1] = 8
    return {"count": 100, "zero_count": 2, "nonfinite_count": 0, "mean": mean,
            "p10": mean / 10, "p25": mean / 4, "median": mean / 2, "p75": mean, "p90": mean * 2,
            "p99": mean * 5, "sampled": False,
            "histogram_log10": {"edges": EDGES, "counts": counts, "underflow": 0,
                                "overflow": 0},
            "fraction_below": {"1e-08": 0.02, "1e-07": 0.1, "1e-06": 0.5}}


REPORT: dict[str, Any] = {
    "thresholds": [1e-8, 1e-7, 1e-6],
    "overall": _entry(2e-6, 11),
    "blocks": {"bert.encoder.layer.0": _entry(1e-6, 10), "bert.encoder.layer.1": _entry(3e-6, 12)},
    "modules": {"bert.encoder.layer.0.attention.self.query": _entry(1e-6, 10)},
    "examples": 16, "max_batches": 8, "sample_cap": 1_000_000,
}


def _finish(service: Service, job_id: str, report: dict[str, Any] | None) -> None:
    engine = make_engine(service.settings.resolved_database_url)
    with make_session_factory(engine).begin() as s:
        assert transitions.claim(s, job_id, owner="w", lease_seconds=60)
        extra = {"sensitivity": report} if report is not None else {}
        assert transitions.succeed(s, job_id, owner="w", fine_tuned_model="ft:x", **extra)
    engine.dispose()


def _url(job_id: str) -> str:
    return f"/v1/fine_tuning/jobs/{job_id}/sensitivity"


def test_report_as_json_and_png(service: Service) -> None:
    job = service.create_job(hyperparameters={"optimizer": "adamw"})
    _finish(service, job["id"], REPORT)
    c = service.client
    got = c.get(_url(job["id"]), headers=service.auth())
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["object"] == "fine_tuning.job.sensitivity"
    assert body["fine_tuning_job_id"] == job["id"]
    assert {k: body[k] for k in REPORT} == REPORT
    png = c.get(_url(job["id"]), params={"format": "png"}, headers=service.auth())
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(PNG_SIGNATURE) and len(png.content) > 5000
    bad = c.get(_url(job["id"]), params={"format": "svg"}, headers=service.auth())
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "format"
    other = c.get(_url(job["id"]), headers=service.auth(service.other_key))
    assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"
    assert c.get(_url(job["id"]), params={"format": "png"},
                 headers=service.auth(service.other_key)).status_code == 404


def _not_available(service: Service, job_id: str) -> dict[str, Any]:
    for fmt in ("json", "png"):
        r = service.client.get(_url(job_id), params={"format": fmt}, headers=service.auth())
        assert r.status_code == 404, r.text
        error: dict[str, Any] = r.json()["error"]
        assert error["code"] == "sensitivity_not_available"
        assert error["type"] == "invalid_request_error"
        assert error["param"] == "fine_tuning_job_id"
    return error


def test_no_report_is_a_clear_404(service: Service) -> None:
    queued = service.create_job()
    assert "it is 'queued'" in _not_available(service, queued["id"])["message"]
    without_validation = service.create_job()
    _finish(service, without_validation["id"], None)
    message = _not_available(service, without_validation["id"])["message"]
    assert "without a validation file" in message
    with_validation = service.create_job(validation_file=service.upload()["id"])
    _finish(service, with_validation["id"], None)
    assert "produced none" in _not_available(service, with_validation["id"])["message"]
    cancelled = service.create_job()
    service.client.post(f"/v1/fine_tuning/jobs/{cancelled['id']}/cancel",
                        headers=service.auth())
    assert "ended as 'cancelled'" in _not_available(service, cancelled["id"])["message"]


def test_a_json_null_report_is_no_report(service: Service) -> None:
    job = service.create_job()
    _finish(service, job["id"], None)
    engine = make_engine(service.settings.resolved_database_url)
    with make_session_factory(engine).begin() as s:  # JSON null rather than SQL NULL
        s.execute(update(Job).where(Job.id == job["id"]).values(sensitivity=None))
        assert s.scalar(select(Job.id).where(Job.sensitivity.is_(None))) is None
    engine.dispose()
    _not_available(service, job["id"])


def test_client_and_cli(in_process: Service, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    service = in_process
    job = service.create_job()
    pending = service.create_job()
    _finish(service, job["id"], REPORT)
    with Client() as client:
        assert client.sensitivity(job["id"])["overall"] == REPORT["overall"]
        assert client.sensitivity(job["id"], format="png").startswith(PNG_SIGNATURE)
        with pytest.raises(SageTrainAPIError) as info:
            client.sensitivity(pending["id"])
        assert info.value.code == "sensitivity_not_available"

    capsys.readouterr()
    assert main(["jobs", "sensitivity", job["id"]]) == 0
    assert json.loads(capsys.readouterr().out)["blocks"] == REPORT["blocks"]
    assert main(["jobs", "sensitivity", job["id"], "--output", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").read_bytes().startswith(PNG_SIGNATURE)
    assert main(["jobs", "sensitivity", job["id"], "-o", str(tmp_path / "s.json")]) == 0
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["fine_tuning_job_id"] == job["id"] and saved["modules"] == REPORT["modules"]
    capsys.readouterr()
    assert main(["jobs", "sensitivity", pending["id"]]) == 1
    assert "has no sensitivity report" in capsys.readouterr().err
