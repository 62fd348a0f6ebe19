"""Causal-LM tasks (chat, completion): batches, labels, loss, token accuracy, reports on the
data, tools, and training end to end on tiny Llama and GPT-2 decoders, down to a model that
learns to answer questions (and not what a weight-0 turn says)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from training_data import make_spec, write_jsonl

from sage_core.datafiles import Dataset, load_dataset
from sage_core.errors import InvalidSpecError
from sage_core.testing import build_tiny_gpt2, build_tiny_llama
from sage_core.training import Callbacks, run_training
from sage_core.training.causal_lm import ChatTask, CompletionTask
from sage_core.training.chat_format import IGNORE_INDEX
from sage_core.training.loop import Trainer
from sage_core.training.tasks import Encoded

NUMBERS = "zero one two three four five six seven eight nine ten".split()
# the weight-0 first answer of every training conversation: never to be learnt
DISTRACTOR = "bonjour merci"


@pytest.fixture(scope="module")
def decoders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with `tiny-llama` and `tiny-gpt2`, which know the number words."""
    root = tmp_path_factory.mktemp("decoders")
    build_tiny_llama(root / "tiny-llama", words=[*NUMBERS, "plus"])
    build_tiny_gpt2(root / "tiny-gpt2", words=[*NUMBERS, "plus"])
    return root


def _task(model: Path, kind: type[ChatTask] | type[CompletionTask] = ChatTask,
          **hyperparameters: Any) -> Any:
    task = kind(make_spec(task=kind.name, **hyperparameters).hyperparameters)
    task.load_processor(str(model))
    return task


def _chat_file(path: Path, rows: list[list[dict[str, Any]]]) -> Path:
    return write_jsonl(path, [{"messages": messages} for messages in rows])


def _chat(path: Path, rows: list[list[dict[str, Any]]]) -> Dataset:
    return load_dataset(_chat_file(path, rows), "chat")


def _turns(*pairs: tuple[str, str]) -> list[dict[str, Any]]:
    return [{"role": role, "content": content} for role, content in pairs]


# --------------------------------------------------------------------------- batches
@pytest.mark.parametrize("pad", ["own", "eos", "none-left-side"])
def test_collate_pads_right_with_mask_and_labels_from_lengths(decoders: Path, pad: str) -> None:
    task = _task(decoders / "tiny-llama")
    tokenizer = task.tokenizer
    eos = tokenizer.eos_token_id
    if pad == "eos":
        tokenizer.pad_token = tokenizer.eos_token
    elif pad == "none-left-side":
        tokenizer.pad_token = None
        tokenizer.padding_side = "left"  # a causal LM's training batches pad right anyway
    fill = eos if pad != "own" else tokenizer.pad_token_id
    assert fill is not None and (pad == "own") == (fill != eos)
    # EOS inside and at the end of the examples: a real token, trained and attended to
    items = [Encoded({"input_ids": [1, 9, eos]}, [IGNORE_INDEX, 9, eos]),
             Encoded({"input_ids": [1, eos, 8, 7, eos]}, [IGNORE_INDEX, eos, 8, 7, eos])]
    batch = task.collate(items)
    assert batch.inputs["input_ids"].tolist() == [[1, 9, eos, fill, fill], [1, eos, 8, 7, eos]]
    assert batch.inputs["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch.targets.tolist() == [[IGNORE_INDEX, 9, eos, IGNORE_INDEX, IGNORE_INDEX],
                                      [IGNORE_INDEX, eos, 8, 7, eos]]
    assert (batch.size, batch.tokens) == (2, 8)
    assert task.collate(items, pad_to_multiple_of=8).inputs["input_ids"].shape == (2, 8)


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt2"])
def test_only_assistant_turns_of_weight_1_carry_loss(decoders: Path, tmp_path: Path,
                                                     model: str) -> None:
    messages = [
        {"role": "system", "content": "you are a helpful bot"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "bonjour", "weight": 0},
        {"role": "user", "content": "tell me a joke"},
        {"role": "assistant", "content": "why did the chicken cross the road"},
    ]
    data = _chat(tmp_path / "t.jsonl", [messages] * 2)  # a file has 2 rows or more
    task = _task(decoders / model)
    item = task.encode(data, 128)[0]
    tokenizer = task.tokenizer
    trained = tokenizer.convert_ids_to_tokens(
        [t for t, label in zip(item.features["input_ids"], item.target, strict=True)
         if label != IGNORE_INDEX])
    end_of_turn = "<|eot_id|>" if model == "tiny-llama" else "<|im_end|>"
    assert trained == "why did the chicken cross the road".split() + [end_of_turn]
    labels = [label for label in item.target if label != IGNORE_INDEX]
    assert labels == tokenizer.convert_tokens_to_ids(trained)

    everything = _task(decoders / model, train_on_inputs=True).encode(data, 128)[0]
    assert everything.target == everything.features["input_ids"]


# --------------------------------------------------------------------------- loss, accuracy
def test_loss_is_each_examples_mean_over_its_loss_tokens() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    labels = torch.tensor([[IGNORE_INDEX, 3, 4, IGNORE_INDEX, IGNORE_INDEX],
                           [IGNORE_INDEX] * 5,
                           [IGNORE_INDEX, 1, 2, 3, 4]])
    loss = ChatTask().loss(SimpleNamespace(logits=logits.bfloat16().float()), labels)
    # the token at t is predicted from position t - 1
    first = (F.cross_entropy(logits[0, 0], torch.tensor(3))
             + F.cross_entropy(logits[0, 1], torch.tensor(4))) / 2
    last = F.cross_entropy(logits[2, :4], torch.tensor([1, 2, 3, 4]))
    expected = torch.stack([first, torch.tensor(0.0), last])
    torch.testing.assert_close(loss, expected, atol=0.05, rtol=0.02)  # bf16 logits
    assert loss.dtype == torch.float32 and loss[1] == 0
    exact = ChatTask().loss(SimpleNamespace(logits=logits), labels)
    torch.testing.assert_close(exact, expected)
    # logits where nothing is predicted (the padding) do not count
    changed = logits.clone()
    changed[0, 2:] = 100.0
    torch.testing.assert_close(ChatTask().loss(SimpleNamespace(logits=changed), labels), exact)


def test_token_accuracy_counts_every_loss_token_once() -> None:
    labels = torch.tensor([[IGNORE_INDEX, 1, 2, IGNORE_INDEX, IGNORE_INDEX],
                           [IGNORE_INDEX, 3, 3, 3, 3]])
    logits = torch.zeros(2, 5, 5)
    # argmax 1, 2 for the first example (both right); 3, 0, 0, 0 for the second (1 of 4)
    for row, column, token in ((0, 0, 1), (0, 1, 2), (1, 0, 3), (0, 2, 4), (0, 3, 4)):
        logits[row, column, token] = 1.0
    outputs, task = SimpleNamespace(logits=logits), ChatTask()
    predictions = task.predict(outputs, labels)
    assert predictions.tolist() == [[2, 2], [1, 4]]
    # 3 of 6 tokens, not the mean of the examples' 1.0 and 0.25
    assert task.metrics(predictions.numpy(), []) == {"mean_token_accuracy": 0.5}
    hits, counted = task.train_statistic(outputs, labels)
    assert (int(hits), int(counted)) == (3, 6)


# --------------------------------------------------------------------------- data reports
def test_truncated_and_untrainable_examples_are_reported(decoders: Path, tmp_path: Path) -> None:
    long_question = " ".join(["one two three"] * 10)
    rows = [
        _turns(("user", "hello"), ("assistant", "hi")),  # 10 tokens with Llama's template
        _turns(("user", "hello"), ("assistant", long_question)),  # truncated, kept
        _turns(("user", long_question), ("assistant", "yes")),  # nothing trained is left
    ]
    task = _task(decoders / "tiny-llama")
    reports: list[tuple[str, str]] = []
    items = task.encode(_chat(tmp_path / "t.jsonl", rows), 16,
                        report=lambda level, message: reports.append((level, message)))
    assert len(items) == 2 and all(len(it.features["input_ids"]) <= 16 for it in items)
    assert reports == [
        ("warning", "2 of 3 examples in the training file are longer than max_seq_length "
                    "(16 tokens) and were truncated"),
        ("warning", "1 of 3 examples in the training file have no trained token within "
                    "max_seq_length (16 tokens) and are left out"),
    ]
    with pytest.raises(InvalidSpecError, match="raise max_seq_length") as caught:
        task.encode(_chat(tmp_path / "v.jsonl", rows[2:] * 2), 16, param="validation_file")
    assert caught.value.param == "max_seq_length"
    assert "validation file" in caught.value.message


def test_tools_need_a_chat_template_that_reads_them(decoders: Path, tmp_path: Path) -> None:
    tool = {"type": "function", "function": {"name": "capital", "parameters": {}}}
    path = write_jsonl(tmp_path / "t.jsonl", [{
        "messages": _turns(("user", "what is the weather today ?"), ("assistant", "sunny")),
        "tools": [tool]}] * 2)
    task = _task(decoders / "tiny-llama")
    with pytest.raises(InvalidSpecError, match="chat template of tiny-llama does not support "
                                               "tools") as caught:
        task.encode(load_dataset(path, "chat"), 128)
    assert caught.value.param == "training_file"

    # a template that renders tools: they reach it, and carry no loss
    task.tokenizer.chat_template = (
        "{% if tools %}<|start_header_id|>system<|end_header_id|>\n\ntools: "
        "{% for t in tools %}{{ t.function.name }} {% endfor %}<|eot_id|>{% endif %}"
        + task.tokenizer.chat_template.replace("{{ bos_token }}", ""))
    item = task.encode(load_dataset(path, "chat"), 128)[0]
    tokens = task.tokenizer.convert_ids_to_tokens(item.features["input_ids"])
    assert "capital" in tokens and item.target.count(IGNORE_INDEX) == len(tokens) - 2


def test_max_length_limit_comes_from_the_models_positions(decoders: Path) -> None:
    assert _task(decoders / "tiny-llama").max_length_limit() == 2048
    assert _task(decoders / "tiny-gpt2").max_length_limit() == 1024  # n_positions


# --------------------------------------------------------------------------- end to end
GREETINGS = [_turns(("system", "you are a helpful bot"), ("user", "hello"),
                    ("assistant", "hi how are you ?"))] * 16


def _generate(final: Path, messages: list[dict[str, Any]], max_new_tokens: int = 12
              ) -> tuple[str, list[int]]:
    """Greedy answer of the saved model, as a user of the download would get it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(final)
    model = AutoModelForCausalLM.from_pretrained(final)
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    return tokenizer.decode(new, skip_special_tokens=True).strip(), new


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt2"])
def test_chat_training_end_to_end(decoders: Path, tmp_path: Path, model: str) -> None:
    train = _chat_file(tmp_path / "train.jsonl", GREETINGS)
    rows: list[dict[str, Any]] = []
    events: list[tuple[str, str, dict[str, Any] | None]] = []
    spec = make_spec(model, task="chat", n_epochs=4, batch_size=4, learning_rate=3e-3,
                     max_seq_length=64)
    result = run_training(
        spec, train, tmp_path / "out", models_dir=decoders, device="cpu",
        validation_file=train, callbacks=Callbacks(
            on_metrics=rows.append,
            on_event=lambda level, message, data=None: events.append((level, message, data))))
    assert result.status == "completed" and result.final_dir is not None
    train_rows = [r for r in rows if "train_loss" in r]
    eval_rows = [r for r in rows if "valid_loss" in r]
    assert len(eval_rows) == 4 and len(train_rows) == 16
    assert all(0 <= r["train_mean_token_accuracy"] <= 1 for r in train_rows)
    assert all(0 <= r["valid_mean_token_accuracy"] <= 1 for r in eval_rows)
    assert eval_rows[-1]["valid_loss"] < eval_rows[0]["valid_loss"]
    assert result.metrics["valid_mean_token_accuracy"] == 1.0

    samples = [(message, data) for _, message, data in events if message.startswith("Sample")]
    assert len(samples) == 3 * 4  # the first 3 validation examples at each evaluation
    message, data = samples[-1]
    assert data is not None and set(data) == {"step", "prompt", "reference", "answer"}
    assert data["step"] == 16 and data["prompt"] == "hello"
    assert data["reference"] == "hi how are you ?" == data["answer"]
    assert message == "Sample at step 16: hi how are you ?"

    # the download stops after the assistant's turn, at the template's end-of-turn token
    final = result.final_dir
    config = json.loads((final / "generation_config.json").read_text())
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(final)
    end_of_turn = tokenizer.convert_tokens_to_ids(
        "<|eot_id|>" if model == "tiny-llama" else "<|im_end|>")
    assert end_of_turn in config["eos_token_id"] and tokenizer.eos_token_id in \
        config["eos_token_id"]
    assert config["pad_token_id"] == tokenizer.pad_token_id
    answer, new_tokens = _generate(final, GREETINGS[0][:2], max_new_tokens=20)
    assert answer == "hi how are you ?" and new_tokens[-1] == end_of_turn


def test_completion_training_end_to_end(decoders: Path, tmp_path: Path) -> None:
    rows = [{"prompt": f"what is {NUMBERS[i]} plus one ?", "completion": NUMBERS[i + 1]}
            for i in range(10)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    metrics: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    result = run_training(
        make_spec("tiny-gpt2", task="completion", n_epochs=1, batch_size=5, max_seq_length=32),
        train, tmp_path / "out", models_dir=decoders, device="cpu", validation_file=train,
        callbacks=Callbacks(on_metrics=metrics.append,
                            on_event=lambda level, message, data=None:
                            samples.append(data) if data and not {"phase", "plan"} & set(data)
                                else None))
    assert result.status == "completed"
    assert "valid_mean_token_accuracy" in metrics[-1]
    assert [s["prompt"] for s in samples] == [r["prompt"] for r in rows[:3]]
    assert [s["reference"] for s in samples] == ["one", "two", "three"]


def test_samples_leave_the_rng_and_train_mode_as_they_were(
        decoders: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train = _chat_file(tmp_path / "train.jsonl", GREETINGS[:4])
    trainer = Trainer(make_spec("tiny-llama", task="chat", batch_size=4, max_seq_length=64),
                      train, tmp_path / "out", models_dir=decoders, device="cpu",
                      validation_file=train)
    trainer.setup()

    def noisy_samples(model: torch.nn.Module, step: int) -> list[tuple[str, dict[str, Any]]]:
        model.eval()
        torch.rand(3)  # as sampling would
        return [("Sample at step 0: x", {"step": step})]

    monkeypatch.setattr(trainer.task, "sample_events", noisy_samples)
    before = torch.get_rng_state()
    trainer._samples()
    assert torch.equal(torch.get_rng_state(), before) and trainer.model.training
    trainer.cleanup()


# --------------------------------------------------------------------------- it learns
def _arithmetic() -> list[list[dict[str, Any]]]:
    """36 conversations: a greeting whose answer has weight 0 (always DISTRACTOR), then
    "what is A plus B ?" answered by the sum's word, A and B from zero to five."""
    return [[{"role": "user", "content": "hello"},
             {"role": "assistant", "content": DISTRACTOR, "weight": 0},
             {"role": "user", "content": f"what is {NUMBERS[a]} plus {NUMBERS[b]} ?"},
             {"role": "assistant", "content": NUMBERS[a + b]}]
            for a in range(6) for b in range(6)]


def test_a_tiny_llama_learns_to_answer_and_not_what_weight_0_turns_say(
        decoders: Path, tmp_path: Path) -> None:
    """From random weights: 80 epochs of 5 steps with SAGE (about 4 s on 2 idle cores; at
    80 epochs seeds 0 to 4 all answer 97% or more; at 40, 83%). A control run with the
    greeting's weight set to 1 answers "bonjour merci" to "hello": the check below would
    fail if weight-0 turns were trained."""
    conversations = _arithmetic()
    train = _chat_file(tmp_path / "train.jsonl", conversations)
    spec = make_spec("tiny-llama", task="chat", seed=0, optimizer="sage", n_epochs=80,
                     batch_size=8, learning_rate=3e-3, warmup_ratio=0.05, max_seq_length=64)
    start = time.perf_counter()
    result = run_training(spec, train, tmp_path / "out", models_dir=decoders, device="cpu")
    assert result.final_dir is not None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(result.final_dir)
    model = AutoModelForCausalLM.from_pretrained(result.final_dir)

    def answer(messages: list[dict[str, Any]]) -> str:
        inputs = tokenizer.apply_chat_template(
            [{"role": m["role"], "content": m["content"]} for m in messages],
            add_generation_prompt=True, return_tensors="pt", return_dict=True)
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:],
                                skip_special_tokens=True).strip()

    right = sum(answer(c[:3]) == c[3]["content"] for c in conversations)
    assert right >= 0.85 * len(conversations), f"{right} of {len(conversations)}"
    assert DISTRACTOR.split()[0] not in answer(conversations[0][:1]).split()
    print(f"learnt {right}/{len(conversations)} in {time.perf_counter() - start:.1f} s")


# --------------------------------------------------------------------------- LoRA
def test_lora_trains_adapters_resumes_and_saves_a_loadable_merged_model(
        decoders: Path, tmp_path: Path) -> None:
    pytest.importorskip("sage_core.training.lora")
    from sage_core.names import ADAPTER_DIR

    train = _chat_file(tmp_path / "train.jsonl", GREETINGS[:8])
    spec = make_spec("tiny-llama", task="chat", n_epochs=1, batch_size=4, max_seq_length=64,
                     lora={"r": 4})

    def run(**kwargs: Any) -> Any:
        return run_training(spec, train, tmp_path / "out", models_dir=decoders, device="cpu",
                            validation_file=train, **kwargs)

    assert run(max_steps=1).status == "stopped"
    result = run()  # resumes from the adapter of step 1 (load_lora)
    assert result.status == "completed" and result.final_dir is not None
    assert (result.final_dir / ADAPTER_DIR / "adapter_config.json").exists()
    config = json.loads((result.final_dir / "generation_config.json").read_text())
    assert 4 in config["eos_token_id"]  # <|eot_id|>
    _generate(result.final_dir, GREETINGS[0][:2])  # the merged model loads without peft
