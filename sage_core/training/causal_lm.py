"""The causal-LM tasks, "chat" and "completion": a decoder-only model
(`AutoModelForCausalLM`, loaded in fp32) learns the assistant's turns or the completions.

Choices a caller may rely on:
- Examples are encoded by chat_format.py: loss on the assistant messages of weight 1 (and
  their end-of-turn tokens), or on the completion and EOS; on every token with
  `train_on_inputs`. An example that keeps no trained token after truncation at
  max_seq_length is dropped, with a warning; a file left with none is an InvalidSpecError.
- Every example weighs equally: its loss is the mean cross-entropy over its own loss
  tokens, after the next-token shift (logits[:, :-1] against labels[:, 1:]), in fp32, and
  the loop averages examples. A short answer counts as much as a long one; an example
  without a loss token contributes 0.
- Batches are padded on the right with the pad token (EOS where there is none). The
  attention mask and the padding's labels (IGNORE_INDEX) come from the examples' lengths,
  never from comparing ids with the pad id, which may be EOS, a token the model must learn.
- Metrics besides the loss, with OpenAI's names: train_mean_token_accuracy and
  valid_mean_token_accuracy, the fraction of loss tokens whose argmax is the label, over
  all loss tokens of a train row's steps or of the validation file.
- At each evaluation, greedy answers to the first SAMPLE_COUNT validation prompts are
  events (`sample_events`).
- A saved model's generation_config stops at EOS and at the chat template's end-of-turn
  tokens (ChatML's `<|im_end|>` is not GPT-2's EOS), and names a pad token.
- With `lora` set, the model trains LoRA adapters (lora.py) and each checkpoint holds the
  merged model at its root and the adapter in ADAPTER_DIR, from which a resume continues.
  Gradient checkpointing (as `gradient_checkpointing` says) and the memory check come from
  memory.py, before the model moves to its device. Both modules load peft, so they are
  imported where used: a classification run never loads peft.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch

from sage_core.datafiles import ChatExample, CompletionExample, Dataset
from sage_core.errors import InvalidSpecError
from sage_core.names import MAIN_METRIC
from sage_core.schemas import ResolvedHyperparameters
from sage_core.training.chat_format import (
    IGNORE_INDEX,
    EncodedText,
    encode_chat,
    encode_completion,
    encode_prompt,
    end_of_turn_ids,
    template_supports_tools,
)
from sage_core.training.tasks import (
    Batch,
    Encoded,
    PerTokenLabels,
    Report,
    TokenizedTask,
    ignore_report,
    length_mask,
    pad_rows,
    padded_width,
    quiet_transformers,
)

SAMPLE_COUNT = 3  # validation examples answered at each evaluation
SAMPLE_MAX_NEW_TOKENS = 128  # at most; else the reference's length + SAMPLE_EXTRA_TOKENS
SAMPLE_EXTRA_TOKENS = 16
SAMPLE_PROMPT_CHARS = 500  # of the prompt shown in a sample event


class CausalLMTask(PerTokenLabels, TokenizedTask):
    """What chat and completion share; subclasses encode their kind of example."""

    main_metric, greater_is_better = "loss", False

    def __init__(self, hp: ResolvedHyperparameters | None = None) -> None:
        super().__init__(hp)
        self._samples: list[Any] = []  # the first validation examples, for sample_events
        self._stop_ids: list[int] = []

    # ------------------------------------------------------------ data
    def prepare(self, train: Dataset, validation: Dataset | None, *, train_name: str,
                validation_name: str | None) -> None:
        self._samples = list(validation.examples[:SAMPLE_COUNT]) if validation else []

    def load_processor(self, path: str) -> None:
        super().load_processor(path)
        eos = self.tokenizer.eos_token_id
        self._stop_ids = list(dict.fromkeys(
            ([eos] if eos is not None else []) + self._end_of_turn_ids()))

    def _end_of_turn_ids(self) -> list[int]:
        return []

    @property
    def _train_on_inputs(self) -> bool:
        return bool(self.hp is not None and self.hp.train_on_inputs)

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)

    @abstractmethod
    def _encode_example(self, example: Any, max_length: int) -> EncodedText: ...

    def _check_examples(self, examples: list[Any], param: str) -> None:
        return None

    def encode(self, dataset: Dataset, max_length: int, *, param: str = "training_file",
               report: Report = ignore_report) -> list[Encoded]:
        file = param.replace("_", " ")
        self._check_examples(dataset.examples, param)
        items: list[Encoded] = []
        truncated = dropped = 0
        for number, example in enumerate(dataset.examples, 1):
            try:
                encoded = self._encode_example(example, max_length)
            except ValueError as exc:
                raise InvalidSpecError(f"{file}, example {number}: {exc}", param=param) from exc
            truncated += encoded.truncated
            if encoded.loss_tokens == 0:
                dropped += 1
                continue
            items.append(Encoded({"input_ids": encoded.input_ids}, encoded.labels))
        total = len(dataset.examples)
        if truncated:
            report("warning", f"{truncated} of {total} examples in the {file} are longer than "
                              f"max_seq_length ({max_length} tokens) and were truncated")
        if not items:
            raise InvalidSpecError(
                f"no example in the {file} has a trained token within max_seq_length "
                f"({max_length} tokens); raise max_seq_length", param="max_seq_length")
        if dropped:
            report("warning", f"{dropped} of {total} examples in the {file} have no trained "
                              f"token within max_seq_length ({max_length} tokens) and are "
                              "left out")
        return items

    def collate(self, items: Sequence[Encoded], pad_to_multiple_of: int = 1) -> Batch:
        lengths = [self.example_length(it) for it in items]
        width = padded_width(lengths, pad_to_multiple_of)
        inputs = {
            "input_ids": pad_rows([it.features["input_ids"] for it in items], width,
                                  self.pad_id),
            "attention_mask": length_mask(lengths, width),
        }
        labels = pad_rows([cast(list[int], it.target) for it in items], width, IGNORE_INDEX)
        return Batch(inputs, labels, len(items), sum(lengths))

    # ------------------------------------------------------------ model
    def _load(self, path: str | Path) -> Any:  # a PreTrainedModel
        from transformers import AutoModelForCausalLM

        with quiet_transformers():
            return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)

    def build_model(self, base_path: str) -> torch.nn.Module:
        model = self._load(base_path)
        if self.hp is not None and self.hp.lora is not None:
            from sage_core.training.lora import apply_lora

            model = apply_lora(model, self.hp.lora)
        return cast(torch.nn.Module, model)

    def load_model(self, folder: Path) -> torch.nn.Module:
        if self.hp is not None and self.hp.lora is not None:
            from sage_core.training.lora import load_lora

            assert self._path is not None, "load_processor comes first"
            # the checkpointer restores the RNG states that building the adapter drew from
            return cast(torch.nn.Module, load_lora(self._path, folder))
        return cast(torch.nn.Module, self._load(folder))

    def save_model(self, model: torch.nn.Module, folder: Path, *,
                   state_dict: dict[str, torch.Tensor] | None = None) -> None:
        # Saved with the model (a peft model passes these through to its base model):
        # `generate` stops at the end of a turn, and pads.
        config = cast(Any, model).generation_config
        config.eos_token_id = list(self._stop_ids)
        config.pad_token_id = self.pad_id
        if self.hp is not None and self.hp.lora is not None:
            from sage_core.training.lora import save_lora

            assert state_dict is None, "a LoRA run is never sharded"
            with quiet_transformers():
                save_lora(model, folder)  # type: ignore[arg-type]
            self.save_processor(folder)
        else:
            super().save_model(model, folder, state_dict=state_dict)

    def prepare_model(self, model: torch.nn.Module, device: torch.device, *,
                      shards: int = 1) -> None:
        from sage_core.training import memory

        if self.hp is None:
            return
        if memory.gradient_checkpointing_wanted(self.hp.gradient_checkpointing, model, device):
            memory.enable_gradient_checkpointing(model)
        memory.check_memory_fits(model, self.hp, device, shards=shards)

    # ------------------------------------------------------------ loss and metrics
    def _aligned(self, outputs: Any, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # next-token prediction: the logits at i predict the label at i + 1
        return outputs.logits[:, :-1], targets[:, 1:]

    # ------------------------------------------------------------ samples
    @abstractmethod
    def _sample(self, example: Any) -> tuple[list[int], str, str]:
        """The prompt's ids, the prompt as shown, and the reference answer."""

    def sample_events(self, model: torch.nn.Module, step: int) -> list[tuple[str, dict[str, Any]]]:
        device = next(model.parameters()).device
        events = []
        model.eval()
        for example in self._samples:
            prompt_ids, prompt, reference = self._sample(example)
            reference_tokens = len(self.tokenizer(reference, add_special_tokens=False)
                                   ["input_ids"])
            new_tokens = min(SAMPLE_MAX_NEW_TOKENS, reference_tokens + SAMPLE_EXTRA_TOKENS)
            if self.hp is not None:  # the model never saw positions beyond max_seq_length
                prompt_ids = prompt_ids[-max(self.hp.max_seq_length - new_tokens, 1):]
            ids = torch.tensor([prompt_ids], device=device)
            with quiet_transformers(), torch.no_grad():
                out = model.generate(  # type: ignore[operator]
                    input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                    max_new_tokens=new_tokens, eos_token_id=self._stop_ids,
                    pad_token_id=self.pad_id)
            answer = self.tokenizer.decode(out[0, len(prompt_ids):].tolist(),
                                           skip_special_tokens=True).strip()
            events.append((f"Sample at step {step}: {answer}", {
                "step": step, "prompt": _clip(prompt), "reference": reference,
                "answer": answer}))
        return events


class ChatTask(CausalLMTask):
    name = "chat"
    main_metric, greater_is_better = MAIN_METRIC["chat"]

    def _end_of_turn_ids(self) -> list[int]:
        return end_of_turn_ids(self.tokenizer)

    def _check_examples(self, examples: list[Any], param: str) -> None:
        uses_tools = any(e.tools or any(m.get("tool_calls") for m in e.messages)
                         for e in examples)
        if uses_tools and not template_supports_tools(self.tokenizer):
            model = Path(self._path).name if self._path else "the model"
            raise InvalidSpecError(
                f"the {param.replace('_', ' ')} has tools or tool calls, but the chat template "
                f"of {model} does not support tools: they would be dropped", param=param)

    def _encode_example(self, example: Any, max_length: int) -> EncodedText:
        chat = cast(ChatExample, example)
        return encode_chat(self.tokenizer, chat.messages, max_seq_length=max_length,
                           train_on_inputs=self._train_on_inputs, tools=chat.tools)

    def _sample(self, example: Any) -> tuple[list[int], str, str]:
        messages = cast(ChatExample, example).messages
        last = max(i for i, m in enumerate(messages) if m.get("role") == "assistant")
        before = messages[:last]
        users = [m for m in before if m.get("role") == "user"] or before
        ids = encode_prompt(self.tokenizer, before, tools=cast(ChatExample, example).tools)
        return ids, _text(users[-1]), _text(messages[last])


class CompletionTask(CausalLMTask):
    name = "completion"
    main_metric, greater_is_better = MAIN_METRIC["completion"]

    def _encode_example(self, example: Any, max_length: int) -> EncodedText:
        pair = cast(CompletionExample, example)
        return encode_completion(self.tokenizer, pair.prompt, pair.completion,
                                 max_seq_length=max_length,
                                 train_on_inputs=self._train_on_inputs)

    def _sample(self, example: Any) -> tuple[list[int], str, str]:
        pair = cast(CompletionExample, example)
        ids = list(self.tokenizer(pair.prompt, add_special_tokens=True,
                                  split_special_tokens=True)["input_ids"])
        return ids, pair.prompt, pair.completion


def _text(message: dict[str, Any]) -> str:
    """A message's content, or its tool calls as JSON."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if message.get("tool_calls"):
        return json.dumps(message["tool_calls"])
    return json.dumps(content) if content is not None else ""


def _clip(text: str) -> str:
    return text if len(text) <= SAMPLE_PROMPT_CHARS else text[:SAMPLE_PROMPT_CHARS] + "..."
