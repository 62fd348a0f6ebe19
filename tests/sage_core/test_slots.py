"""A worker's slots: a job takes all N of its slots at once or none, two jobs never hold the
same slot, and its process's environment names them."""

from __future__ import annotations

import threading
import time

import pytest

from sage_core.settings import Settings
from sage_core.slots import Slots, worker_slots


def test_a_job_takes_all_its_slots_or_none() -> None:
    slots = Slots(["0", "1", "2"], gpus=True)
    with slots.take(2) as two:
        assert two == ["0", "1"]
        with slots.take(2) as none:
            assert none is None  # one free is not two: nothing held
        with slots.take(1) as one:
            assert one == ["2"]
    with slots.take(3) as every:
        assert every == ["0", "1", "2"]


def test_a_job_waits_for_slots_freed_meanwhile() -> None:
    slots = Slots(["0", "1"], gpus=False)
    held = threading.Event()

    def hold_briefly() -> None:
        with slots.take(1):
            held.set()
            time.sleep(0.3)

    thread = threading.Thread(target=hold_briefly)
    thread.start()
    held.wait(5)
    started = time.monotonic()
    with slots.take(2, timeout=5) as taken:
        assert taken == ["0", "1"] and time.monotonic() - started > 0.1
    thread.join()


def test_concurrent_jobs_never_share_a_slot() -> None:
    slots = Slots([str(i) for i in range(4)], gpus=True)
    holders: dict[str, int] = {}
    lock = threading.Lock()
    errors: list[str] = []

    def job(n: int, index: int) -> None:
        for _ in range(30):
            with slots.take(n, timeout=5) as taken:
                if taken is None:
                    continue
                with lock:
                    errors.extend(s for s in taken if s in holders)
                    holders.update(dict.fromkeys(taken, index))
                time.sleep(0.001)
                with lock:
                    for s in taken:
                        del holders[s]

    threads = [threading.Thread(target=job, args=(n, i))
               for i, n in enumerate([1, 2, 3, 4, 1, 2])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and holders == {}
    with slots.take(4) as every:
        assert every is not None  # all given back


def test_the_environment_names_the_slots() -> None:
    assert Slots(["2", "3"], gpus=True).env(["2", "3"]) == {
        "SAGETRAIN_JOB_SLOTS": "2,3", "CUDA_VISIBLE_DEVICES": "2,3"}
    assert Slots(["0", "1"], gpus=False).env(["1"]) == {"SAGETRAIN_JOB_SLOTS": "1"}


def test_slots_come_from_the_settings() -> None:
    gpus = worker_slots(Settings(worker_gpus="0, 2"))
    assert (gpus.ids, gpus.gpus) == (["0", "2"], True)
    cpu = worker_slots(Settings(worker_slots=3))
    assert (cpu.ids, cpu.gpus) == (["0", "1", "2"], False)
    assert len(worker_slots(Settings())) == 1


@pytest.mark.parametrize("ids", [[], ["0", "0"]])
def test_invalid_slots_are_refused(ids: list[str]) -> None:
    with pytest.raises(ValueError, match="Invalid slots"):
        Slots(ids, gpus=True)


def test_more_than_the_worker_has_is_refused() -> None:
    with pytest.raises(ValueError, match="this worker has 2"), \
            Slots(["0", "1"], gpus=True).take(3):
        pass
