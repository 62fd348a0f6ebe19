"""Chat and completion examples as input_ids/labels, on a Llama-3-style and a ChatML template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sage_core.testing import build_tiny_gpt2, build_tiny_llama
from sage_core.training.chat_format import (
    IGNORE_INDEX,
    EncodedText,
    encode_chat,
    encode_completion,
    encode_prompt,
    end_of_turn_ids,
    template_supports_tools,
)

# No word is shared between system/user and assistant messages, so a stray label shows.
SYSTEM = "you are a helpful bot"
USER_1 = "what is the weather today ?"
ASSISTANT_1 = "sunny and rainy ."
USER_2 = "tell me a joke please"
ASSISTANT_2 = "why did chicken cross road ! to get other side"

CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": USER_1},
    {"role": "assistant", "content": ASSISTANT_1},
    {"role": "user", "content": USER_2},
    {"role": "assistant", "content": ASSISTANT_2},
]

# the token each family's template closes an assistant turn with
END_OF_TURN = {"llama": "<|eot_id|>", "gpt2": "<|im_end|>"}


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def family_tokenizer(request: pytest.FixtureRequest,
                     tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Any]:
    from transformers import AutoTokenizer

    build = {"llama": build_tiny_llama, "gpt2": build_tiny_gpt2}[request.param]
    folder = build(tmp_path_factory.mktemp(request.param))
    return request.param, AutoTokenizer.from_pretrained(folder)


@pytest.fixture
def tokenizer(family_tokenizer: tuple[str, Any]) -> Any:
    return family_tokenizer[1]


@pytest.fixture
def end_of_turn(family_tokenizer: tuple[str, Any]) -> int:
    family, tokenizer = family_tokenizer
    return int(tokenizer.convert_tokens_to_ids(END_OF_TURN[family]))


def labelled_runs(encoded: EncodedText) -> list[list[int]]:
    """The labelled tokens, one list per contiguous run."""
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for label in encoded.labels:
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(label)
        previous = label
    return runs


def words(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_only_assistant_tokens_and_their_end_of_turn_carry_loss(tokenizer: Any,
                                                                end_of_turn: int) -> None:
    encoded = encode_chat(tokenizer, CONVERSATION, max_seq_length=512)

    assert not encoded.truncated
    assert len(encoded.labels) == len(encoded.input_ids)
    assert encoded.input_ids == tokenizer.apply_chat_template(CONVERSATION, return_dict=False)
    # the template writes Llama's BOS itself; the tokenizer must not add a second
    assert encoded.input_ids.count(tokenizer.bos_token_id) <= 1
    # each label is the token at its own position (the model shifts)
    for token, label in zip(encoded.input_ids, encoded.labels, strict=True):
        assert label in (IGNORE_INDEX, token)
    runs = labelled_runs(encoded)
    decoded = [tokenizer.decode(run, skip_special_tokens=True) for run in runs]
    assert decoded == [ASSISTANT_1, ASSISTANT_2]
    assert runs == [words(tokenizer, ASSISTANT_1) + [end_of_turn],
                    words(tokenizer, ASSISTANT_2) + [end_of_turn]]


def test_no_system_or_user_word_carries_loss(tokenizer: Any) -> None:
    encoded = encode_chat(tokenizer, CONVERSATION, max_seq_length=512)

    labelled = {label for label in encoded.labels if label != IGNORE_INDEX}
    prompt_words = set(words(tokenizer, f"{SYSTEM} {USER_1} {USER_2} system user assistant"))
    assistant_words = set(words(tokenizer, f"{ASSISTANT_1} {ASSISTANT_2}"))
    assert not prompt_words & assistant_words
    assert not labelled & prompt_words


def test_an_assistant_turn_of_weight_0_carries_no_loss(tokenizer: Any, end_of_turn: int) -> None:
    messages = [dict(m) for m in CONVERSATION]
    messages[2]["weight"] = 0
    messages[4]["weight"] = 1

    encoded = encode_chat(tokenizer, messages, max_seq_length=512)

    assert labelled_runs(encoded) == [words(tokenizer, ASSISTANT_2) + [end_of_turn]]
    # the weight shapes the labels only: the model still reads the turn
    assert encoded.input_ids == encode_chat(tokenizer, CONVERSATION, max_seq_length=512).input_ids


def test_every_assistant_turn_of_weight_0_leaves_nothing_to_learn(tokenizer: Any) -> None:
    messages = [{**m, "weight": 0} if m["role"] == "assistant" else m for m in CONVERSATION]

    assert encode_chat(tokenizer, messages, max_seq_length=512).loss_tokens == 0


@pytest.mark.parametrize("weight", [2, 0.5, True, "1"])
def test_a_weight_other_than_0_or_1_is_refused(tokenizer: Any, weight: object) -> None:
    messages = [dict(m) for m in CONVERSATION]
    messages[4]["weight"] = weight

    for train_on_inputs in (False, True):
        with pytest.raises(ValueError, match="Message 4: weight must be 0 or 1"):
            encode_chat(tokenizer, messages, max_seq_length=512, train_on_inputs=train_on_inputs)


def test_train_on_inputs_puts_loss_on_every_token(tokenizer: Any) -> None:
    messages = [dict(m) for m in CONVERSATION]
    messages[2]["weight"] = 0

    encoded = encode_chat(tokenizer, messages, max_seq_length=512, train_on_inputs=True)

    assert encoded.labels == encoded.input_ids
    assert encoded.loss_tokens == len(encoded.input_ids)


def test_truncation_keeps_the_beginning(tokenizer: Any, end_of_turn: int) -> None:
    full = encode_chat(tokenizer, CONVERSATION, max_seq_length=512)
    # cut inside the last assistant message, after its first two words
    start = full.labels.index(words(tokenizer, ASSISTANT_2)[0], len(full.labels) // 2)
    cut = start + 2

    encoded = encode_chat(tokenizer, CONVERSATION, max_seq_length=cut)

    assert encoded.truncated
    assert encoded.input_ids == full.input_ids[:cut]
    assert encoded.labels == full.labels[:cut]
    assert labelled_runs(encoded)[-1] == words(tokenizer, ASSISTANT_2)[:2]
    assert not encode_chat(tokenizer, CONVERSATION, max_seq_length=len(full.input_ids)).truncated


def test_truncation_can_leave_nothing_to_learn(tokenizer: Any) -> None:
    encoded = encode_chat(tokenizer, CONVERSATION, max_seq_length=6)

    assert encoded.truncated and len(encoded.input_ids) == 6
    assert encoded.loss_tokens == 0


@pytest.mark.parametrize("max_seq_length", [0, -1])
def test_max_seq_length_must_be_positive(tokenizer: Any, max_seq_length: int) -> None:
    with pytest.raises(ValueError, match="Invalid max_seq_length"):
        encode_chat(tokenizer, CONVERSATION, max_seq_length=max_seq_length)
    with pytest.raises(ValueError, match="Invalid max_seq_length"):
        encode_completion(tokenizer, "hi", "hello", max_seq_length=max_seq_length)


def test_a_control_token_written_by_a_user_is_text(tokenizer: Any, end_of_turn: int) -> None:
    marker = tokenizer.convert_ids_to_tokens(end_of_turn)
    messages = [{"role": "user", "content": f"hello {marker} hi"},
                {"role": "assistant", "content": "ok"}]

    encoded = encode_chat(tokenizer, messages, max_seq_length=512)

    # the template's own end-of-turn tokens only: the user's turn and the assistant's
    assert encoded.input_ids.count(end_of_turn) == 2
    assert labelled_runs(encoded) == [words(tokenizer, "ok") + [end_of_turn]]


def test_a_conversation_the_template_refuses_raises_value_error(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_gpt2(tmp_path))
    tokenizer.chat_template = (
        "{% for message in messages %}{% if message['role'] == 'system' %}"
        "{{ raise_exception('no system messages') }}{% endif %}"
        "<|im_start|>{{ message['role'] }} {{ message['content'] }}<|im_end|>{% endfor %}"
    )

    with pytest.raises(ValueError, match="refused the conversation: no system messages"):
        encode_chat(tokenizer, CONVERSATION, max_seq_length=512)


def test_a_conversation_opening_with_the_assistant_is_refused(tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="Message 0 is an assistant message"):
        encode_chat(tokenizer, [{"role": "assistant", "content": "hi"}], max_seq_length=512)


# Like templates that drop the reasoning of past turns: an assistant message renders
# only when it is the last, so a prefix through it is not a prefix of the whole.
ONLY_LAST_ASSISTANT = (
    "{% for message in messages %}"
    "{% if message['role'] != 'assistant' or loop.last %}"
    "<|im_start|>{{ message['role'] }} {{ message['content'] }}<|im_end|>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)
# a generation prompt that differs from the header an assistant message renders with
OTHER_GENERATION_PROMPT = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }} {{ message['content'] }}<|im_end|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>bot {% endif %}"
)


@pytest.mark.parametrize("template", [ONLY_LAST_ASSISTANT, OTHER_GENERATION_PROMPT])
def test_a_template_whose_prefixes_do_not_match_is_refused(tmp_path: Path,
                                                           template: str) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_gpt2(tmp_path))
    tokenizer.chat_template = template

    with pytest.raises(ValueError, match="does not render message 2 "):
        encode_chat(tokenizer, CONVERSATION, max_seq_length=512)
    # with loss everywhere no span is needed, so the same template serves
    assert encode_chat(tokenizer, CONVERSATION, max_seq_length=512,
                       train_on_inputs=True).loss_tokens > 0


def test_completion_loss_on_the_completion_and_eos(family_tokenizer: tuple[str, Any]) -> None:
    family, tokenizer = family_tokenizer
    prompt, completion = "translate into french : thank you", "merci"

    encoded = encode_completion(tokenizer, prompt, completion, max_seq_length=512)

    # Llama's tokenizer starts a sequence with BOS, GPT-2's adds nothing
    prompt_ids = [tokenizer.bos_token_id] * (family == "llama") + words(tokenizer, prompt)
    completion_ids = words(tokenizer, completion) + [tokenizer.eos_token_id]
    assert encoded.input_ids == prompt_ids + completion_ids
    assert encoded.labels == [IGNORE_INDEX] * len(prompt_ids) + completion_ids
    assert not encoded.truncated


def test_completion_with_train_on_inputs(tokenizer: Any) -> None:
    encoded = encode_completion(tokenizer, "capital of france ?", "paris",
                                max_seq_length=512, train_on_inputs=True)

    assert encoded.labels == encoded.input_ids
    assert encoded.input_ids[-1] == tokenizer.eos_token_id


def test_completion_truncation_cuts_the_end(tokenizer: Any) -> None:
    full = encode_completion(tokenizer, "one two", "three four five", max_seq_length=512)

    encoded = encode_completion(tokenizer, "one two", "three four five",
                                max_seq_length=len(full.input_ids) - 1)

    assert encoded.truncated
    assert encoded.input_ids == full.input_ids[:-1]
    assert tokenizer.eos_token_id not in encoded.labels


def test_the_tiny_decoders_load_offline_and_predict(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for build in (build_tiny_llama, build_tiny_gpt2):
        folder = build(tmp_path / build.__name__, words=["zebra"])
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert tokenizer.convert_tokens_to_ids("zebra") != tokenizer.unk_token_id
        assert None not in (tokenizer.bos_token_id, tokenizer.eos_token_id,
                            tokenizer.pad_token_id)
        assert model.config.eos_token_id == tokenizer.eos_token_id
        encoded = encode_chat(tokenizer, CONVERSATION, max_seq_length=512)
        ids = torch.tensor([encoded.input_ids])
        out = model(input_ids=ids, labels=torch.tensor([encoded.labels]))
        assert out.logits.shape == (1, ids.shape[1], len(tokenizer))
        assert torch.isfinite(out.loss)


def test_end_of_turn_is_the_control_token_closing_an_assistant_turn(
        tokenizer: Any, end_of_turn: int) -> None:
    # Llama 3's <|eot_id|> (also its EOS); ChatML's <|im_end|>, not GPT-2's EOS
    assert end_of_turn_ids(tokenizer) == [end_of_turn]


def test_a_prompt_ends_with_the_generation_prompt_and_drops_weights(tokenizer: Any) -> None:
    messages = [{"role": "user", "content": "hello"},
                {"role": "assistant", "content": "hi", "weight": 0},
                {"role": "user", "content": "thanks"}]
    plain = [{k: v for k, v in m.items() if k != "weight"} for m in messages]
    expected = tokenizer.apply_chat_template(plain, add_generation_prompt=True, tokenize=True,
                                             return_dict=False)
    assert encode_prompt(tokenizer, messages) == list(expected)


def test_tool_support_is_read_from_the_template(tokenizer: Any) -> None:
    assert not template_supports_tools(tokenizer)
    original = tokenizer.chat_template
    try:
        tokenizer.chat_template = "{% if tools %}{{ tools | tojson }}{% endif %}" + original
        assert template_supports_tools(tokenizer)
    finally:
        tokenizer.chat_template = original
