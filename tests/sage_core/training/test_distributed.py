"""Training one job with 2 ranks (gloo, CPU) against 1: the same losses and final parameters,
for SAGE and AdamW; a run paused with 2 ranks resumes with 1 and continues its curve."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from safetensors.torch import load_file
from training_data import make_spec, spam_rows, write_jsonl

from sage_core.errors import InvalidSpecError
from sage_core.schemas import ResolvedSpec, Resources
from sage_core.training import Callbacks, TrainResult, run_training
from sage_core.training.checkpoints import list_checkpoints
from sage_core.training.sampler import rank_share

# 33 examples in batches of 8: the last batch holds one, so rank 1's share of it is empty.
# Micro-batches of 2 (gradient_accumulation_steps 4): each rank accumulates two of them.
EXAMPLES = 33


class Recorder:
    def __init__(self, stop_after: int | None = None) -> None:
        self.rows: list[dict[str, Any]] = []
        self.checkpoints: list[int] = []
        self.events: list[str] = []
        self._calls = itertools.count(1)
        self.stop_after = stop_after

    def callbacks(self) -> Callbacks:
        return Callbacks(
            on_metrics=self.rows.append,
            on_checkpoint=lambda folder, step, m: self.checkpoints.append(step),
            should_stop=lambda: self.stop_after is not None
            and next(self._calls) >= self.stop_after,
            on_event=lambda level, message, data: self.events.append(message))

    def losses(self) -> dict[int, float]:
        return {r["step"]: r["train_loss"] for r in self.rows if "train_loss" in r}


def with_gpus(spec: ResolvedSpec, gpus: int) -> ResolvedSpec:
    return spec.model_copy(update={"resources": Resources(gpus=gpus)})


def spec_for(optimizer: str, gpus: int) -> ResolvedSpec:
    return with_gpus(make_spec("tiny-bert-nodrop", optimizer=optimizer, n_epochs=2,
                               batch_size=8, gradient_accumulation_steps=4), gpus)


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, Path]:
    return (write_jsonl(tmp_path / "train.jsonl", spam_rows(EXAMPLES, seed=1)),
            write_jsonl(tmp_path / "valid.jsonl", spam_rows(8, seed=2)))


def train(spec: ResolvedSpec, files: tuple[Path, Path], out: Path, models: Path,
          recorder: Recorder | None = None) -> tuple[TrainResult, Recorder]:
    recorder = recorder or Recorder()
    result = run_training(spec, files[0], out, validation_file=files[1], models_dir=models,
                          device="cpu", callbacks=recorder.callbacks())
    return result, recorder


def assert_same_parameters(a: Path, b: Path) -> None:
    left, right = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert left.keys() == right.keys()
    for name in left:
        torch.testing.assert_close(left[name], right[name], rtol=1e-4, atol=1e-5, msg=name)


def test_rank_share_splits_a_batch_evenly() -> None:
    batch = list(range(7))
    shares = [rank_share(batch, r, 3) for r in range(3)]
    assert shares == [[0, 1, 2], [3, 4], [5, 6]]
    assert [rank_share([9], r, 2) for r in range(2)] == [[9], []]


@pytest.mark.parametrize("optimizer", ["sage", "adamw"])
def test_two_ranks_match_one(optimizer: str, data: tuple[Path, Path], tmp_path: Path,
                             train_models_dir: Path) -> None:
    one, rec1 = train(spec_for(optimizer, 1), data, tmp_path / "one", train_models_dir)
    two, rec2 = train(spec_for(optimizer, 2), data, tmp_path / "two", train_models_dir)
    assert two.status == one.status == "completed"
    assert two.step == one.step == 10  # ceil(33 / 8) * 2
    assert two.trained_tokens == one.trained_tokens
    steps = sorted(rec1.losses())
    assert sorted(rec2.losses()) == steps
    torch.testing.assert_close(torch.tensor([rec2.losses()[s] for s in steps]),
                               torch.tensor([rec1.losses()[s] for s in steps]),
                               rtol=1e-4, atol=1e-6)
    evals1 = [r["valid_loss"] for r in rec1.rows if "valid_loss" in r]
    evals2 = [r["valid_loss"] for r in rec2.rows if "valid_loss" in r]
    assert len(evals2) == len(evals1) == 2
    torch.testing.assert_close(torch.tensor(evals2), torch.tensor(evals1), rtol=1e-4, atol=1e-6)
    assert two.final_dir is not None and one.final_dir is not None
    assert_same_parameters(two.final_dir, one.final_dir)
    assert two.sensitivity is not None  # rank 0 measured the final model
    assert rec2.checkpoints == rec1.checkpoints


def test_paused_with_two_ranks_resumes_with_one(data: tuple[Path, Path], tmp_path: Path,
                                                train_models_dir: Path) -> None:
    whole, rec_whole = train(spec_for("sage", 1), data, tmp_path / "whole", train_models_dir)
    out = tmp_path / "paused"
    paused, rec_paused = train(spec_for("sage", 2), data, out, train_models_dir,
                               Recorder(stop_after=3))
    assert paused.status == "stopped" and paused.step == 3
    assert [step for step, _ in list_checkpoints(out)] == [3]
    resumed, rec_resumed = train(spec_for("sage", 1), data, out, train_models_dir)
    assert resumed.status == "completed" and resumed.step == whole.step
    curve = {**rec_paused.losses(), **rec_resumed.losses()}
    assert sorted(curve) == sorted(rec_whole.losses())
    torch.testing.assert_close(torch.tensor([curve[s] for s in sorted(curve)]),
                               torch.tensor([rec_whole.losses()[s] for s in sorted(curve)]),
                               rtol=1e-4, atol=1e-6)
    assert resumed.final_dir is not None and whole.final_dir is not None
    assert_same_parameters(resumed.final_dir, whole.final_dir)


def test_refuses_more_ranks_than_examples_a_step(data: tuple[Path, Path], tmp_path: Path,
                                                 train_models_dir: Path) -> None:
    spec = with_gpus(make_spec("tiny-bert-nodrop", batch_size=2), 4)
    with pytest.raises(InvalidSpecError, match="batch_size 2"):
        train(spec, data, tmp_path / "out", train_models_dir)


JOB_PROCESS = '''
import sys
from pathlib import Path

from sage_core.schemas import JobSpec
from sage_core.training import Callbacks, run_training

if __name__ == "__main__":
    models, train, out, started = map(Path, sys.argv[1:5])
    spec = JobSpec(model="tiny-bert-nodrop", hyperparameters={"n_epochs": 50, "batch_size": 8},
                   resources={"gpus": 2}).resolve()
    run_training(spec, train, out, models_dir=models, device="cpu", callbacks=Callbacks(
        on_metrics=lambda row: started.write_text("yes")))
'''


def test_ranks_die_with_the_job_process(data: tuple[Path, Path], tmp_path: Path,
                                        train_models_dir: Path) -> None:
    script, started = tmp_path / "job.py", tmp_path / "started"
    script.write_text(JOB_PROCESS)
    job = subprocess.Popen([sys.executable, str(script), str(train_models_dir), str(data[0]),
                            str(tmp_path / "out"), str(started)])
    try:
        deadline = time.monotonic() + 120
        while not started.exists() and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.2)
        assert started.exists(), "the run did not start"
        ranks = [p for p in psutil.Process(job.pid).children()
                 if "resource_tracker" not in " ".join(p.cmdline())]
        assert len(ranks) == 2
        job.kill()  # the job's process alone, not its group: the kernel ends the ranks
        job.wait()
        gone, alive = psutil.wait_procs(ranks, timeout=10)
        assert alive == []
    finally:
        if job.poll() is None:
            job.kill()


def test_fsdp_matches_ddp_and_resumes_on_one_rank(data: tuple[Path, Path], tmp_path: Path,
                                                  train_models_dir: Path) -> None:
    """FSDP2 on the CPU (gloo): the same losses and final model as 1 rank; paused, it
    resumes with 1 rank from its consolidated checkpoint."""
    whole, rec_whole = train(spec_for("sage", 1), data, tmp_path / "whole", train_models_dir)
    fsdp = spec_for("sage", 2).model_copy(
        update={"resources": Resources(gpus=2, strategy="fsdp")})
    sharded, rec_sharded = train(fsdp, data, tmp_path / "fsdp", train_models_dir)
    assert sharded.status == "completed" and sharded.step == whole.step
    steps = sorted(rec_whole.losses())
    torch.testing.assert_close(torch.tensor([rec_sharded.losses()[s] for s in steps]),
                               torch.tensor([rec_whole.losses()[s] for s in steps]),
                               rtol=1e-4, atol=1e-6)
    assert sharded.final_dir is not None and whole.final_dir is not None
    assert_same_parameters(sharded.final_dir, whole.final_dir)
    assert sharded.sensitivity is not None and whole.sensitivity is not None
    assert sharded.sensitivity["examples"] == whole.sensitivity["examples"]
    out = tmp_path / "paused"
    paused, rec_paused = train(fsdp, data, out, train_models_dir, Recorder(stop_after=3))
    assert paused.status == "stopped" and paused.step == 3
    resumed, rec_resumed = train(spec_for("sage", 1), data, out, train_models_dir)
    curve = {**rec_paused.losses(), **rec_resumed.losses()}
    torch.testing.assert_close(torch.tensor([curve[s] for s in steps]),
                               torch.tensor([rec_whole.losses()[s] for s in steps]),
                               rtol=1e-4, atol=1e-6)
    assert resumed.final_dir is not None
    assert_same_parameters(resumed.final_dir, whole.final_dir)


def test_paused_with_one_rank_resumes_sharded(data: tuple[Path, Path], tmp_path: Path,
                                              train_models_dir: Path) -> None:
    """A single-process checkpoint (optimizer state numbered, not named) loads into FSDP's
    shards and the curve goes on."""
    whole, rec_whole = train(spec_for("adamw", 1), data, tmp_path / "whole", train_models_dir)
    out = tmp_path / "paused"
    _, rec_paused = train(spec_for("adamw", 1), data, out, train_models_dir,
                          Recorder(stop_after=4))
    fsdp = spec_for("adamw", 2).model_copy(
        update={"resources": Resources(gpus=2, strategy="fsdp")})
    resumed, rec_resumed = train(fsdp, data, out, train_models_dir)
    assert resumed.status == "completed" and resumed.step == whole.step
    curve = {**rec_paused.losses(), **rec_resumed.losses()}
    steps = sorted(rec_whole.losses())
    torch.testing.assert_close(torch.tensor([curve[s] for s in steps]),
                               torch.tensor([rec_whole.losses()[s] for s in steps]),
                               rtol=1e-4, atol=1e-6)
    assert resumed.final_dir is not None and whole.final_dir is not None
    assert_same_parameters(resumed.final_dir, whole.final_dir)


def test_chat_with_lora_on_two_ranks_matches_one(tmp_path: Path, models_dir: Path) -> None:
    """A causal LM's LoRA adapters (the base frozen) under DDP; rank 0 samples answers."""
    conversations = [[{"role": "user", "content": "how is the weather today ?"},
                      {"role": "assistant", "content": "it is sunny"}],
                     [{"role": "user", "content": "tell me a joke please"},
                      {"role": "assistant", "content": "why did the chicken cross the road ?"}]]
    files = (write_jsonl(tmp_path / "train.jsonl",
                         [{"messages": conversations[i % 2]} for i in range(12)]),
             write_jsonl(tmp_path / "valid.jsonl",
                         [{"messages": conversations[i % 2]} for i in range(4)]))
    # no dropout: its masks would fall on other examples when the batch is split
    spec = make_spec("tiny-llama", task="chat", n_epochs=1, batch_size=4,
                     lora={"r": 4, "dropout": 0.0})
    one, rec1 = train(spec, files, tmp_path / "one", models_dir)
    two, rec2 = train(with_gpus(spec, 2), files, tmp_path / "two", models_dir)
    assert two.status == one.status == "completed" and two.step == one.step == 3
    steps = sorted(rec1.losses())
    torch.testing.assert_close(torch.tensor([rec2.losses()[s] for s in steps]),
                               torch.tensor([rec1.losses()[s] for s in steps]),
                               rtol=1e-4, atol=1e-6)
    assert any(e.startswith("Sample at step 3") for e in rec2.events)
    assert two.final_dir is not None and one.final_dir is not None
    assert_same_parameters(two.final_dir, one.final_dir)  # the merged models


def test_optimizer_state_names_round_trip() -> None:
    """FSDP's named optimizer state and the single-process numbered one convert both ways."""
    from sage_core.optim import SAGE
    from sage_core.training.distributed import _named, _numbered

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    optimizer = SAGE([{"params": [model[1].weight, model[0].bias]},
                      {"params": [model[0].weight, model[1].bias], "use_sage": False}])
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    numbered = optimizer.state_dict()
    named = _named(numbered, optimizer, model)
    assert named["param_groups"][0]["params"] == ["1.weight", "0.bias"]
    assert torch.equal(named["state"]["0.weight"]["exp_avg"], optimizer.state[model[0].weight]
                       ["exp_avg"])
    again = _numbered(named)
    assert again["param_groups"] == numbered["param_groups"]
    assert again["state"].keys() == numbered["state"].keys()


def test_resources_are_checked_before_any_rank_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    from sage_core.errors import TrainingError
    from sage_core.training.distributed import check_resources

    spec = with_gpus(make_spec(batch_size=8), 4)
    with pytest.raises(InvalidSpecError, match="names one GPU"):
        check_resources(spec, "cuda:1")
    lora = spec.model_copy(update={"resources": Resources(gpus=2, strategy="fsdp")})
    lora = lora.model_copy(update={"hyperparameters": make_spec(
        "tiny-llama", task="chat", lora={"r": 4}).hyperparameters})
    with pytest.raises(InvalidSpecError, match="lora"):
        check_resources(lora, "cpu")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(TrainingError, match="asks for 4 GPUs but 2 are visible"):
        check_resources(spec, "cuda")
    check_resources(spec, "cpu")  # processes, as many as asked


def test_a_failed_launch_reports_its_cause_not_the_echoes() -> None:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from sage_core.errors import TrainingError
    from sage_core.training.distributed import _launch_failure

    def failed(**exits: int) -> ChildFailedError:
        return ChildFailedError("_rank_main", {
            int(rank.removeprefix("r")): ProcessFailure(int(rank[1:]), 100, code, "<N/A>")
            for rank, code in exits.items()})

    echo = RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:6536")
    killed = _launch_failure(failed(r0=1, r1=-9), echo, 2)
    assert isinstance(killed, TrainingError) and killed.code == "worker_crashed"
    assert str(killed) == ("rank 1 of 2 was killed by signal SIGKILL; "
                           "it may have run out of memory")
    nan = TrainingError("non-finite loss", code="nan_loss")
    assert _launch_failure(failed(r0=1), nan, 2) is nan
    bug = ValueError("a bug on rank 0")
    assert _launch_failure(failed(r0=1), bug, 2) is bug
    other = _launch_failure(failed(r0=1, r1=1), echo, 2)
    assert str(other).startswith("rank 1 of 2 failed (exit code 1)")


def test_errors_before_training_keep_their_kind(data: tuple[Path, Path], tmp_path: Path,
                                                train_models_dir: Path) -> None:
    from sage_core.errors import UnknownModelError

    spec = with_gpus(make_spec("no-such-model"), 2)
    with pytest.raises(UnknownModelError):
        train(spec, data, tmp_path / "out", train_models_dir)
