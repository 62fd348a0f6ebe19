"""The tasks by name (`sage_core.names.TaskName`): text tasks (tasks.py) and the causal-LM
tasks, chat and completion (causal_lm.py), seq2seq (seq2seq.py) and image classification
(image_classification.py)."""

from __future__ import annotations

from sage_core.errors import InvalidSpecError
from sage_core.schemas import ResolvedHyperparameters
from sage_core.training.causal_lm import ChatTask, CompletionTask
from sage_core.training.image_classification import ImageClassification
from sage_core.training.seq2seq import Seq2SeqTask
from sage_core.training.tasks import Task, TextClassification, TextRegression

TASKS: dict[str, type[Task]] = {
    t.name: t for t in (TextClassification, TextRegression, ChatTask, CompletionTask,
                        Seq2SeqTask, ImageClassification)}


def get_task(name: str, hp: ResolvedHyperparameters | None = None) -> Task:
    """A new `name` task for a run with hyperparameters `hp` (None: the defaults)."""
    try:
        task_class = TASKS[name]
    except KeyError:
        raise InvalidSpecError(f"unknown task {name!r}; known: {', '.join(TASKS)}",
                               param="task") from None
    return task_class(hp)
