"""End to end over HTTP against `sagetrain serve` (SQLite, the embedded executor): a sweep
of two learning rates compared with AdamW at one runs three real child jobs on the tiny
model; the parent succeeds with the best child's model and reports all three."""

from __future__ import annotations

from typing import Any

import pytest
from api_helpers import LiveServer
from process_helpers import wait_for
from sample_data import rows
from test_e2e_serve import upload

pytestmark = pytest.mark.slow

FINAL = ("succeeded", "failed", "cancelled")


def test_sweep_with_compare_to_runs_every_child_and_promotes_the_best(
        live_server: LiveServer) -> None:
    with live_server.client() as c:
        train, valid = upload(c, rows(32, 2), "train.jsonl"), upload(c, rows(16, 3), "v.jsonl")
        r = c.post("/v1/fine_tuning/jobs", json={
            "model": "tiny-bert", "training_file": train, "validation_file": valid,
            "seed": 11, "hyperparameters": {"n_epochs": 1, "batch_size": 8,
                                            "max_seq_length": 16},
            "sweep": {"learning_rate": [1e-3, 3e-3]},
            "compare_to": [{"optimizer": "adamw", "learning_rate": [1e-3]}]})
        assert r.status_code == 200, r.text
        parent = r.json()
        assert parent["status"] == "running"
        child_ids = [run["job_id"] for run in parent["sweep"]["runs"]]
        assert len(child_ids) == 3

        def settled() -> dict[str, Any] | None:
            job = c.get(f"/v1/fine_tuning/jobs/{parent['id']}").json()
            return job if job["status"] in FINAL else None

        done = wait_for(settled, 420, "the sweep to finish", interval=1.0)
        children = [c.get(f"/v1/fine_tuning/jobs/{i}").json() for i in child_ids]
        assert [j["status"] for j in children] == ["succeeded"] * 3, (
            children, live_server.log_text())
        assert done["status"] == "succeeded", done
        assert {j["seed"] for j in children} == {11}
        assert [(j["hyperparameters"]["optimizer"], j["hyperparameters"]["learning_rate"])
                for j in children] == [("sage", 1e-3), ("sage", 3e-3), ("adamw", 1e-3)]

        # the best child by its last evaluation's macro F1, ties to the first in the grid
        scores = []
        for job_id in child_ids:
            rows_ = c.get(f"/v1/fine_tuning/jobs/{job_id}/metrics").json()["data"]
            scores.append([m for m in rows_ if "valid_f1_macro" in m][-1]["valid_f1_macro"])
        best = child_ids[scores.index(max(scores))]
        assert done["sweep"]["best_job_id"] == best
        assert done["fine_tuned_model"] == children[child_ids.index(best)]["fine_tuned_model"]
        models = [m["id"] for m in c.get("/v1/models").json()["data"]]
        assert models.count(done["fine_tuned_model"]) == 1

        report = c.get(f"/v1/fine_tuning/jobs/{parent['id']}/sweep").json()
        assert [ch["id"] for ch in report["children"]] == child_ids
        assert [ch["score"] for ch in report["children"]] == pytest.approx(scores)
        assert report["best"]["id"] == best
        sides = {b["optimizer"]: b for b in report["best_per_optimizer"]}
        assert set(sides) == {"sage", "adamw"} and sides["adamw"]["job_id"] == child_ids[2]
        for side in sides.values():
            summary = side["sensitivity"]
            assert set(summary["overall"]["fraction_below"]) == {"1e-08", "1e-07", "1e-06"}
            assert summary["blocks"]["count"] >= 1
