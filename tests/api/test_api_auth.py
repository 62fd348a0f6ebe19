"""Every /v1 call needs a live key: none, a wrong one or a revoked one is 401 everywhere,
from the moment it is revoked; another key's file, job or checkpoint is 404 everywhere.

A new endpoint goes into ENDPOINTS; `test_every_v1_route_is_listed` fails until it does.
"""

from __future__ import annotations

import pytest
from api_helpers import Service
from sqlalchemy import func, select, update

from api.main import create_app
from sage_core.artifacts import get_artifact_store
from sage_core.db.ids import new_id
from sage_core.db.keys import hash_key
from sage_core.db.models import ApiKey, Checkpoint, Job, utcnow
from sage_core.db.session import make_engine, make_session_factory
from sage_core.settings import Settings

# (method, path, owns-something): {file}, {job}, {ckpt} are filled with the first key's ids.
ENDPOINTS: list[tuple[str, str, bool]] = [
    ("POST", "/v1/files", False),
    ("GET", "/v1/files", False),
    ("GET", "/v1/files/{file}", True),
    ("GET", "/v1/files/{file}/content", True),
    ("DELETE", "/v1/files/{file}", True),
    ("POST", "/v1/fine_tuning/jobs", False),
    ("GET", "/v1/fine_tuning/jobs", False),
    ("GET", "/v1/fine_tuning/jobs/{job}", True),
    ("POST", "/v1/fine_tuning/jobs/{job}/cancel", True),
    ("POST", "/v1/fine_tuning/jobs/{job}/pause", True),
    ("POST", "/v1/fine_tuning/jobs/{job}/resume", True),
    ("GET", "/v1/fine_tuning/jobs/{job}/events", True),
    ("GET", "/v1/fine_tuning/jobs/{job}/metrics", True),
    ("GET", "/v1/fine_tuning/jobs/{job}/stream", True),
    ("POST", "/v1/fine_tuning/jobs/{job}/stream_token", True),
    ("GET", "/v1/fine_tuning/jobs/{job}/checkpoints", True),
    ("GET", "/v1/fine_tuning/jobs/{job}/checkpoints/{ckpt}/content", True),
    ("GET", "/v1/fine_tuning/jobs/{job}/sensitivity", True),
    ("GET", "/v1/fine_tuning/jobs/{job}/sweep", True),
    ("GET", "/v1/models", False),
    ("GET", "/v1/models/{model}", True),
    ("POST", "/v1/webhooks", False),
    ("GET", "/v1/webhooks", False),
    ("DELETE", "/v1/webhooks/{webhook}", True),
]


def _route_key(method: str, path: str) -> tuple[str, str]:
    for name in ("{file}", "{file_id}", "{job}", "{job_id}", "{ckpt}", "{checkpoint_id}",
                 "{model}", "{model:path}", "{webhook}", "{webhook_id}"):
        path = path.replace(name, "{}")
    return method, path


def test_every_v1_route_is_listed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = create_app(Settings(data_dir=tmp_path))
    routes = {_route_key(method.upper(), path) for path, ops in app.openapi()["paths"].items()
              if path.startswith("/v1") for method in ops}
    listed = {_route_key(m, p) for m, p, _ in ENDPOINTS}
    assert routes == listed


@pytest.fixture
def owned(service: Service) -> dict[str, str]:
    """A file, a job, a checkpoint and a fine-tuned model owned by the first key."""
    job = service.create_job()
    ckpt_id = new_id("ftckpt")
    key = f"jobs/{job['id']}/checkpoints/step-1"
    folder = service.settings.data_dir / "ck"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    get_artifact_store(service.settings).put_tree(key, folder)
    engine = make_engine(service.settings.resolved_database_url)
    with make_session_factory(engine).begin() as s:
        s.add(Checkpoint(id=ckpt_id, job_id=job["id"], step=1, storage_key=key,
                         fine_tuned_model_checkpoint="ft:tiny-bert::x:ckpt-step-1"))
        # a report, and a (childless) sweep, so that the owner's GET .../sensitivity and
        # GET .../sweep answer 200
        s.execute(update(Job).where(Job.id == job["id"]).values(
            sensitivity={"overall": {"count": 0}, "blocks": {}, "modules": {}},
            sweep={"metric": "valid_f1_macro", "greater_is_better": True, "runs": []}))
    engine.dispose()
    webhook = service.client.post("/v1/webhooks", headers=service.auth(),
                                  json={"url": "https://example.com/hook"}).json()
    return {"file": job["training_file"], "job": job["id"], "ckpt": ckpt_id,
            "model": "ft:tiny-bert::secret", "webhook": webhook["id"]}


@pytest.mark.parametrize(("method", "path", "_"), ENDPOINTS)
@pytest.mark.parametrize("header", [None, "Bearer sk-st-wrong", "Basic abc"])
def test_no_or_wrong_key_is_401(service: Service, method: str, path: str, _: bool,
                                header: str | None) -> None:
    ids = {"file": "file-x", "job": "ftjob-x", "ckpt": "ftckpt-x", "model": "tiny-bert",
           "webhook": "wh-x"}
    headers = {"Authorization": header} if header is not None else {}
    r = service.client.request(method, path.format(**ids), headers=headers)
    assert r.status_code == 401, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(("method", "path"), [(m, p) for m, p, owns in ENDPOINTS if owns])
def test_another_keys_objects_are_404(service: Service, owned: dict[str, str], method: str,
                                      path: str) -> None:
    r = service.client.request(method, path.format(**owned),
                               headers=service.auth(service.other_key))
    assert r.status_code == 404, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
    # ...and the owner still sees it untouched
    if method == "GET":  # headers only: a queued job's /stream does not end
        with service.client.stream("GET", path.format(**owned), headers=service.auth()) as r:
            assert r.status_code == (404 if "{model}" in path else 200)


def test_a_key_sees_nothing_of_others_in_lists(service: Service, owned: dict[str, str]) -> None:
    other = service.auth(service.other_key)
    assert service.client.get("/v1/files", headers=other).json()["data"] == []
    assert service.client.get("/v1/fine_tuning/jobs", headers=other).json()["data"] == []
    assert service.client.get("/v1/webhooks", headers=other).json()["data"] == []
    r = service.client.get(f"/v1/fine_tuning/jobs?after={owned['job']}", headers=other)
    assert r.status_code == 404


def _revoke(service: Service) -> None:
    engine = make_engine(service.settings.resolved_database_url)
    with make_session_factory(engine).begin() as s:
        s.execute(update(ApiKey).where(ApiKey.key_hash == hash_key(service.key))
                  .values(revoked_at=utcnow()))
    engine.dispose()


def _job_count(service: Service) -> int:
    engine = make_engine(service.settings.resolved_database_url)
    with make_session_factory(engine)() as s:
        count = s.scalar(select(func.count()).select_from(Job)) or 0
    engine.dispose()
    return count


@pytest.mark.parametrize(("method", "path"), [(m, p) for m, p, _ in ENDPOINTS])
def test_a_revoked_key_is_401_everywhere_at_once(service: Service, owned: dict[str, str],
                                                 method: str, path: str) -> None:
    _revoke(service)
    r = service.client.request(method, path.format(**owned), headers=service.auth())
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "invalid_api_key"


def test_a_revoked_key_creates_nothing_and_learns_nothing(service: Service,
                                                          owned: dict[str, str]) -> None:
    """Revoked right after it created a job: the next requests are refused before their
    body is looked at, and an Idempotency-Key replay gives nothing back."""
    jobs = "/v1/fine_tuning/jobs"
    body = {"model": "tiny-bert", "training_file": owned["file"]}
    replayed = {**service.auth(), "Idempotency-Key": "k1"}
    assert service.client.post(jobs, headers=replayed, json=body).status_code == 200
    before = _job_count(service)
    _revoke(service)
    for json in (body,  # valid
                 {**body, "n_epochs": 3},  # an unknown field: 400 for a live key
                 {**body, "model": "no-such-model"},
                 {**body, "training_file": "file-nope"},
                 {**body, "validation_file": owned["file"], "sweep": {"learning_rate": [
                     1e-4, 2e-4]}}):
        r = service.client.post(jobs, headers=service.auth(), json=json)
        assert r.status_code == 401, (json, r.text)
    assert service.client.post(jobs, headers=replayed, json=body).status_code == 401
    assert service.client.get(f"{jobs}/{owned['job']}", headers=service.auth()).status_code == 401
    assert _job_count(service) == before
