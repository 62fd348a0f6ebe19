"""One chat conversation or prompt/completion pair as `input_ids` and `labels` for a causal LM.

Loss falls on what the assistant says, found without `{% generation %}` markers (most real
chat templates lack them): an assistant message's tokens are those that rendering the
conversation up to and including it adds to rendering it up to it with the generation
prompt. That span holds the message's content and whatever the template closes the turn
with (`<|eot_id|>`, `<|im_end|>`, an EOS), so the model learns to stop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError

# the label PyTorch's cross entropy ignores
IGNORE_INDEX = -100


@dataclass
class EncodedText:
    """Token ids of one example and, position by position, the token to learn there
    (`IGNORE_INDEX` where nothing is learnt). The caller shifts for next-token prediction,
    as Hugging Face causal LMs do given `labels`."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool  # the rendered example was longer than max_seq_length

    @property
    def loss_tokens(self) -> int:
        """Positions that carry loss; 0 after truncation cut every trained token away."""
        return sum(label != IGNORE_INDEX for label in self.labels)


def encode_chat(tokenizer: Any, messages: Sequence[Mapping[str, Any]], *, max_seq_length: int,
                train_on_inputs: bool = False,
                tools: list[dict[str, Any]] | None = None) -> EncodedText:
    """Render `messages` with the tokenizer's chat template and label the tokens of every
    assistant message whose `weight` is not 0 (all tokens if `train_on_inputs`). `tools`,
    the conversation's tool definitions, go to the template (the caller checks that it
    renders them: see `template_supports_tools`).

    Raises ValueError if the template does not render the conversation's prefixes as token
    prefixes of the whole (the span of a message cannot then be found), if an assistant
    message opens the conversation (no prefix to render a generation prompt from), or if
    the template refuses the conversation.
    """
    _check_max_seq_length(max_seq_length)
    if not messages:
        raise ValueError("A conversation needs at least one message")
    # checked even where train_on_inputs overrides them: a bad file is bad either way
    trained = [_weight(message, index) for index, message in enumerate(messages)]
    conversation = _without_weights(messages)
    input_ids = _render(tokenizer, conversation, tools=tools)
    if train_on_inputs:
        labels = list(input_ids)
    else:
        labels = [IGNORE_INDEX] * len(input_ids)
        for index, message in enumerate(messages):
            if message.get("role") != "assistant" or not trained[index]:
                continue
            start, end = _assistant_span(tokenizer, conversation, index, input_ids, tools)
            labels[start:end] = input_ids[start:end]
    return _truncate(input_ids, labels, max_seq_length)


def encode_completion(tokenizer: Any, prompt: str, completion: str, *, max_seq_length: int,
                      train_on_inputs: bool = False) -> EncodedText:
    """The prompt's tokens (with the tokenizer's own start-of-sequence tokens, such as
    Llama's BOS), then the completion's and EOS, which carry the loss (all tokens do if
    `train_on_inputs`). Prompt and completion are tokenized apart so that the boundary
    between them is a token boundary."""
    _check_max_seq_length(max_seq_length)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("The tokenizer has no EOS token to end the completion with")
    # text that spells a special token ("<|endoftext|>") is text here, not a control token
    prompt_ids = list(tokenizer(prompt, add_special_tokens=True,
                                split_special_tokens=True)["input_ids"])
    completion_ids = list(tokenizer(completion, add_special_tokens=False,
                                    split_special_tokens=True)["input_ids"]) + [eos]
    input_ids = prompt_ids + completion_ids
    prompt_labels = prompt_ids if train_on_inputs else [IGNORE_INDEX] * len(prompt_ids)
    return _truncate(input_ids, prompt_labels + completion_ids, max_seq_length)


def encode_prompt(tokenizer: Any, messages: Sequence[Mapping[str, Any]], *,
                  tools: list[dict[str, Any]] | None = None) -> list[int]:
    """`messages` rendered with the generation prompt: what a model answers from."""
    return _render(tokenizer, _without_weights(messages), add_generation_prompt=True,
                   tools=tools)


def template_supports_tools(tokenizer: Any) -> bool:
    """Whether the chat template reads `tools` at all (one that does not would drop them in
    silence)."""
    template = tokenizer.chat_template
    if isinstance(template, dict):  # named templates; "tool_use" where there is one
        template = " ".join(template.values())
    return isinstance(template, str) and "tools" in template


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """The control tokens the chat template ends an assistant turn with (`<|eot_id|>`,
    `<|im_end|>`), found by rendering one: the added (special) tokens after the message's
    content, such as `<|im_end|>` before ChatML's newline. Empty if there are none."""
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    before = _render(tokenizer, conversation[:1], add_generation_prompt=True)
    span = _render(tokenizer, conversation)[len(before):]
    content = list(tokenizer("ok", add_special_tokens=False)["input_ids"])
    # the content's tokens open the span; what follows closes the turn
    start = len(content) if span[: len(content)] == content else 0
    added = set(tokenizer.added_tokens_decoder)
    return [token for token in dict.fromkeys(span[start:]) if token in added]


def _without_weights(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    # `weight` is ours, not the template's
    return [{k: v for k, v in m.items() if k != "weight"} for m in messages]


def _render(tokenizer: Any, conversation: list[dict[str, Any]], *,
            add_generation_prompt: bool = False,
            tools: list[dict[str, Any]] | None = None) -> list[int]:
    # Control tokens spelt inside a message are encoded as text, so a user cannot open or
    # close a turn by writing "<|im_end|>".
    try:
        ids = tokenizer.apply_chat_template(
            conversation, tools=tools, add_generation_prompt=add_generation_prompt,
            tokenize=True, return_dict=False, sanitize_control_tokens=True,
        )
    except TemplateError as exc:
        # templates refuse what they cannot render (roles out of order) with raise_exception
        raise ValueError(f"The chat template refused the conversation: {exc}") from exc
    return list(ids)


def _assistant_span(tokenizer: Any, conversation: list[dict[str, Any]], index: int,
                    input_ids: list[int],
                    tools: list[dict[str, Any]] | None = None) -> tuple[int, int]:
    """[start, end) of message `index` in `input_ids`: its content and end-of-turn tokens,
    without the role header the generation prompt renders."""
    if index == 0:
        raise ValueError("Message 0 is an assistant message: a conversation must open with "
                         "a system or user message")
    before = _render(tokenizer, conversation[:index], add_generation_prompt=True, tools=tools)
    through = _render(tokenizer, conversation[: index + 1], tools=tools)
    if before != through[: len(before)] or through != input_ids[: len(through)]:
        raise ValueError(
            f"The chat template does not render message {index} (assistant) consistently: "
            "the conversation rendered up to it is not a token prefix of the whole, so its "
            "tokens cannot be found. The template may rewrite earlier turns depending on "
            "later ones (for example dropping past reasoning)."
        )
    return len(before), len(through)


def _weight(message: Mapping[str, Any], index: int) -> bool:
    weight = message.get("weight", 1)
    # bool is an int; True/False would pass silently for 1/0 otherwise
    if isinstance(weight, bool) or weight not in (0, 1):
        raise ValueError(f"Message {index}: weight must be 0 or 1, got {weight!r}")
    return weight == 1


def _truncate(input_ids: list[int], labels: list[int], max_seq_length: int) -> EncodedText:
    # The beginning is kept: a decoder reads left to right, and the system prompt and the
    # first turns are what later turns depend on.
    truncated = len(input_ids) > max_seq_length
    return EncodedText(input_ids[:max_seq_length], labels[:max_seq_length], truncated)


def _check_max_seq_length(max_seq_length: int) -> None:
    if max_seq_length < 1:
        raise ValueError(f"Invalid max_seq_length: {max_seq_length}")
