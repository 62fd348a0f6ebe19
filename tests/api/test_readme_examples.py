"""The README's first job, run as written: its curl uploads and job body through the real
upload validation and job creation, and its `openai` example against `sagetrain serve`."""

from __future__ import annotations

from pathlib import Path

import pytest
from api_helpers import LiveServer, Service
from readme_examples import ROOT, code_blocks, first_job_curls, readme

from sage_core.catalog import MINILM


def test_the_first_job_curls(service: Service) -> None:
    models = service.client.get("/v1/models", headers=service.auth())
    assert MINILM in [m["id"] for m in models.json()["data"]]

    uploads, body = first_job_curls(readme())
    ids = []
    for path in uploads:
        data = (ROOT / path).read_bytes()
        uploaded = service.upload(data, name=Path(path).name)
        assert uploaded["status"] == "processed"
        stats = uploaded["stats"]
        assert stats["task"] == "text-classification"
        assert stats["rows"] == len(data.splitlines())
        ids.append(uploaded["id"])
    assert [body["training_file"], body["validation_file"]] == ["file-…", "file-…"]
    body.update(training_file=ids[0], validation_file=ids[1])
    created = service.client.post("/v1/fine_tuning/jobs", headers=service.auth(), json=body)
    assert created.status_code == 200, created.text
    job = created.json()
    assert job["model"] == MINILM and job["status"] == "queued"
    assert job["hyperparameters"]["optimizer"] == "sage"
    assert service.dispatcher.dispatched == [job["id"]]


@pytest.mark.slow
def test_the_openai_example(live_server: LiveServer, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("openai")
    section = readme().split("## Your first job", 1)[1].split("\n## ", 1)[0]
    example = next(b for b in code_blocks(section) if "from openai import OpenAI" in b)
    assert "http://127.0.0.1:8000/v1" in example
    monkeypatch.setenv("KEY", live_server.key)
    monkeypatch.chdir(ROOT)
    scope: dict[str, object] = {}
    exec(example.replace("http://127.0.0.1:8000", live_server.url), scope)  # noqa: S102
    job, client = scope["job"], scope["client"]
    try:
        assert job.model == MINILM and job.validation_file  # type: ignore[attr-defined]
        printed = capsys.readouterr().out.splitlines()
        events = client.fine_tuning.jobs.list_events(  # type: ignore[attr-defined]
            job.id, limit=100).data
        assert printed and set(printed) <= {event.message for event in events}
    finally:
        client.fine_tuning.jobs.cancel(job.id)  # type: ignore[attr-defined]
