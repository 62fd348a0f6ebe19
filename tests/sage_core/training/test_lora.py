"""LoRA through peft: only the adapters train, the merged folder is base + delta and loads
without peft, the adapter folder loads with peft, and a job resumes from it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from pydantic import ValidationError
from torch import nn
from transformers import AutoModelForCausalLM

from sage_core.errors import InvalidSpecError
from sage_core.names import ADAPTER_DIR
from sage_core.optim import make_optimizer, sage_param_groups
from sage_core.schemas import LoraSettings
from sage_core.testing import build_tiny_gpt2, build_tiny_llama
from sage_core.training.lora import apply_lora, load_lora, save_lora

ADAPTER = re.compile(r".*\.lora_[AB]\.default\.weight")
FAMILIES = ("llama", "gpt2")


@pytest.fixture(scope="module", params=FAMILIES)
def base_path(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    build = {"llama": build_tiny_llama, "gpt2": build_tiny_gpt2}[request.param]
    return str(build(tmp_path_factory.mktemp("tiny") / request.param))


def _base(path: str) -> nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def _lora(path: str, **settings: object) -> PeftModel:
    torch.manual_seed(0)
    return apply_lora(_base(path), LoraSettings(**{"r": 4, "dropout": 0.0, **settings}))


def _ids(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 10), generator=torch.Generator().manual_seed(1))


def _train(model: nn.Module, steps: int, weight_decay: float = 0.01) -> None:
    optimizer = make_optimizer(model, "sage", lr=1e-2, weight_decay=weight_decay)
    ids = _ids(model.config.vocab_size)
    model.train()
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()


def _logits(model: nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=_ids(model.config.vocab_size)).logits


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_only_the_adapters_train_and_the_base_never_moves(base_path: str):
    model = _lora(base_path)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(ADAPTER.fullmatch(name) for name in trainable)
    before = _snapshot(model)
    _train(model, steps=4)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) != (name in trainable), name


def test_the_wrapped_model_starts_as_the_base(base_path: str):
    base_logits = _logits(_base(base_path))
    model = _lora(base_path)
    assert torch.allclose(_logits(model), base_logits, atol=1e-6)
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.abs().max() > 0, name  # both factors non-zero: SAGE has something to see


def test_targets_all_linear_but_the_head_or_the_listed_names(base_path: str):
    from peft.tuners.lora import LoraLayer

    def wrapped(model: nn.Module) -> set[str]:
        return {name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                if isinstance(m, LoraLayer)}

    everything = wrapped(_lora(base_path))
    assert everything in ({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                           "down_proj"}, {"c_attn", "c_proj", "c_fc"})
    listed = ["q_proj", "v_proj"] if "q_proj" in everything else ["c_attn"]
    assert wrapped(_lora(base_path, target_modules=listed)) == set(listed)


def test_an_odd_rank_is_refused_with_the_job():
    # the orthogonal init needs an even rank: refused when the job is submitted
    with pytest.raises(ValidationError, match="r must be even, got 3"):
        LoraSettings(r=3)


def test_a_target_that_is_not_linear_is_refused(base_path: str):
    embedding = "embed_tokens" if base_path.endswith("llama") else "wte"
    with pytest.raises(InvalidSpecError, match=f"not linear: {embedding}") as caught:
        _lora(base_path, target_modules=["lm_head", embedding])
    assert caught.value.param == "hyperparameters.lora.target_modules"


def test_the_merged_folder_is_base_plus_delta_and_loads_without_peft(
    base_path: str, tmp_path: Path
):
    model = _lora(base_path)
    _train(model, steps=3)
    before = _snapshot(model)
    save_lora(model, tmp_path)
    after = _snapshot(model)
    assert all(torch.equal(after[name], before[name]) for name in before), "save changed it"
    assert {"config.json", "model.safetensors", "generation_config.json"} <= {
        p.name for p in tmp_path.iterdir()}
    assert "peft" not in json.loads((tmp_path / "config.json").read_text()).get(
        "architectures", [""])[0].lower()

    merged = _base(str(tmp_path))
    assert not isinstance(merged, PeftModel)
    def tied(m: nn.Module) -> bool:
        return m.get_output_embeddings().weight is m.get_input_embeddings().weight  # type: ignore[operator]

    assert tied(merged) == tied(_base(base_path)) == base_path.endswith("gpt2")
    assert torch.allclose(_logits(merged), _logits(model), atol=1e-5)
    base = dict(_base(base_path).named_parameters())
    wrapped = dict(model.get_base_model().named_modules())
    changed = 0
    for name, p in merged.named_parameters():
        layer = wrapped.get(name.rsplit(".", 1)[0])
        if name.endswith(".weight") and hasattr(layer, "get_delta_weight"):
            expected = base[name] + layer.get_delta_weight("default")  # type: ignore[union-attr]
            assert torch.equal(p, expected), name
            changed += 1
        else:  # embeddings, norms, biases, the head: the base's, bit for bit
            assert torch.equal(p, base[name]), name
    assert changed == len([n for n in before if ".lora_A." in n])


def test_the_adapter_folder_loads_with_peft(base_path: str, tmp_path: Path):
    model = _lora(base_path)
    _train(model, steps=3)
    save_lora(model, tmp_path)
    adapter = tmp_path / ADAPTER_DIR
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {
        p.name for p in adapter.iterdir()}
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == base_path
    assert config["init_lora_weights"] == "orthogonal"
    loaded = PeftModel.from_pretrained(_base(base_path), adapter)
    assert torch.allclose(_logits(loaded), _logits(model), atol=1e-6)


def test_load_lora_resumes_trainable_with_the_same_weights(base_path: str, tmp_path: Path):
    model = _lora(base_path)
    _train(model, steps=3)
    save_lora(model, tmp_path)
    resumed = load_lora(base_path, tmp_path)
    assert isinstance(resumed, PeftModel)
    saved, loaded = _snapshot(model), _snapshot(resumed)
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[name], loaded[name]) for name in saved)
    assert all(p.dtype == torch.float32 for p in resumed.parameters())
    assert ({n for n, p in resumed.named_parameters() if p.requires_grad}
            == {n for n, p in model.named_parameters() if p.requires_grad})
    _train(resumed, steps=3)
    assert any(not torch.equal(p, loaded[n]) for n, p in resumed.named_parameters()
               if p.requires_grad)


def test_exactly_the_adapters_get_sage_and_nothing_frozen_is_grouped(base_path: str):
    model = _lora(base_path)
    groups = sage_param_groups(model, weight_decay=0.01)
    names = {id(p): name for name, p in model.named_parameters()}
    grouped = [(names[id(p)], g["use_sage"]) for g in groups for p in g["params"]]
    assert all(p.requires_grad for g in groups for p in g["params"])
    assert {name for name, sage in grouped if sage} == {
        name for name, p in model.named_parameters() if p.requires_grad}
    assert all(ADAPTER.fullmatch(name) for name, _ in grouped)


def _max_sensitivity(model: nn.Module) -> float:
    ids = _ids(model.config.vocab_size)
    model(input_ids=ids, labels=ids).loss.backward()
    return max((p * p.grad).abs().max().item() for p in model.parameters() if p.requires_grad)


def test_sage_sees_zero_sensitivity_with_peft_default_init_and_not_with_ours(base_path: str):
    from peft import LoraConfig, get_peft_model

    default = get_peft_model(_base(base_path), LoraConfig(  # type: ignore[arg-type]
        task_type="CAUSAL_LM", r=4, target_modules="all-linear", lora_dropout=0.0))
    assert _max_sensitivity(default) == 0.0
    start = _snapshot(default)
    _train(default, steps=3, weight_decay=0.0)  # SAGE's decoupled decay would shrink A
    assert all(torch.equal(p, start[n]) for n, p in default.named_parameters()), "stuck"
    assert _max_sensitivity(_lora(base_path)) > 0.0
