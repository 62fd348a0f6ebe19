"""Webhooks: the endpoints' CRUD, events queued when a job ends (API cancel, the worker's
transitions, a lost worker), signed deliveries to a real local HTTP receiver, retries."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from api_helpers import Service
from sqlalchemy import select

from sage_core.db import transitions
from sage_core.db.models import WebhookDelivery, utcnow
from sage_core.db.recovery import release_lost_job
from sage_core.webhooks import RetryPolicy, deliver_due, verify_signature

# The receivers listen on 127.0.0.1, which the server refuses to call by default.
pytestmark = pytest.mark.service_settings(allow_private_targets=True)
EVENTS = ["fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"]


@dataclass
class Receiver:
    url: str
    statuses: list[int] = field(default_factory=list)  # answers to give, then 200
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """An HTTP server on 127.0.0.1 that records every POST."""
    state = Receiver("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            state.requests.append((dict(self.headers.items()), body))
            self.send_response(state.statuses.pop(0) if state.statuses else 200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    yield state
    server.shutdown()
    server.server_close()


def _create(service: Service, url: str, key: str | None = None, **body: Any) -> dict:
    r = service.client.post("/v1/webhooks", headers=service.auth(key), json={"url": url, **body})
    assert r.status_code == 200, r.text
    return r.json()


def _deliveries(service: Service) -> list[WebhookDelivery]:
    with service.client.app.state.session_factory() as s:  # type: ignore[attr-defined]
        return list(s.scalars(select(WebhookDelivery).order_by(WebhookDelivery.created_at)))


def _deliver(service: Service, now: Any = None, *, allow_private: bool = True,
             **policy: Any) -> dict[str, str]:
    with httpx.Client() as http:
        return deliver_due(service.client.app.state.session_factory, http,  # type: ignore[attr-defined]
                           now, policy=RetryPolicy(**policy), allow_private=allow_private)


def test_create_list_delete(service: Service) -> None:
    created = _create(service, "https://example.com/hook")
    assert created["id"].startswith("wh-") and created["object"] == "webhook_endpoint"
    assert created["events"] == EVENTS
    assert created["secret"].startswith("whsec_")
    listed = service.client.get("/v1/webhooks", headers=service.auth()).json()
    assert [w["id"] for w in listed["data"]] == [created["id"]]
    assert listed["data"][0]["secret"] is None  # shown on create only

    other = service.auth(service.other_key)
    assert service.client.get("/v1/webhooks", headers=other).json()["data"] == []
    r = service.client.delete(f"/v1/webhooks/{created['id']}", headers=other)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"

    r = service.client.delete(f"/v1/webhooks/{created['id']}", headers=service.auth())
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert service.client.get("/v1/webhooks", headers=service.auth()).json()["data"] == []
    assert service.client.delete(f"/v1/webhooks/{created['id']}",
                                 headers=service.auth()).status_code == 404


@pytest.mark.parametrize("body", [
    {"url": "ftp://example.com/x"}, {"url": "example.com/x"}, {"url": "http://"},
    {"url": "https://example.com/" + "a" * 2100}, {"url": "https://a b.com"},
    {"url": "https://example.com", "events": ["fine_tuning.job.created"]},
    {"url": "https://example.com", "events": []}, {"url": "https://example.com", "x": 1},
])
def test_invalid_bodies_are_400(service: Service, body: dict) -> None:
    r = service.client.post("/v1/webhooks", headers=service.auth(), json=body)
    assert r.status_code == 400, r.text


def test_no_key_is_401(service: Service) -> None:
    assert service.client.post("/v1/webhooks", json={"url": "https://x.org"}).status_code == 401
    assert service.client.get("/v1/webhooks").status_code == 401
    assert service.client.delete("/v1/webhooks/wh-x").status_code == 401


def test_cancel_through_the_api_sends_a_signed_event(service: Service,
                                                     receiver: Receiver) -> None:
    hook = _create(service, receiver.url)
    _create(service, receiver.url, key=service.other_key)  # another key's: not told
    job = service.create_job()
    assert service.client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel",
                               headers=service.auth()).status_code == 200

    assert list(_deliver(service).values()) == ["delivered"]
    [(headers, body)] = receiver.requests
    assert verify_signature(hook["secret"], headers, body)
    event = json.loads(body)
    assert event["type"] == "fine_tuning.job.cancelled"
    assert event["data"] == {"id": job["id"], "object": "fine_tuning.job",
                             "status": "cancelled", "fine_tuned_model": None, "error": None}
    assert _deliver(service) == {}  # nothing left to send

    other_secret = _create(service, receiver.url)["secret"]
    assert not verify_signature(other_secret, headers, body)
    assert not verify_signature(hook["secret"], headers, body + b" ")
    stamp = int(headers["webhook-timestamp"])
    assert not verify_signature(hook["secret"], headers, body, now=stamp + 301)
    assert verify_signature(hook["secret"], headers, body, now=stamp + 299)


def test_worker_transitions_queue_their_events(service: Service) -> None:
    everything = _create(service, "https://example.com/all")
    failures = _create(service, "https://example.com/failed",
                       events=["fine_tuning.job.failed"])
    done, crashed, lost = (service.create_job()["id"] for _ in range(3))
    with service.client.app.state.session_factory.begin() as s:  # type: ignore[attr-defined]
        for job_id in (done, crashed, lost):
            assert transitions.claim(s, job_id, owner="w", lease_seconds=60)
        assert transitions.succeed(s, done, owner="w", fine_tuned_model="ft:tiny-bert::x")
        assert transitions.fail(s, crashed, owner="w", error={
            "code": "oom", "message": "out of memory", "param": None})
        assert release_lost_job(s, lost, reason="test", max_lost_leases=1) == "failed"
        assert not transitions.cancel(s, done)  # no second event for a finished job

    rows = {(d.job_id, d.endpoint_id): d for d in _deliveries(service)}
    assert set(rows) == {(done, everything["id"]), (crashed, everything["id"]),
                         (lost, everything["id"]), (crashed, failures["id"]),
                         (lost, failures["id"])}
    succeeded = rows[(done, everything["id"])].payload
    assert succeeded["type"] == "fine_tuning.job.succeeded"
    assert succeeded["data"]["fine_tuned_model"] == "ft:tiny-bert::x"
    assert rows[(crashed, failures["id"])].payload["data"]["error"]["code"] == "oom"
    assert rows[(lost, failures["id"])].payload["data"]["error"]["code"] == "worker_lost"


def test_a_failing_receiver_is_retried_with_backoff(service: Service,
                                                    receiver: Receiver) -> None:
    hook = _create(service, receiver.url)
    receiver.statuses = [500, 500]
    job = service.create_job()
    service.client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=service.auth())
    t0 = utcnow()

    assert list(_deliver(service, t0, base_seconds=10).values()) == ["pending"]
    [row] = _deliveries(service)
    assert (row.attempts, row.last_error) == (1, "HTTP 500")
    assert row.next_attempt_at == t0 + timedelta(seconds=10)
    assert _deliver(service, t0 + timedelta(seconds=9), base_seconds=10) == {}  # not due yet
    assert list(_deliver(service, t0 + timedelta(seconds=10), base_seconds=10).values()) == [
        "pending"]
    [row] = _deliveries(service)
    assert row.next_attempt_at == t0 + timedelta(seconds=30)  # 10 s later, then 20 s
    assert list(_deliver(service, t0 + timedelta(seconds=30), base_seconds=10).values()) == [
        "delivered"]
    [row] = _deliveries(service)
    assert (row.status, row.attempts, row.last_error) == ("delivered", 3, None)

    assert len(receiver.requests) == 3
    assert len({h["webhook-id"] for h, _ in receiver.requests}) == 1  # one id on every try
    last_headers, body = receiver.requests[-1]
    stamp = int((t0 + timedelta(seconds=30)).timestamp())
    assert verify_signature(hook["secret"], last_headers, body, now=stamp)


def test_a_delivery_fails_for_good_after_max_attempts(service: Service,
                                                       receiver: Receiver) -> None:
    _create(service, receiver.url)
    receiver.statuses = [503] * 5
    job = service.create_job()
    service.client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=service.auth())
    now = utcnow()
    for expected in ("pending", "failed"):
        assert list(_deliver(service, now, max_attempts=2, base_seconds=1,
                             cap_seconds=1).values()) == [expected]
        now += timedelta(seconds=1)
    assert _deliver(service, now + timedelta(days=1)) == {}
    [row] = _deliveries(service)
    assert (row.status, row.attempts) == ("failed", 2)


def test_an_unreachable_url_is_an_error_not_a_crash(service: Service) -> None:
    _create(service, "http://127.0.0.1:9/nothing-listens")
    job = service.create_job()
    service.client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=service.auth())
    assert list(_deliver(service, timeout_seconds=2).values()) == ["pending"]
    [row] = _deliveries(service)
    assert row.attempts == 1 and row.last_error


def test_a_claimed_delivery_is_not_sent_twice(service: Service, receiver: Receiver) -> None:
    from sage_core.webhooks import _claim

    _create(service, receiver.url)
    job = service.create_job()
    service.client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=service.auth())
    [row] = _deliveries(service)
    now = utcnow()
    with service.client.app.state.session_factory.begin() as s:  # type: ignore[attr-defined]
        assert _claim(s, row.id, now, now + timedelta(seconds=60))  # another server took it
        assert not _claim(s, row.id, now, now + timedelta(seconds=60))
    assert _deliver(service, now) == {}
    assert receiver.requests == []


# --- issue 17, item 4: one bad endpoint, private targets, a cap, the last result ----------

def _insert_endpoint(service: Service, url: str, key: str | None = None) -> str:
    """An endpoint row as an older server accepted it, past today's checks."""
    from sage_core.db.keys import find_key
    from sage_core.db.webhooks import create_endpoint

    with service.client.app.state.session_factory.begin() as s:  # type: ignore[attr-defined]
        owner = find_key(s, key or service.key)
        assert owner is not None
        return create_endpoint(s, owner.id, url).id


def _cancel_a_job(service: Service) -> str:
    job = service.create_job()
    r = service.client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=service.auth())
    assert r.status_code == 200, r.text
    return job["id"]


def test_one_bad_endpoint_does_not_stop_the_round(service: Service,
                                                  receiver: Receiver) -> None:
    """A host label of 64 characters made httpx raise UnicodeError, which ended the whole
    round: that delivery stayed pending with 0 attempts, and every other waited behind it."""
    bad = _insert_endpoint(service, "https://" + "a" * 64 + ".example.com/hook")
    _create(service, receiver.url)
    _cancel_a_job(service)
    outcome = _deliver(service)
    assert sorted(outcome.values()) == ["delivered", "pending"]
    assert len(receiver.requests) == 1
    [row] = [d for d in _deliveries(service) if d.endpoint_id == bad]
    assert row.attempts == 1 and "valid" in (row.last_error or ""), row.last_error


@pytest.mark.parametrize("url", [
    "https://" + "a" * 64 + ".example.com/hook",  # a label over 63 characters
    "https://" + "a." * 130 + "com/hook",  # a name over 253 characters
    "https://example.com:70000/hook", "https://example.com:0/hook", "https://example.com:x/",
    "https://exa\tmple.com/", "https://.example.com/", "http:///path-only",
])
def test_malformed_urls_are_refused_at_registration(service: Service, url: str) -> None:
    r = service.client.post("/v1/webhooks", headers=service.auth(), json={"url": url})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "url"


@pytest.mark.service_settings(allow_private_targets=False)
@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/hook", "http://localhost/hook", "http://169.254.169.254/latest",
    "http://[::ffff:169.254.169.254]/", "http://[::1]/hook", "http://10.1.2.3/hook",
    "http://192.168.0.1/hook", "http://0.0.0.0/hook", "http://[fe80::1]/hook",
])
def test_private_targets_are_refused_by_default(service: Service, url: str) -> None:
    r = service.client.post("/v1/webhooks", headers=service.auth(), json={"url": url})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "url"
    assert "ALLOW_PRIVATE_TARGETS" in r.json()["error"]["message"]


@pytest.mark.service_settings(allow_private_targets=False)
def test_a_name_that_resolves_to_a_private_address_is_not_called(
        service: Service, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: the name is checked where it is sent, and the connection goes to the
    address that was checked."""
    import socket

    port = int(receiver.url.split(":")[2].split("/")[0])
    real = socket.getaddrinfo

    def rebinding(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "hooks.rebind.example":
            return real("127.0.0.1", *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    _create(service, f"http://hooks.rebind.example:{port}/hook")  # a name: checked when sent
    _cancel_a_job(service)
    assert list(_deliver(service, allow_private=False).values()) == ["pending"]
    assert receiver.requests == []
    [row] = _deliveries(service)
    assert row.attempts == 1 and "127.0.0.1" in (row.last_error or ""), row.last_error

    # allowed (local development), the request goes to the address resolved and checked,
    # under the name the endpoint gave
    now = utcnow() + timedelta(days=1)
    assert list(_deliver(service, now, allow_private=True).values()) == ["delivered"]
    [(headers, _)] = receiver.requests
    assert headers["Host"] == f"hooks.rebind.example:{port}"


@pytest.mark.service_settings(webhook_max_endpoints=2)
def test_endpoints_per_key_are_capped(service: Service) -> None:
    first = _create(service, "https://example.com/1")
    _create(service, "https://example.com/2")
    r = service.client.post("/v1/webhooks", headers=service.auth(),
                            json={"url": "https://example.com/3"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "webhook_limit_reached", r.text
    assert "2" in r.json()["error"]["message"]
    _create(service, "https://example.com/1", key=service.other_key)  # a key's own count
    service.client.delete(f"/v1/webhooks/{first['id']}", headers=service.auth())
    _create(service, "https://example.com/3")


def test_the_list_shows_each_endpoints_last_delivery(service: Service,
                                                     receiver: Receiver) -> None:
    receiver.statuses = [500]
    hook = _create(service, receiver.url)
    idle = _create(service, receiver.url + "/idle", events=["fine_tuning.job.succeeded"])
    assert hook["last_delivery"] is None
    job_id = _cancel_a_job(service)

    def listed() -> dict[str, Any]:
        data = service.client.get("/v1/webhooks", headers=service.auth()).json()["data"]
        return {d["id"]: d["last_delivery"] for d in data}

    assert listed()[hook["id"]]["status"] == "pending"
    _deliver(service)
    last = listed()
    assert last[idle["id"]] is None
    assert last[hook["id"]] | {"id": None, "created_at": None} == {
        "id": None, "event_type": "fine_tuning.job.cancelled", "job_id": job_id,
        "status": "pending", "attempts": 1, "last_error": "HTTP 500", "created_at": None,
        "delivered_at": None}
    _deliver(service, utcnow() + timedelta(days=1))
    last = listed()[hook["id"]]
    assert (last["status"], last["attempts"], last["last_error"]) == ("delivered", 2, None)
    assert isinstance(last["delivered_at"], int)
