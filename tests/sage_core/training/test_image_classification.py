"""Image classification: batches decoded per batch, augmentation on training batches only
(seeded, reproducible), top-5 metrics, and a tiny ViT trained from scratch on scikit-learn's
digits (real 8x8 scans) that learns, saved as a folder `pipeline("image-classification")`
runs."""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from training_data import make_spec

from sage_core.datafiles import load_dataset
from sage_core.testing import build_tiny_vit, digits_images, write_digits_jsonl, write_digits_zip
from sage_core.training import Callbacks, run_training
from sage_core.training.device import Placement
from sage_core.training.image_classification import ImageClassification


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a small shared CPU, torch's thread pool spins against other
    processes (the digits run took 10 s with one thread, minutes with two under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vit_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vision")
    build_tiny_vit(root / "tiny-vit")
    return root


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """1,400 training and 397 validation digits, as a zip and as JSONL data URLs."""
    folder = tmp_path_factory.mktemp("digits")
    images = digits_images()
    random.Random(0).shuffle(images)
    return (write_digits_zip(folder / "train.zip", images[:1400]),
            write_digits_jsonl(folder / "valid.jsonl", images[1400:]))


def _task(models: Path, data: Path, **hp: object) -> tuple[ImageClassification, list]:
    task = ImageClassification(make_spec("tiny-vit", task="image-classification",
                                         **hp).hyperparameters)
    task.load_processor(str(models / "tiny-vit"))
    dataset = load_dataset(data, "image-classification")
    task.prepare(dataset, None, train_name=data.name, validation_name=None)
    return task, task.encode(dataset, 0)


def test_batches_decode_resize_and_augment_training_batches_only(
        vit_models: Path, digits: tuple[Path, Path]) -> None:
    task, items = _task(vit_models, digits[1])
    assert task.label_names == [str(d) for d in range(10)]
    assert isinstance(items[0].features["image"], bytes)  # kept encoded until batched
    placement = Placement.resolve("cpu")
    plain = placement.batch(task, items[:8])
    assert plain.inputs["pixel_values"].shape == (8, 3, 32, 32)
    assert plain.targets.tolist() == [it.target for it in items[:8]]
    assert torch.equal(placement.batch(task, items[:8]).inputs["pixel_values"],
                       plain.inputs["pixel_values"])  # evaluation: never augmented
    torch.manual_seed(1)
    first = placement.batch(task, items[:8], train=True).inputs["pixel_values"]
    torch.manual_seed(1)
    again = placement.batch(task, items[:8], train=True).inputs["pixel_values"]
    assert torch.equal(first, again) and not torch.equal(first, plain.inputs["pixel_values"])
    off, _ = _task(vit_models, digits[1], augment=False)
    assert torch.equal(placement.batch(off, items[:8], train=True).inputs["pixel_values"],
                       plain.inputs["pixel_values"])


def test_top5_metrics(vit_models: Path, digits: tuple[Path, Path]) -> None:
    task, _ = _task(vit_models, digits[1])
    predictions = np.array([[0, 1, 2, 3, 4], [9, 8, 7, 6, 5], [1, 2, 3, 4, 5]])
    metrics = task.metrics(predictions, [0, 5, 9])
    assert metrics["accuracy"] == pytest.approx(1 / 3)
    assert metrics["top5_accuracy"] == pytest.approx(2 / 3)
    task.label_names = task.label_names[:5]  # 5 classes or fewer: top-5 says nothing
    assert "top5_accuracy" not in task.metrics(predictions, [0, 5, 9])


def test_tiny_vit_learns_digits_and_its_folder_runs_in_a_pipeline(
        vit_models: Path, digits: tuple[Path, Path], tmp_path: Path) -> None:
    train, valid = digits
    task_labels = [str(d) for d in range(10)]
    rows: list[dict] = []
    samples: list[dict] = []
    spec = make_spec("tiny-vit", task="image-classification", n_epochs=6, batch_size=32,
                     learning_rate=3e-3, augment=False)
    result = run_training(spec, train, tmp_path / "out", models_dir=vit_models, device="cpu",
                          validation_file=valid, callbacks=Callbacks(
                              on_metrics=rows.append,
                              on_event=lambda level, message, data=None:
                              samples.append(data) if data and not {"phase", "plan"} & set(data)
                                else None))
    assert result.status == "completed" and result.final_dir is not None
    evals = [r for r in rows if "valid_accuracy" in r]
    assert len(evals) == 6 and {"valid_f1_macro", "valid_top5_accuracy"} <= set(evals[-1])
    # chance is 0.1; this reaches about 0.80 (seed 0, one thread)
    assert evals[-1]["valid_accuracy"] > 0.5, evals
    assert evals[-1]["valid_top5_accuracy"] > 0.9
    # the majority class for every image scores about chance; the model beats it
    assert evals[-1]["baseline_accuracy"] < 0.25 and result.warnings == []
    # the first 3 validation images classified at each of the 6 evaluations
    assert len(samples) == 18 and samples[-1]["step"] == result.step
    assert {s["label"] for s in samples[:3]} <= {str(d) for d in range(10)}
    assert all(0 < s["score"] <= 1 and s["predicted"] in task_labels for s in samples)

    from transformers import pipeline

    classify = pipeline("image-classification", model=str(result.final_dir), device="cpu")
    image = Image.open(io.BytesIO(digits_images()[0][0]))
    answer = classify(image, top_k=3)
    assert len(answer) == 3 and answer[0]["label"] in [str(d) for d in range(10)]


def test_augmented_runs_repeat_and_resume_bit_for_bit(
        vit_models: Path, digits: tuple[Path, Path], tmp_path: Path) -> None:
    """Augmentation draws on the run's seeded RNG, which checkpoints carry: the same seed
    repeats a run exactly, and a stopped run resumes into the same losses."""
    train, valid = digits
    small = load_dataset(train, "image-classification")
    images = [(e.image, str(e.label)) for e in small.examples[:160]]
    train_small = write_digits_zip(tmp_path / "small.zip", images)
    spec = make_spec("tiny-vit", task="image-classification", n_epochs=2, batch_size=16)

    def losses(out: str, **kwargs: object) -> dict[int, float]:
        rows: list[dict] = []
        run_training(spec, train_small, tmp_path / out, models_dir=vit_models, device="cpu",
                     callbacks=Callbacks(on_metrics=rows.append), log_every=1, **kwargs)
        return {r["step"]: r["train_loss"] for r in rows if "train_loss" in r}

    whole = losses("a")
    assert losses("b") == whole
    assert losses("c", max_steps=7) == {s: v for s, v in whole.items() if s <= 7}
    assert losses("c") == {s: v for s, v in whole.items() if s > 7}


@pytest.mark.parametrize("kind", ["convnext", "resnet", "swin"])
def test_other_architectures_get_a_new_head_and_train(
        kind: str, digits: tuple[Path, Path], tmp_path: Path) -> None:
    """A base model with ImageNet's 1,000-class head: replaced for the file's 10 labels.
    ResNet has no linear layer in its blocks: SAGE covers every tensor, with a warning."""
    from transformers import (
        ConvNextConfig,
        ConvNextForImageClassification,
        ResNetConfig,
        ResNetForImageClassification,
        SwinConfig,
        SwinForImageClassification,
    )
    from transformers.models.convnext.image_processing_pil_convnext import (
        ConvNextImageProcessorPil,
    )

    models = {
        "convnext": lambda: ConvNextForImageClassification(ConvNextConfig(
            hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=1000)),
        "resnet": lambda: ResNetForImageClassification(ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
            num_labels=1000)),
        "swin": lambda: SwinForImageClassification(SwinConfig(
            image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
            window_size=4, num_labels=1000)),
    }
    folder = tmp_path / "models" / kind
    models[kind]().save_pretrained(folder)
    ConvNextImageProcessorPil(size={"shortest_edge": 32}, crop_pct=1.0).save_pretrained(folder)
    events: list[tuple[str, str]] = []
    result = run_training(
        make_spec(kind, task="image-classification", n_epochs=1, batch_size=16), digits[1],
        tmp_path / "out", models_dir=tmp_path / "models", device="cpu", max_steps=2,
        validation_file=digits[1],
        callbacks=Callbacks(on_event=lambda level, message, data=None:
                            events.append((level, message))))
    assert result.status == "stopped" and result.step == 2
    warnings = [m for level, m in events if level == "warning"]
    assert (warnings != []) == (kind == "resnet")
    from transformers import AutoModelForImageClassification

    saved = AutoModelForImageClassification.from_pretrained(
        tmp_path / "out" / "checkpoints" / "step-2")
    assert saved.config.num_labels == 10 and saved.config.id2label[3] == "3"
