"""Chat fine-tuning through the official `openai` client against `sagetrain serve`: a chat
file uploaded and recognised, a job created with OpenAI's `method` on a tiny Llama, trained
to the end, its events and checkpoints listed, and the merged checkpoint downloaded and
loaded with plain transformers as a causal LM."""

from __future__ import annotations

import io
import json
import random
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_helpers import LiveServer
from process_helpers import wait_for

pytestmark = pytest.mark.slow

MODEL = "tiny-llama"
QUESTIONS = {"how is the weather today ?": "it is sunny today .",
             "what is the capital of france ?": "paris .",
             "tell me a joke please": "why did the chicken cross the road ?",
             "translate hello into french": "bonjour ."}


def chat_rows(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        question = rng.choice(list(QUESTIONS))
        rows.append({"messages": [
            {"role": "system", "content": "you are a helpful bot ."},
            {"role": "user", "content": question},
            {"role": "assistant", "content": QUESTIONS[question]}]})
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


@pytest.fixture(scope="module")
def chat_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding a tiny random Llama with a chat template."""
    from sage_core.testing import build_tiny_llama

    models = tmp_path_factory.mktemp("chat-models")
    build_tiny_llama(models / MODEL)
    return models


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory: pytest.TempPathFactory,
                chat_models: Path) -> Iterator[LiveServer]:
    """`sagetrain serve` on `chat_models`."""
    with LiveServer.start(tmp_path_factory.mktemp("chat-live"), chat_models) as server:
        yield server


def test_chat_job_through_the_openai_client(chat_server: LiveServer, tmp_path: Path) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{chat_server.url}/v1", api_key=chat_server.key,
                           max_retries=0)
    train = client.files.create(file=("chat.jsonl", chat_rows(16, 0)), purpose="fine-tune")
    valid = client.files.create(file=("valid.jsonl", chat_rows(4, 1)), purpose="fine-tune")
    assert train.status == "processed"
    stats = train.to_dict()["stats"]
    assert stats["task"] == "chat" and stats["examples"] == 16 and stats["messages"] == 48

    job = client.fine_tuning.jobs.create(
        model=MODEL, training_file=train.id, validation_file=valid.id, seed=3,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}})
    assert job.status in ("queued", "running") and job.seed == 3
    assert job.method is not None and job.method.type == "supervised"
    assert job.method.supervised is not None
    assert job.method.supervised.hyperparameters is not None
    assert job.method.supervised.hyperparameters.n_epochs == 2
    assert job.method.supervised.hyperparameters.batch_size == 8  # chat's "auto"
    assert job.hyperparameters.n_epochs == 2
    assert job.to_dict()["task"] == "chat"

    with pytest.raises(openai.BadRequestError) as info:
        client.fine_tuning.jobs.create(model=MODEL, training_file=train.id,
                                       method={"type": "dpo"})
    assert "supervised" in info.value.message

    def done() -> object:
        current = client.fine_tuning.jobs.retrieve(job.id)
        return current if current.status in ("succeeded", "failed", "cancelled") else None

    finished = wait_for(done, 300, "the chat job to finish", interval=0.5)
    assert finished.status == "succeeded", (finished.error, chat_server.log_text()[-4000:])
    assert finished.fine_tuned_model and finished.fine_tuned_model.startswith(f"ft:{MODEL}")

    events = client.fine_tuning.jobs.list_events(job.id, limit=100)
    assert events.data[0].message == "The job has successfully completed"
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id)
    assert checkpoints.data[0].step_number == 4  # 16 examples, batch 8, 2 epochs
    assert checkpoints.data[0].metrics.train_loss is not None

    with chat_server.client() as http:
        url = (f"/v1/fine_tuning/jobs/{job.id}/checkpoints/{checkpoints.data[0].id}"
               "/content?variant=merged")
        archive = http.get(url)
        assert archive.status_code == 200, archive.text
        adapter = http.get(url.replace("merged", "adapter"))
        assert adapter.status_code == 400  # every weight trained: no LoRA adapter
        assert adapter.json()["error"]["code"] == "no_adapter"
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        tar.extractall(tmp_path, filter="data")
    (folder,) = tmp_path.iterdir()
    assert not (folder / "training_state.pt").exists() and not (folder / "adapter").exists()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "how is the weather today ?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]


def test_lora_job_downloads_merged_and_adapter(chat_server: LiveServer, chat_models: Path,
                                               tmp_path: Path) -> None:
    """A LoRA chat job: the merged download is a plain folder, the adapter download is the
    peft adapter, and the base plus that adapter computes what the merged model does."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{chat_server.url}/v1", api_key=chat_server.key,
                           max_retries=0)
    train = client.files.create(file=("chat.jsonl", chat_rows(16, 2)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=MODEL, training_file=train.id, seed=5,
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 1, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}}})

    def done() -> object:
        current = client.fine_tuning.jobs.retrieve(job.id)
        return current if current.status in ("succeeded", "failed", "cancelled") else None

    finished = wait_for(done, 300, "the LoRA job to finish", interval=0.5)
    assert finished.status == "succeeded", (finished.error, chat_server.log_text()[-4000:])
    checkpoint = client.fine_tuning.jobs.checkpoints.list(job.id).data[0]
    folders = {}
    with chat_server.client() as http:
        for variant in ("merged", "adapter"):
            answer = http.get(f"/v1/fine_tuning/jobs/{job.id}/checkpoints/{checkpoint.id}"
                              f"/content?variant={variant}")
            assert answer.status_code == 200, answer.text
            with tarfile.open(fileobj=io.BytesIO(answer.content), mode="r:gz") as tar:
                tar.extractall(tmp_path / variant, filter="data")
            (folders[variant],) = (tmp_path / variant).iterdir()
    assert (folders["adapter"] / "adapter_config.json").is_file()
    assert not (folders["merged"] / "adapter").exists()

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    def base() -> torch.nn.Module:
        return AutoModelForCausalLM.from_pretrained(chat_models / MODEL).eval()

    with_adapter = PeftModel.from_pretrained(base(), folders["adapter"]).eval()
    merged = AutoModelForCausalLM.from_pretrained(folders["merged"]).eval()
    ids = torch.tensor([[1, 5, 9, 12, 7]])
    with torch.no_grad():
        assert torch.allclose(with_adapter(ids).logits, merged(ids).logits, atol=1e-5)
        # training moved the adapters: the merged model is not the base
        assert not torch.equal(base()(ids).logits, merged(ids).logits)
