"""Image classification: any `AutoModelForImageClassification` folder (ViT, DeiT, ConvNeXt,
ResNet, Swin) with its `AutoImageProcessor`, the head replaced for the uploaded labels.

- Examples keep their image files' bytes (compact); a batch decodes its images, converts
  them to RGB and runs the image processor (resize, rescale, normalise) then: memory holds
  the encoded files, never the decoded dataset.
- Augmentation (hyperparameter `augment`, default on), training batches only
  (`Task.augment`, which `Placement.batch(..., train=True)` applies): per image a random
  resized crop (RESIZED_CROP_SCALE of the area, aspect ratio 3/4 to 4/3, resized back
  bilinearly) and a horizontal flip with probability 1/2, with torch ops on the processed
  pixel values. Random numbers come from torch's global generator, which the run seeds and
  its checkpoints save, so a CPU run is reproducible and a resumed one continues the stream.
- Loss: cross-entropy per example. `predict` returns each example's TOP_K best class ids,
  best first; metrics: accuracy and f1_macro of the first, and top5_accuracy when there are
  more than 5 classes.
- Checkpoints hold the model and the image processor, so `pipeline("image-classification")`
  loads them.
- At each evaluation the first SAMPLE_COUNT validation images are classified, one event
  each (`sample_events`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sage_core.datafiles import Dataset
from sage_core.names import MAIN_METRIC
from sage_core.schemas import ResolvedHyperparameters
from sage_core.training import metrics as M
from sage_core.training.tasks import (
    Batch,
    ClassLabels,
    Encoded,
    Report,
    ignore_report,
    quiet_transformers,
)

TOP_K = 5
SAMPLE_COUNT = 3  # validation images classified at each evaluation, as events
RESIZED_CROP_SCALE = (0.8, 1.0)
RESIZED_CROP_RATIO = (3 / 4, 4 / 3)


def random_resized_crop(pixels: torch.Tensor, scale: tuple[float, float] = RESIZED_CROP_SCALE,
                        ratio: tuple[float, float] = RESIZED_CROP_RATIO) -> torch.Tensor:
    """[3, H, W] -> [3, H, W]: a random crop of `scale` of the area and aspect `ratio`
    (log-uniform), resized back to H x W."""
    _, height, width = pixels.shape
    area = height * width * float(torch.empty(1).uniform_(*scale))
    log_ratio = torch.empty(1).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    aspect = math.exp(float(log_ratio))
    crop_w = min(width, max(1, round(math.sqrt(area * aspect))))
    crop_h = min(height, max(1, round(math.sqrt(area / aspect))))
    top = int(torch.randint(0, height - crop_h + 1, ()))
    left = int(torch.randint(0, width - crop_w + 1, ()))
    crop = pixels[None, :, top:top + crop_h, left:left + crop_w]
    return F.interpolate(crop, size=(height, width), mode="bilinear",
                         align_corners=False)[0]


class ImageClassification(ClassLabels):
    name = "image-classification"
    main_metric, greater_is_better = MAIN_METRIC["image-classification"]

    def __init__(self, hp: ResolvedHyperparameters | None = None) -> None:
        super().__init__(hp)
        self.processor: Any = None
        self._samples: list[tuple[bytes, str]] = []  # (image, label) shown at evaluations

    def prepare(self, train: Dataset, validation: Dataset | None, *, train_name: str,
                validation_name: str | None) -> None:
        super().prepare(train, validation, train_name=train_name,
                        validation_name=validation_name)
        if validation is not None:
            self._samples = [(e.image, str(e.label))
                             for e in validation.examples[:SAMPLE_COUNT]]

    def load_processor(self, path: str) -> None:
        from transformers import AutoImageProcessor

        with quiet_transformers():
            self.processor = AutoImageProcessor.from_pretrained(path)

    def save_processor(self, folder: Path) -> None:
        self.processor.save_pretrained(folder)

    def max_length_limit(self) -> int | None:
        return None  # no sequence: inputs are the image processor's size

    def _load(self, path: str | Path, **kwargs: Any) -> Any:  # a PreTrainedModel
        from transformers import AutoModelForImageClassification

        with quiet_transformers():
            return AutoModelForImageClassification.from_pretrained(
                str(path), dtype=torch.float32, **kwargs)

    def build_model(self, base_path: str) -> torch.nn.Module:
        # a base model's head (ImageNet's 1000 classes) is replaced, whatever its size
        return self._load(base_path, ignore_mismatched_sizes=True, **self._head_config())

    def encode(self, dataset: Dataset, max_length: int, *, param: str = "training_file",
               report: Report = ignore_report) -> list[Encoded]:
        return [Encoded({"image": e.image}, self._target(e.label)) for e in dataset.examples]

    def collate(self, items: Sequence[Encoded], pad_to_multiple_of: int = 1) -> Batch:
        from PIL import Image

        images = []
        for item in items:
            with Image.open(io.BytesIO(item.features["image"])) as image:
                images.append(image.convert("RGB"))
        pixels = self.processor(images, return_tensors="pt")["pixel_values"]
        targets = torch.tensor([it.target for it in items], dtype=torch.long)
        return Batch({"pixel_values": pixels.float()}, targets, len(items), 0)

    def augment(self, batch: Batch) -> Batch:
        if self.hp is not None and not self.hp.augment:
            return batch
        pixels = batch.inputs["pixel_values"].clone()
        for i in range(len(pixels)):
            pixels[i] = random_resized_crop(pixels[i])
            if float(torch.rand(())) < 0.5:
                pixels[i] = pixels[i].flip(-1)
        return Batch({**batch.inputs, "pixel_values": pixels}, batch.targets, batch.size,
                     batch.tokens)

    def sample_events(self, model: torch.nn.Module, step: int) -> list[tuple[str, dict[str, Any]]]:
        """The first SAMPLE_COUNT validation images classified: "Sample at step N: image 1,
        label '3', predicted '3' (0.91)", with data {step, index, label, predicted, score}."""
        if not self._samples:
            return []
        device = next(model.parameters()).device
        batch = self.collate([Encoded({"image": image}, self.label2id[label])
                              for image, label in self._samples]).to(device)
        model.eval()
        with torch.no_grad():
            probabilities = model(**batch.inputs).logits.float().softmax(-1)
        scores, ids = probabilities.max(-1)
        events = []
        for index, (label, score, class_id) in enumerate(
                zip([label for _, label in self._samples], scores.tolist(), ids.tolist(),
                    strict=True), start=1):
            predicted = self.label_names[class_id]
            events.append((f"Sample at step {step}: image {index}, label {label!r}, predicted "
                           f"{predicted!r} ({score:.2f})",
                           {"step": step, "index": index, "label": label,
                            "predicted": predicted, "score": round(score, 4)}))
        return events

    def predict(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        logits = outputs.logits
        return logits.topk(min(TOP_K, logits.shape[-1]), dim=-1).indices

    def metrics(self, predictions: np.ndarray, targets: list[Any]) -> dict[str, float]:
        best = predictions[:, 0]
        out = {"accuracy": M.accuracy(targets, best), "f1_macro": M.f1_macro(targets, best)}
        if len(self.label_names) > TOP_K:
            hits = (predictions[:, :TOP_K] == np.asarray(targets)[:, None]).any(axis=1)
            out["top5_accuracy"] = float(hits.mean())
        return out

