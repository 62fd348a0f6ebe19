"""The progress bars' first tick shows no rate rather than an absurd one (issue 14: the
first tick read 13,662 steps/s: the bar was made at the first row and moved at once)."""

from __future__ import annotations

import time

from sagetrain.commands.jobs import _Bar
from sagetrain.commands.train import _Progress


def _rate(bar: object) -> float | None:
    fmt = bar.format_dict  # type: ignore[attr-defined]
    return fmt["rate"] if fmt["rate"] is not None else (
        (fmt["n"] - fmt["initial"]) / fmt["elapsed"] if fmt["n"] > fmt["initial"] else None)


def test_first_tick_has_no_rate_then_a_real_one() -> None:
    row = {"step": 1, "total_steps": 100, "train_loss": 1.0, "samples_per_second": 10.0}
    for sink in (_Progress(True), _Bar(True, 100)):
        feed = sink.on_metrics if isinstance(sink, _Progress) else sink.metrics
        feed(row)
        assert sink.bar is not None and _rate(sink.bar) is None
        time.sleep(0.1)
        feed({**row, "step": 2})
        rate = _rate(sink.bar)
        assert rate is not None and 1 < rate < 20  # one step in about 0.1 s
        sink.close()


def test_watch_bar_starts_after_the_replayed_rows() -> None:
    """`jobs watch` joining at step 50 gets rows 1..50 at once: they do not make a rate."""
    bar = _Bar(True, 100, replayed=50)
    for step in range(1, 51):
        bar.metrics({"step": step, "train_loss": 1.0, "samples_per_second": 10.0})
    assert bar.bar is None and bar.postfix["loss"] == "1.0000"
    bar.metrics({"step": 51, "train_loss": 0.5})
    assert bar.bar is not None and bar.bar.n == 51 and _rate(bar.bar) is None
    bar.close()
