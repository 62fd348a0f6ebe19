"""How `sagetrain serve` picks what runs jobs, and the Celery dispatcher's manners: by
task name, never raising when the broker is down."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sage_core.broker import TASK_NAME, CeleryDispatcher, celery_config
from sage_core.settings import Settings
from sagetrain.dispatchers import resolve_executor

BROKER = "redis://127.0.0.1:6379/13"


def test_executor_choice(tmp_path: Path) -> None:
    plain = Settings(data_dir=tmp_path)
    broker = Settings(data_dir=tmp_path, broker_url=BROKER)
    assert resolve_executor("auto", plain) == "local"
    assert resolve_executor("auto", broker) == "celery"
    assert resolve_executor("none", broker) == "none"
    with pytest.raises(ValueError, match="needs SAGETRAIN_BROKER_URL"):
        resolve_executor("celery", plain)
    with pytest.raises(ValueError, match="Celery workers run the jobs"):
        resolve_executor("local", broker)


def test_celery_running_has_a_reaper_and_no_worker_import(tmp_path: Path) -> None:
    # In a fresh process: this suite imports worker/ and torch elsewhere.
    code = f"""
import subprocess
import sys
from sage_core.broker import CeleryDispatcher
from sage_core.settings import Settings
from sagetrain.dispatchers import build_job_running
from api.main import create_app
running = build_job_running("auto", Settings(data_dir={str(tmp_path)!r}, broker_url={BROKER!r}))
assert isinstance(running.dispatcher, CeleryDispatcher)
assert [type(s).__name__ for s in running.services] == ["Reaper"]
create_app(running.dispatcher.settings, dispatcher=running.dispatcher)
running.stop()
loaded = [m for m in sys.modules if m.split(".")[0] in ("worker", "torch")]
assert not loaded, loaded
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_long_task_settings(tmp_path: Path) -> None:
    conf = celery_config(Settings(data_dir=tmp_path, broker_url=BROKER, task_queue="gpu",
                                  broker_key_prefix="st:", broker_visibility_timeout=7200))
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["accept_content"] == ["json"] and conf["task_serializer"] == "json"
    assert conf["task_routes"] == {TASK_NAME: {"queue": "gpu"}}
    assert conf["broker_transport_options"] == {"visibility_timeout": 7200,
                                                "global_keyprefix": "st:"}


def test_dispatch_with_the_broker_down_does_not_raise(tmp_path: Path) -> None:
    dispatcher = CeleryDispatcher(Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:1/0"))
    try:
        dispatcher.dispatch("ftjob-abc")  # logged; the reaper sends it later
        assert not dispatcher.is_dispatched("ftjob-abc")
    finally:
        dispatcher.close()
