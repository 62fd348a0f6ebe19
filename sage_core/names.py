"""Names and defaults that the API, the database layer, the CLI and the training engine
share, each written once. Torch-free and dependency-free, so that every layer may import
it (the optimizer included, which otherwise imports only torch).

Lists are derived from their `Literal`, so a new optimizer or task is one edit here.
"""

from __future__ import annotations

from typing import Literal, get_args

# --- optimizers ---------------------------------------------------------------------------

OptimizerName = Literal["sage", "adamw", "adamax-sage", "adamax"]
OPTIMIZERS: tuple[OptimizerName, ...] = get_args(OptimizerName)
# Those that apply SAGE, to the parameters that the job's `sage_scope` selects.
SAGE_OPTIMIZERS: tuple[OptimizerName, ...] = ("sage", "adamax-sage")

# Where SAGE applies: "blocks", the linear layers inside the model's repeated blocks
# (the paper's choice); "all", every trainable tensor.
SageScope = Literal["blocks", "all"]
SAGE_SCOPES: tuple[SageScope, ...] = get_args(SageScope)

# SAGE's sensitivity EMA coefficient: the authors' shipped recipe (advice: 0.6 to 0.9).
DEFAULT_BETA3 = 0.85

# Base learning rates for fine-tuning a BERT-sized encoder. SAGE's mean step multiplier is
# near 0.5, so the SAGE variants default to 3x their base optimizer (2 to 5x advised).
DEFAULT_LEARNING_RATE: dict[OptimizerName, float] = {
    "adamw": 5e-5,
    "sage": 1.5e-4,
    "adamax": 1e-4,
    "adamax-sage": 3e-4,
}
# With LoRA only the small adapters train, which takes a larger step than full fine-tuning.
LORA_LEARNING_RATE_FACTOR = 4.0
DEFAULT_EPOCHS = 3
# n_epochs "auto" with a known training-set size: at least DEFAULT_EPOCHS, more for a small
# set so that it gets AUTO_EPOCHS_MIN_STEPS optimizer steps, at most AUTO_EPOCHS_MAX.
AUTO_EPOCHS_MIN_STEPS = 100
AUTO_EPOCHS_MAX = 10
# validation_split "auto": with no validation file, hold out this fraction of a training
# file of at least VALIDATION_SPLIT_MIN_ROWS examples.
DEFAULT_VALIDATION_SPLIT = 0.1
VALIDATION_SPLIT_MIN_ROWS = 100

# --- resources ----------------------------------------------------------------------------

# How a job of several GPUs (processes, on a CPU-only deployment) trains: "ddp" replicates
# the model on every rank, "fsdp" shards parameters, gradients and optimizer state (FSDP2),
# "auto" picks DDP when the model and its optimizer state fit on one device, else FSDP.
Strategy = Literal["auto", "ddp", "fsdp"]
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)
MAX_GPUS_PER_JOB = 64

# --- tasks --------------------------------------------------------------------------------

TaskName = Literal["text-classification", "text-regression", "chat", "completion", "seq2seq",
                   "image-classification"]
TASKS: tuple[TaskName, ...] = get_args(TaskName)
DEFAULT_TASK: TaskName = "text-classification"
# Tasks that train a causal (decoder-only) language model to generate text: OpenAI's chat
# format (`messages`) and prompt/completion pairs. Only these take LoRA and train_on_inputs.
GENERATIVE_TASKS: tuple[TaskName, ...] = ("chat", "completion")
# Tasks whose files share one layout (text and label): a file may serve either.
TEXT_TASKS: tuple[TaskName, ...] = ("text-classification", "text-regression")

# "auto" batch size and the default max_seq_length, by task: encoder classifiers read short
# texts; a causal LM reads whole conversations, fewer of them per step.
DEFAULT_BATCH_SIZE: dict[TaskName, int] = {
    "text-classification": 32, "text-regression": 32, "chat": 8, "completion": 8,
    "seq2seq": 16, "image-classification": 32,
}
# (image-classification has no sequence: its inputs are the image processor's size)
DEFAULT_MAX_SEQ_LENGTH: dict[TaskName, int] = {
    "text-classification": 128, "text-regression": 128, "chat": 1024, "completion": 1024,
    "seq2seq": 128, "image-classification": 128,
}

# Each task's main metric (a key of the task's metrics, logged with a "valid_" prefix) and
# whether greater is better: what early stopping, "best checkpoint" and sweeps compare.
MAIN_METRIC: dict[TaskName, tuple[str, bool]] = {
    "text-classification": ("f1_macro", True),  # macro F1: robust to class imbalance
    "text-regression": ("loss", False),
    "chat": ("loss", False),  # OpenAI's: the validation loss on the assistant's tokens
    "completion": ("loss", False),
    "seq2seq": ("bleu", True),  # sacrebleu's corpus BLEU of greedy (or beam) outputs
    "image-classification": ("accuracy", True),
}


def main_metric(task: str) -> tuple[str, bool]:
    """The logged name (``valid_<metric>``) of `task`'s main metric, and whether greater is
    better; an unknown task falls back to the validation loss."""
    name, greater = MAIN_METRIC.get(task, ("loss", False))  # type: ignore[call-overload]
    return f"valid_{name}", greater


# --- checkpoint folders -------------------------------------------------------------------

# Beside the Hugging Face model files, each checkpoint folder holds the resume state: the
# optimizer, scheduler and RNG tensors (torch.save) and the progress (step, data position,
# spec, metrics; JSON). A download ships the model folder without them.
STATE_FILE = "training_state.pt"
PROGRESS_FILE = "trainer_state.json"
RESUME_FILES: frozenset[str] = frozenset({STATE_FILE, PROGRESS_FILE})
# A LoRA job's checkpoint folder holds the merged model (a plain Hugging Face folder) at its
# root and the peft adapter folder (adapter_config.json, adapter weights) in this subfolder:
# a download's `variant=merged` ships the first, `variant=adapter` the second.
ADAPTER_DIR = "adapter"
