"""The final sensitivity report: I = |theta * grad L| per module, its invariants, and the
loop writing it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from training_data import make_spec

from sage_core.training import run_training
from sage_core.training.sensitivity import (
    HIST_EDGES,
    THRESHOLDS,
    accumulate_gradients,
    sensitivity_report,
)


def _mse(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return ((model(x) - y) ** 2).sum(-1)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 6)
        self.layers = nn.ModuleList([nn.Sequential(nn.Linear(6, 6), nn.Tanh(),
                                                   nn.Dropout(0.5)) for _ in range(2)])
        self.head = nn.Linear(6, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for layer in self.layers:
            h = layer(h)
        return self.head(h)


def _batches(n: int = 3, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(5, 4, generator=g), torch.randn(5, 2, generator=g))
            for _ in range(n)]


def _check_entry(entry: dict[str, Any]) -> None:
    hist = entry["histogram_log10"]
    assert hist["edges"] == list(HIST_EDGES)
    assert len(hist["counts"]) == len(HIST_EDGES) - 1
    assert (entry["zero_count"] + entry["nonfinite_count"] + hist["underflow"]
            + hist["overflow"] + sum(hist["counts"])) == entry["count"]
    assert entry["fraction_zero"] == entry["zero_count"] / entry["count"]
    if entry["zero_count"] + entry["nonfinite_count"] == entry["count"]:  # nothing touched
        assert all(v is None for v in entry["fraction_below"].values())
        assert entry["median"] is None
        return
    fractions = [entry["fraction_below"][f"{t:g}"] for t in THRESHOLDS]
    assert all(0.0 <= f <= 1.0 for f in fractions)
    assert fractions == sorted(fractions)
    qs = [entry[k] for k in ("p10", "p25", "median", "p75", "p90", "p99")]
    assert qs == sorted(qs) and qs[0] > 0.0  # of I > 0
    assert entry["mean"] >= 0.0


def test_linear_matches_hand_computed_sensitivity() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    batches = _batches(2, seed=1)
    batches = [(x[:, :3], y) for x, y in batches]
    # Hand-computed: L = mean over the 10 examples of sum_j (W x + b - y)_j^2.
    W, b = model.weight.detach(), model.bias.detach()
    x = torch.cat([x for x, _ in batches])
    y = torch.cat([y for _, y in batches])
    r = x @ W.T + b - y  # [10, 2]
    grad_w = 2 * r.T @ x / len(x)
    grad_b = 2 * r.sum(0) / len(x)
    expected = torch.cat([(W * grad_w).abs().reshape(-1), (b * grad_b).abs()])

    assert accumulate_gradients(model, iter(batches), _mse) == 10
    assert torch.allclose(model.weight.grad, grad_w, atol=1e-6)
    model.zero_grad(set_to_none=True)

    report = sensitivity_report(model, iter(batches), _mse)
    overall = report["overall"]
    assert overall["count"] == 8
    assert overall["mean"] == pytest.approx(float(expected.mean()), rel=1e-5)
    assert overall["median"] == pytest.approx(float(torch.quantile(expected, 0.5)), rel=1e-5)
    assert overall["p90"] == pytest.approx(float(torch.quantile(expected, 0.9)), rel=1e-5)
    for t in THRESHOLDS:
        assert overall["fraction_below"][f"{t:g}"] == float((expected < t).float().mean())
    assert set(report["modules"]) == {"(root)"}
    assert model.weight.grad is None and model.bias.grad is None  # cleared after
    _check_entry(overall)


def test_structure_invariants_and_zeroed_tensor() -> None:
    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():
        model.layers[1][0].weight.zero_()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters())
    _mse(model, _batches(1)[0]).sum().backward()
    optimizer.step()
    state_before = {k: v.clone() for k, v in optimizer.state[model.head.weight].items()}
    with torch.no_grad():
        model.layers[1][0].weight.zero_()

    report = sensitivity_report(model, iter(_batches(20)), _mse, max_batches=4)
    json.dumps(report)  # serialisable
    assert report["examples"] == 20  # 4 batches of 5
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())
    for k, v in optimizer.state[model.head.weight].items():
        assert torch.equal(v, state_before[k])

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert report["overall"]["count"] == trainable
    assert set(report["blocks"]) == {"layers.0", "layers.1"}
    assert set(report["modules"]) == {"embed", "layers.0.0", "layers.1.0", "head"}
    assert sum(m["count"] for m in report["modules"].values()) == trainable
    assert report["blocks"]["layers.1"]["count"] == 6 * 6 + 6
    for entry in [report["overall"], *report["blocks"].values(), *report["modules"].values()]:
        _check_entry(entry)

    zeroed = report["modules"]["layers.1.0"]
    # The zeroed weight has I == 0 everywhere; its bias may not.
    assert zeroed["zero_count"] >= 36
    with torch.no_grad():
        model.layers[1][0].bias.zero_()
    report = sensitivity_report(model, iter(_batches(4)), _mse)
    zeroed = report["modules"]["layers.1.0"]
    assert zeroed["zero_count"] == zeroed["count"] == 42 and zeroed["fraction_zero"] == 1.0
    # never-touched parameters are not counted as redundant: no fraction, no quantile
    assert all(v is None for v in zeroed["fraction_below"].values())
    assert zeroed["mean"] == 0.0 and zeroed["p99"] is None
    _check_entry(zeroed)


def test_large_group_quantiles_are_sampled(monkeypatch: pytest.MonkeyPatch) -> None:
    from sage_core.training import sensitivity

    monkeypatch.setattr(sensitivity, "SAMPLE_CAP", 50)
    torch.manual_seed(0)
    model = Tiny()
    first = sensitivity_report(model, iter(_batches(2)), _mse)
    second = sensitivity_report(model, iter(_batches(2)), _mse)
    assert first["overall"]["sampled"] and not first["modules"]["head"]["sampled"]
    assert first == second  # fixed seed
    _check_entry(first["overall"])


def test_run_with_validation_writes_sensitivity(spam_files: tuple[Path, Path], tmp_path: Path,
                                                train_models_dir: Path) -> None:
    train_file, valid_file = spam_files
    out = tmp_path / "out"
    result = run_training(make_spec(n_epochs=1), train_file, out, validation_file=valid_file,
                          models_dir=train_models_dir, device="cpu")
    assert result.sensitivity is not None
    assert result.final_dir is not None
    on_disk = json.loads((result.final_dir / "sensitivity.json").read_text())
    assert on_disk == json.loads(json.dumps(result.sensitivity))
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(result.final_dir)
    assert result.sensitivity["overall"]["count"] == sum(p.numel() for p in model.parameters())
    assert "bert.encoder.layer.0" in result.sensitivity["blocks"]
    assert "bert.encoder.layer.0.attention.self.query" in result.sensitivity["modules"]
    assert result.sensitivity["examples"] == 32
    _check_entry(result.sensitivity["overall"])


def test_run_without_validation_has_no_sensitivity(spam_files: tuple[Path, Path],
                                                   tmp_path: Path,
                                                   train_models_dir: Path) -> None:
    train_file, _ = spam_files
    result = run_training(make_spec(n_epochs=1), train_file, tmp_path / "out",
                          models_dir=train_models_dir, device="cpu")
    assert result.sensitivity is None
    assert result.final_dir is not None
    assert not (result.final_dir / "sensitivity.json").exists()


class Embedder(nn.Module):
    """An embedding of 10 tokens of which the batches use only 0 to 3."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x).mean(1))


def test_untouched_embedding_rows_are_zero_not_redundant() -> None:
    torch.manual_seed(0)
    model = Embedder()
    generator = torch.Generator().manual_seed(3)
    batches = [(torch.randint(0, 4, (5, 3), generator=generator), torch.randn(5, 2))
               for _ in range(2)]
    report = sensitivity_report(model, iter(batches), _mse)
    embed = report["modules"]["embed"]
    assert embed["count"] == 40 and embed["zero_count"] == 6 * 4  # rows 4..9
    assert embed["fraction_zero"] == 24 / 40
    # the fractions are over the 16 touched elements only
    weight = model.embed.weight.detach()
    accumulate_gradients(model, iter(batches), _mse)
    assert model.embed.weight.grad is not None
    touched = (weight[:4] * model.embed.weight.grad[:4]).abs().reshape(-1)
    assert bool((touched > 0).all())
    for t in THRESHOLDS:
        assert embed["fraction_below"][f"{t:g}"] == float((touched < t).float().mean())
    assert embed["median"] == pytest.approx(float(touched.median()), rel=0.5)
    zero = report["zero"]
    assert zero["count"] == 24 and zero["modules"] == {"embed": 24}
    assert zero["fraction"] == 24 / report["overall"]["count"]
    assert "never" in zero["explanation"]
    _check_entry(embed)
    _check_entry(report["overall"])
