"""`sagetrain worker` refuses to start without a broker, with more jobs than slots, or with
both GPUs and CPU slots."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sage_core.settings import get_settings
from sagetrain.cli import main


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("SAGETRAIN_BROKER_URL", "SAGETRAIN_WORKER_GPUS", "SAGETRAIN_WORKER_SLOTS"):
        monkeypatch.setenv(name, "")  # so that the value `--gpus` sets is undone afterwards
        monkeypatch.delenv(name)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_needs_a_broker(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker"]) == 2
    assert "SAGETRAIN_BROKER_URL" in capsys.readouterr().err


def test_concurrency_needs_as_many_gpus(monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SAGETRAIN_BROKER_URL", "redis://127.0.0.1:6379/14")
    assert main(["worker", "--gpus", "0,1", "--concurrency", "3"]) == 2
    assert "needs as many GPUs" in capsys.readouterr().err


def test_concurrency_needs_as_many_slots(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SAGETRAIN_BROKER_URL", "redis://127.0.0.1:6379/14")
    assert main(["worker", "--slots", "2", "--concurrency", "3"]) == 2
    assert "needs as many slots, got 2" in capsys.readouterr().err


def test_slots_are_for_machines_without_gpus(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SAGETRAIN_BROKER_URL", "redis://127.0.0.1:6379/14")
    assert main(["worker", "--gpus", "0,1", "--slots", "2"]) == 2
    assert "--slots is for a machine without GPUs" in capsys.readouterr().err
