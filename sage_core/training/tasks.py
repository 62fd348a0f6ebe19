"""Tasks: everything the training loop needs to know about one kind of problem.

The loop is task-agnostic: it asks its `Task` for the model with its head, the encoded
examples, batches, the per-example loss, predictions and metrics. A new task (seq2seq,
image classification) is a new subclass registered in `registry.TASKS`; the loop does not
change.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

import numpy as np
import torch
import torch.nn.functional as F

from sage_core.datafiles import Dataset
from sage_core.errors import InvalidSpecError
from sage_core.names import MAIN_METRIC
from sage_core.schemas import ResolvedHyperparameters
from sage_core.training import metrics as M
from sage_core.training.chat_format import IGNORE_INDEX

if TYPE_CHECKING:
    from sage_core.training.device import Placement

# where `Task.encode` reports on the data: report(level, message), level "info" | "warning"
Report = Callable[[str, str], None]


def ignore_report(level: str, message: str) -> None:
    return None


@dataclass
class Encoded:
    """One example, ready to batch: model features and its target."""

    features: dict[str, Any]  # unpadded token lists; an image's encoded file bytes
    target: int | float | list[int]  # a class id, a value, or per-token labels (causal LM)


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]  # keyword arguments of the model's forward
    targets: torch.Tensor
    size: int  # examples
    tokens: int  # non-padding tokens

    def to(self, device: torch.device) -> Batch:
        if device.type == "cpu":
            return self

        def move(t: torch.Tensor) -> torch.Tensor:
            if device.type != "cuda":
                return t.to(device)
            # A copy from pageable memory waits for the GPU to drain; from pinned memory it
            # is queued, so the CPU can prepare the next step while the GPU works.
            return t.pin_memory().to(device, non_blocking=True)

        return Batch({k: move(v) for k, v in self.inputs.items()}, move(self.targets),
                     self.size, self.tokens)


def pad_rows(rows: Sequence[Sequence[int]], width: int, value: int, *,
             left: bool = False) -> torch.Tensor:
    """[len(rows), width] long tensor: each row's values, then (or before, `left`) `value`."""
    tensor = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        values = torch.as_tensor(row, dtype=torch.long)
        if left:
            tensor[i, width - len(values):] = values
        else:
            tensor[i, : len(values)] = values
    return tensor


def padded_width(lengths: Sequence[int], pad_to_multiple_of: int) -> int:
    return -(-max(lengths) // pad_to_multiple_of) * pad_to_multiple_of


def length_mask(lengths: Sequence[int], width: int, *, left: bool = False) -> torch.Tensor:
    """The attention mask of rows of `lengths` padded to `width`: from the lengths, never
    from comparing ids with the pad id (which may be a real token, such as EOS)."""
    return pad_rows([[1] * n for n in lengths], width, 0, left=left)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report (the new head's weights are expected to be new)
    and its per-shard progress bars, which would interleave with the caller's output."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        if bars:
            hf_logging.enable_progress_bar()


class Task(ABC):
    """One kind of problem. Instances hold per-run state (label names, the tokenizer) and
    the run's hyperparameters (None: the defaults, for tests and tools)."""

    name: ClassVar[str]
    # a key of `metrics()`, compared for early stopping and "best" (sage_core.names)
    main_metric: ClassVar[str]
    greater_is_better: ClassVar[bool]
    # A ratio that train rows report besides the loss, as train_<name> (see
    # `train_statistic`); None for none.
    train_statistic_name: ClassVar[str | None] = None

    def __init__(self, hp: ResolvedHyperparameters | None = None) -> None:
        self.hp = hp

    @abstractmethod
    def prepare(self, train: Dataset, validation: Dataset | None, *, train_name: str,
                validation_name: str | None) -> None:
        """Derive what the task needs from the data (label names) and check the files agree."""

    @abstractmethod
    def load_processor(self, path: str) -> None:
        """Load the tokenizer (or image processor) of the base model at `path`."""

    @abstractmethod
    def save_processor(self, folder: Path) -> None: ...

    def save_model(self, model: torch.nn.Module, folder: Path, *,
                   state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """The model's Hugging Face folder; `state_dict`: its weights, when the module holds
        only a shard of them (FSDP)."""
        with quiet_transformers():
            model.save_pretrained(folder, state_dict=state_dict)  # type: ignore[operator]
        self.save_processor(folder)

    @abstractmethod
    def build_model(self, base_path: str) -> torch.nn.Module:
        """The base model with a freshly initialised head for this task."""

    @abstractmethod
    def load_model(self, folder: Path) -> torch.nn.Module:
        """A model this task saved earlier (a checkpoint), checked against this run's labels."""

    def prepare_model(self, model: torch.nn.Module, device: torch.device, *,
                      shards: int = 1) -> None:
        """Called with the built or loaded model before it moves to `device`: memory
        savings (gradient checkpointing) and checks that it fits, with its weights and
        optimizer state split over `shards` devices (FSDP)."""
        return None

    @abstractmethod
    def max_length_limit(self) -> int | None:
        """The longest input the model accepts, or None if unbounded."""

    @abstractmethod
    def encode(self, dataset: Dataset, max_length: int, *, param: str = "training_file",
               report: Report = ignore_report) -> list[Encoded]:
        """The examples to train or evaluate on. `param` names the file in errors
        ("training_file" or "validation_file"); `report(level, message)` receives what the
        user should know about the data (truncated or dropped examples)."""

    def example_length(self, item: Encoded) -> int:
        """The padded dimension's length of `item`: evaluation batches examples of similar
        length together, to pad less. 0 where every example has the same shape."""
        return 0

    @abstractmethod
    def collate(self, items: Sequence[Encoded], pad_to_multiple_of: int = 1) -> Batch:
        """Pad to the longest item, rounded up to `pad_to_multiple_of` (fewer distinct shapes
        on a GPU, where each new shape costs kernel selection)."""

    def augment(self, batch: Batch) -> Batch:
        """A training batch, randomly altered (an image task's crops and flips), drawing on
        torch's global RNG; evaluation batches are never augmented. `Placement.batch` calls
        it for training batches (train=True) before they move to the device. Identity by
        default."""
        return batch

    @abstractmethod
    def loss(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        """Per-example losses in fp32, shape [batch]: the loop does the averaging, so that
        gradient accumulation weighs every example of an optimizer step equally."""

    @abstractmethod
    def predict(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        """Per example (first dimension [batch]), what `metrics` needs of it: the predicted
        class or value, or per-example counts (a causal LM's correct and loss tokens)."""

    @abstractmethod
    def metrics(self, predictions: np.ndarray, targets: list[Any]) -> dict[str, float]:
        """Metrics over a whole file: `predictions` are `predict`'s rows in the file's
        order, `targets` the examples' `Encoded.target`s."""

    def baselines(self, train: Sequence[Encoded],
                  validation: Sequence[Encoded]) -> dict[str, float]:
        """The task's trivial baseline, scored on the `validation` examples with the names of
        `metrics` (the loop logs them as baseline_<name> in each evaluation row): what a
        rule that ignores the input achieves, learnt from `train` where it needs to be (the
        majority class, the mean value). Computed once per run. {} for none (chat and
        completion: no input-free rule gives an honest validation loss to compare with)."""
        return {}

    def predicted_classes(self, predictions: np.ndarray) -> np.ndarray | None:
        """The class id each row of `predict`'s output predicts, for the predicts_one_class
        warning (verdicts.py); None for tasks that are not classifiers."""
        return None

    def train_statistic(self, outputs: Any,
                        targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A micro-batch's (numerator, denominator) of `train_statistic_name`, detached and
        on the device: the train rows report sum(numerators) / sum(denominators) over their
        steps, read only when a row is logged. None for tasks without one."""
        return None

    def generation_metrics(self, model: torch.nn.Module, items: Sequence[Encoded],
                           placement: Placement, batch_size: int) -> dict[str, float]:
        """Metrics of what the model produces from `items` rather than of a forward pass
        (seq2seq's BLEU of its translations), called by the evaluator after `metrics`, with
        the model in eval mode, under no_grad, the RNG restored afterwards. None here."""
        return {}

    def sample_events(self, model: torch.nn.Module, step: int) -> list[tuple[str, dict[str, Any]]]:
        """(message, data) of each sample the model produces at an evaluation, for the
        event log (a causal LM's answers to validation prompts). The caller restores the RNG
        and train mode afterwards."""
        return []


class PerTokenLabels:
    """Loss and metrics of a task whose targets are token labels (IGNORE_INDEX where nothing
    is learnt) aligned with the logits by `_aligned`: a causal LM shifts them for next-token
    prediction, a seq2seq decoder's line up. Each example's loss is the mean cross-entropy
    over its own label tokens, in fp32 (0 for an example without one), so every example
    weighs equally when the loop averages them; the metric is mean_token_accuracy, the
    fraction of all label tokens whose argmax is the label."""

    train_statistic_name: ClassVar[str | None] = "mean_token_accuracy"

    def _aligned(self, outputs: Any, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return outputs.logits, targets

    def loss(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        logits, labels = self._aligned(outputs, targets)
        per_token = F.cross_entropy(logits.float().transpose(1, 2), labels,
                                    ignore_index=IGNORE_INDEX, reduction="none")
        return per_token.sum(dim=1) / (labels != IGNORE_INDEX).sum(dim=1).clamp(min=1)

    def _token_hits(self, outputs: Any,
                    targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per example: label tokens whose argmax is the label, and label tokens."""
        logits, labels = self._aligned(outputs, targets)
        counted = labels != IGNORE_INDEX
        hits = (logits.argmax(dim=-1) == labels) & counted
        return hits.sum(dim=1), counted.sum(dim=1)

    def predict(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        return torch.stack(self._token_hits(outputs, targets), dim=1)

    def metrics(self, predictions: np.ndarray, targets: list[Any]) -> dict[str, float]:
        hits, counted = predictions.sum(axis=0)
        return {"mean_token_accuracy": float(hits / counted) if counted else 0.0}

    @torch.no_grad()
    def train_statistic(self, outputs: Any,
                        targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hits, counted = self._token_hits(outputs, targets)
        return hits.sum(), counted.sum()


class TokenizedTask(Task):
    """Token ids from the base model's Hugging Face tokenizer, padded per batch."""

    def __init__(self, hp: ResolvedHyperparameters | None = None) -> None:
        super().__init__(hp)
        self.tokenizer: Any = None
        self._path: str | None = None

    def load_processor(self, path: str) -> None:
        from transformers import AutoTokenizer

        self._path = path
        self.tokenizer = AutoTokenizer.from_pretrained(path)

    def save_processor(self, folder: Path) -> None:
        self.tokenizer.save_pretrained(folder)

    def example_length(self, item: Encoded) -> int:
        return len(item.features["input_ids"])

    def max_length_limit(self) -> int | None:
        """The least of the tokenizer's limit and the model's position embeddings
        (`max_position_embeddings`; GPT-2's n_positions)."""
        from transformers import AutoConfig

        limits = []
        # Tokenizers without a limit report a huge sentinel (int(1e30)).
        tokenizer_limit = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tokenizer_limit, int) and tokenizer_limit < 1_000_000:
            limits.append(tokenizer_limit)
        if self._path is not None:
            config = AutoConfig.from_pretrained(self._path)
            for name in ("max_position_embeddings", "n_positions"):
                positions = getattr(config, name, None)
                if isinstance(positions, int):
                    limits.append(positions)
                    break
        return min(limits) if limits else None


class _TextTask(TokenizedTask):
    """Text (and text-pair) input to a sequence classifier, dynamic padding."""

    @abstractmethod
    def _target(self, label: str | int | float) -> int | float: ...

    def encode(self, dataset: Dataset, max_length: int, *, param: str = "training_file",
               report: Report = ignore_report) -> list[Encoded]:
        examples = dataset.examples
        keys = [k for k in self.tokenizer.model_input_names if k != "attention_mask"]
        out: list[Encoded | None] = [None] * len(examples)
        singles = [i for i, e in enumerate(examples) if e.text_pair is None]
        pairs = [i for i, e in enumerate(examples) if e.text_pair is not None]
        for indices, with_pair in ((singles, False), (pairs, True)):
            if not indices:
                continue
            texts = [examples[i].text for i in indices]
            second = [examples[i].text_pair for i in indices] if with_pair else None
            enc = self.tokenizer(texts, second, truncation=True, max_length=max_length,
                                 return_attention_mask=False)
            for row, i in enumerate(indices):
                feats = {k: enc[k][row] for k in keys if k in enc}
                out[i] = Encoded(feats, self._target(examples[i].label))
        return [e for e in out if e is not None]

    def collate(self, items: Sequence[Encoded], pad_to_multiple_of: int = 1) -> Batch:
        lengths = [self.example_length(it) for it in items]
        width = padded_width(lengths, pad_to_multiple_of)
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        pad_values = {"input_ids": self.tokenizer.pad_token_id or 0}
        inputs = {key: pad_rows([it.features[key] for it in items], width,
                                pad_values.get(key, 0), left=left)
                  for key in items[0].features}
        inputs["attention_mask"] = length_mask(lengths, width, left=left)
        targets = torch.tensor([it.target for it in items], dtype=self._target_dtype)
        return Batch(inputs, targets, len(items), sum(lengths))

    _target_dtype: ClassVar[torch.dtype]

    def _load(self, path: str | Path, **kwargs: Any) -> Any:  # a PreTrainedModel
        from transformers import AutoModelForSequenceClassification

        with quiet_transformers():
            return AutoModelForSequenceClassification.from_pretrained(
                str(path), dtype=torch.float32, **kwargs)


class ClassLabels(Task):
    """What the classification tasks (text, image) share: label names from the training
    file (numeric order when every label is an integer), checked against the validation
    file and a resumed checkpoint; a head configured for them; cross-entropy per example.
    The class's `_load(path, **config)` loads a model with its head."""

    def __init__(self, hp: ResolvedHyperparameters | None = None) -> None:
        super().__init__(hp)
        self.label_names: list[str] = []
        self.label2id: dict[str, int] = {}

    if TYPE_CHECKING:  # each task class has its own (a stub here would shadow it)
        def _load(self, path: str | Path, **kwargs: Any) -> Any: ...

    def prepare(self, train: Dataset, validation: Dataset | None, *, train_name: str,
                validation_name: str | None) -> None:
        self.label_names = train.label_names()
        self.label2id = {name: i for i, name in enumerate(self.label_names)}
        if validation is None:
            return
        unknown = sorted({str(e.label) for e in validation.examples} - set(self.label2id))
        if unknown:
            raise InvalidSpecError(
                f"{validation_name}: label {unknown[0]!r} does not occur in the training file "
                f"{train_name} (its labels: {', '.join(self.label_names)})"
                + (f"; also unknown: {', '.join(unknown[1:6])}" if len(unknown) > 1 else ""),
                param="validation_file")

    def _target(self, label: str | int | float) -> int:
        return self.label2id[str(label)]

    def _head_config(self) -> dict[str, Any]:
        return {
            "num_labels": len(self.label_names),
            "id2label": dict(enumerate(self.label_names)),
            "label2id": dict(self.label2id),
            "problem_type": "single_label_classification",
        }

    def build_model(self, base_path: str) -> torch.nn.Module:
        return cast(torch.nn.Module, self._load(base_path, **self._head_config()))

    def load_model(self, folder: Path) -> torch.nn.Module:
        model = self._load(folder)
        saved = {str(k): int(v) for k, v in model.config.label2id.items()}
        if saved != self.label2id:
            raise InvalidSpecError(
                f"checkpoint {folder.name} has labels {sorted(saved)}, the training file has "
                f"{self.label_names}", param="training_file")
        return cast(torch.nn.Module, model)

    def loss(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.logits.float(), targets, reduction="none")

    def baselines(self, train: Sequence[Encoded],
                  validation: Sequence[Encoded]) -> dict[str, float]:
        """The training file's majority class (the lowest id on a tie) predicted for every
        validation row: accuracy and f1_macro (text classification adds mcc, 0)."""
        if not train or not validation:
            return {}
        counts = np.bincount([int(cast(int, it.target)) for it in train])
        majority = np.full(len(validation), int(np.argmax(counts)))
        targets = [it.target for it in validation]
        return {"accuracy": M.accuracy(targets, majority),
                "f1_macro": M.f1_macro(targets, majority)}

    def predicted_classes(self, predictions: np.ndarray) -> np.ndarray | None:
        return predictions if predictions.ndim == 1 else predictions[:, 0]


class TextClassification(ClassLabels, _TextTask):
    name = "text-classification"
    main_metric, greater_is_better = MAIN_METRIC["text-classification"]
    _target_dtype = torch.long

    def predict(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        return outputs.logits.argmax(dim=-1)

    def metrics(self, predictions: np.ndarray, targets: list[Any]) -> dict[str, float]:
        return {
            "accuracy": M.accuracy(targets, predictions),
            "f1_macro": M.f1_macro(targets, predictions),
            "mcc": M.matthews_corrcoef(targets, predictions),
        }

    def baselines(self, train: Sequence[Encoded],
                  validation: Sequence[Encoded]) -> dict[str, float]:
        out = super().baselines(train, validation)
        return {**out, "mcc": 0.0} if out else out


class TextRegression(_TextTask):
    name = "text-regression"
    main_metric, greater_is_better = MAIN_METRIC["text-regression"]
    _target_dtype = torch.float32

    def prepare(self, train: Dataset, validation: Dataset | None, *, train_name: str,
                validation_name: str | None) -> None:
        return None

    def _target(self, label: str | int | float) -> float:
        return float(label)

    def build_model(self, base_path: str) -> torch.nn.Module:
        return self._load(base_path, num_labels=1, problem_type="regression")

    def load_model(self, folder: Path) -> torch.nn.Module:
        model = self._load(folder)
        if model.config.num_labels != 1:
            raise InvalidSpecError(f"checkpoint {folder.name} is not a regression model",
                                   param="task")
        return model

    def loss(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        return (outputs.logits.float().squeeze(-1) - targets) ** 2

    def predict(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        return outputs.logits.float().squeeze(-1)

    def metrics(self, predictions: np.ndarray, targets: list[Any]) -> dict[str, float]:
        return {"pearson": M.pearson(predictions, targets),
                "spearman": M.spearman(predictions, targets)}

    def baselines(self, train: Sequence[Encoded],
                  validation: Sequence[Encoded]) -> dict[str, float]:
        """The training file's mean predicted for every validation row: its loss (mean
        squared error, as valid_loss). Its correlations are undefined (a constant)."""
        if not train or not validation:
            return {}
        mean = float(np.mean([float(cast(float, it.target)) for it in train]))
        values = np.asarray([float(cast(float, it.target)) for it in validation])
        return {"loss": float(np.mean((values - mean) ** 2))}
