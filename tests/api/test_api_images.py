"""Image classification through the HTTP API against a live `sagetrain serve`: scikit-learn's
digits uploaded as an ImageFolder zip (task recognised, class counts and image sizes), a job
whose task comes from the file trained to the end, its metrics rows with the image metrics,
the checkpoint downloaded and run with `pipeline("image-classification")` on a PNG; and
upload refusals naming the member."""

from __future__ import annotations

import io
import random
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_helpers import LiveServer
from process_helpers import wait_for

pytestmark = pytest.mark.slow

MODEL = "tiny-vit"


@pytest.fixture(scope="module")
def image_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    from sage_core.testing import build_tiny_vit

    models = tmp_path_factory.mktemp("image-models")
    build_tiny_vit(models / MODEL)
    with LiveServer.start(tmp_path_factory.mktemp("image-live"), models) as server:
        yield server


def _zip(images: list[tuple[bytes, str]], path: Path) -> bytes:
    from sage_core.testing import write_digits_zip

    return write_digits_zip(path, images).read_bytes()


def test_digits_job_end_to_end(image_server: LiveServer, tmp_path: Path) -> None:
    from sage_core.testing import digits_images

    images = digits_images()
    random.Random(0).shuffle(images)
    train_zip = _zip(images[:600], tmp_path / "train.zip")
    valid_zip = _zip(images[600:800], tmp_path / "valid.zip")
    with image_server.client() as http:
        uploaded = http.post("/v1/files", data={"purpose": "fine-tune"},
                             files={"file": ("digits.zip", train_zip)})
        assert uploaded.status_code == 200, uploaded.text
        train = uploaded.json()
        stats = train["stats"]
        assert stats["task"] == "image-classification" and stats["examples"] == 600
        assert stats["format"] == "zip" and sorted(stats["label_counts"]) == [
            str(d) for d in range(10)]
        assert sum(stats["label_counts"].values()) == 600
        assert stats["width"] == {"min": 32, "mean": 32.0, "max": 32}
        assert stats["modes"] == {"RGB": 600}
        valid = http.post("/v1/files", data={"purpose": "fine-tune"},
                          files={"file": ("valid.zip", valid_zip)}).json()

        created = http.post("/v1/fine_tuning/jobs", json={
            "model": MODEL, "training_file": train["id"], "validation_file": valid["id"],
            "hyperparameters": {"n_epochs": 2, "learning_rate": 3e-3}})
        assert created.status_code == 200, created.text
        job = created.json()
        assert job["task"] == "image-classification"

        def done() -> dict | None:
            current = http.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
            return current if current["status"] in ("succeeded", "failed", "cancelled") else None

        finished = wait_for(done, 300, "the image job to finish", interval=0.5)
        assert finished["status"] == "succeeded", (finished["error"],
                                                   image_server.log_text()[-4000:])
        rows = http.get(f"/v1/fine_tuning/jobs/{job['id']}/metrics").json()["data"]
        evals = [r for r in rows if "valid_accuracy" in r]
        assert len(evals) == 2
        assert {"valid_loss", "valid_f1_macro", "valid_top5_accuracy"} <= set(evals[-1])
        assert 0.0 <= evals[-1]["valid_accuracy"] <= 1.0

        checkpoints = http.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"]
        archive = http.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints/"
                           f"{checkpoints[0]['id']}/content")
        assert archive.status_code == 200, archive.text
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        tar.extractall(tmp_path / "model", filter="data")
    (folder,) = (tmp_path / "model").iterdir()

    from PIL import Image
    from transformers import pipeline

    classify = pipeline("image-classification", model=str(folder), device="cpu")
    answer = classify(Image.open(io.BytesIO(images[900][0])), top_k=2)
    assert len(answer) == 2 and answer[0]["label"] in [str(d) for d in range(10)]


def test_upload_refusals_name_the_member(image_server: LiveServer) -> None:
    from sage_core.testing import digits_images

    (first, label), (second, other) = digits_images()[:2]

    def archive(members: dict[str, bytes]) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as out:
            for name, data in members.items():
                out.writestr(name, data)
        return buffer.getvalue()

    good = {f"{label}/a.png": first, f"{other}/b.png": second}
    with image_server.client() as http:
        for members, expected in (
                ({**good, "../evil.png": first}, "member '../evil.png': a path with '..'"),
                ({**good, f"{other}/c.png": first[:50]},
                 f"member '{other}/c.png': not an image Pillow can decode")):
            response = http.post("/v1/files", data={"purpose": "fine-tune"},
                                 files={"file": ("bad.zip", archive(members))})
            assert response.status_code == 400, response.text
            assert expected in response.json()["error"]["message"]
