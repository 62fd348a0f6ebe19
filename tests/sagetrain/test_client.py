"""sagetrain.client without a server: the SSE parser, error bodies, configuration errors
and the checkpoint archive's safety checks. The live tests are in
tests/api/test_client_cli.py."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import httpx
import pytest

from sagetrain.cli import main
from sagetrain.client import Client, SageTrainAPIError, SageTrainError, parse_sse, safe_extract


def test_parse_sse_joins_data_skips_comments_and_carries_ids() -> None:
    lines = [": ping", "event: metrics", 'data: {"step": 1,', 'data:  "loss": 0.5}', "id: 0.1",
             "", "", 'data: {"x": 1}', "", "event: end", 'data: {"status": "succeeded"}',
             "id: e1.1", ""]
    assert list(parse_sse(lines)) == [
        ("metrics", {"step": 1, "loss": 0.5}, "0.1"),
        ("message", {"x": 1}, "0.1"),
        ("end", {"status": "succeeded"}, "e1.1"),
    ]


def _client(handler) -> Client:  # type: ignore[no-untyped-def]
    return Client("http://test", "k", transport=httpx.MockTransport(handler))


def test_error_body_becomes_api_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer k"
        return httpx.Response(404, json={"error": {
            "message": "No such job: 'ftjob-x'", "type": "invalid_request_error",
            "param": "job_id", "code": "not_found"}})

    with _client(handler) as client, pytest.raises(SageTrainAPIError) as info:
        client.get_job("ftjob-x")
    err = info.value
    assert (err.status, err.type, err.param, err.code) == (
        404, "invalid_request_error", "job_id", "not_found")
    assert err.message == "No such job: 'ftjob-x'"


def test_stream_parses_the_response_and_sends_the_cursor() -> None:
    body = ('event: event\ndata: {"message": "hi", "type": "message"}\nid: ev1.0\n\n'
            'event: end\ndata: {"status": "cancelled"}\nid: ev1.0\n\n')

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/fine_tuning/jobs/ftjob-1/stream"
        assert request.headers["Last-Event-ID"] == "0.3"
        return httpx.Response(200, text=body, headers={"Content-Type": "text/event-stream"})

    with _client(handler) as client:
        got = list(client.stream("ftjob-1", last_event_id="0.3"))
    assert [name for name, _, _ in got] == ["event", "end"]
    assert got[1][1] == {"status": "cancelled"}


def test_missing_configuration_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SAGETRAIN_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("SAGETRAIN_API_KEY", raising=False)
    with pytest.raises(SageTrainError, match="SAGETRAIN_API_KEY"):
        Client()
    assert main(["jobs", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no API key: set SAGETRAIN_API_KEY") and "Traceback" not in err
    monkeypatch.delenv("SAGETRAIN_BASE_URL")
    with pytest.raises(SageTrainError, match="SAGETRAIN_BASE_URL"):
        Client(api_key="k")


def _archive(path: Path, name: str, symlink: bool = False) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(name)
        if symlink:
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            data = json.dumps({"ok": True}).encode()
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(("name", "symlink"), [
    ("../evil.json", False), ("/tmp/evil.json", False), ("model/../../evil.json", False),
    ("model/link", True)])
def test_safe_extract_refuses_unsafe_members(tmp_path: Path, name: str, symlink: bool) -> None:
    archive = _archive(tmp_path / "a.tar.gz", name, symlink)
    with pytest.raises(SageTrainError):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil.json").exists()
    assert not any((tmp_path / "out").rglob("*"))


def test_safe_extract_returns_the_single_top_folder(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "a.tar.gz", "job-step-4/config.json")
    folder = safe_extract(archive, tmp_path / "out")
    assert folder == tmp_path / "out" / "job-step-4"
    assert json.loads((folder / "config.json").read_text()) == {"ok": True}
