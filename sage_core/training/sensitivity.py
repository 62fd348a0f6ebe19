"""Parameter sensitivity of a trained model: I = |theta * dL/dtheta| elementwise (SAGE.md).

Measured once at the end of a run (SAGE or not, so runs can be compared), on a few
validation batches. The gradient is that of the mean per-example loss over at most
`max_batches` batches (each example weighs the same), computed in eval mode (no dropout)
under `torch.enable_grad()`. Gradients are cleared before and after; the optimizer is never
touched. A trainable parameter that gets no gradient counts as gradient 0, so I == 0.

The report (JSON-serialisable) has an "overall" entry, one per repeated block ("blocks":
each child of an nn.ModuleList, e.g. "bert.encoder.layer.3") and one per module owning
parameters ("modules": e.g. "bert.encoder.layer.3.attention.self.query", its weight and
bias together). A tensor shared by several modules counts once, for its first owner. Each
entry holds:

- count, zero_count (I == 0 exactly), fraction_zero (zero_count / count), nonfinite_count,
  mean (of all finite elements, zeros included);
- median and quantiles p10 p25 p75 p90 p99 of the elements with I > 0. For a group of more
  than SAMPLE_CAP elements they are estimated on a fixed-seed random subsample of about
  SAMPLE_CAP elements, drawn from each tensor in proportion to its size ("sampled": true),
  so the report is reproducible and cheap; everything else (counts, mean, histogram,
  fractions) is exact, over every element;
- histogram of log10(I) over the fixed edges HIST_EDGES (-12 to 0 by 0.5): "counts" per
  bin [edge_i, edge_i+1), "underflow" (0 < I < 1e-12), "overflow" (I >= 1); I == 0 is
  zero_count, outside the histogram. zero_count + nonfinite_count + underflow + overflow +
  sum(counts) == count;
- fraction_below: for each t in THRESHOLDS (1e-8, 1e-7, 1e-6), the fraction of the
  elements with I > 0 (finite) that have I < t: the paper's measure of redundant
  parameters. Elements with I == 0 exactly are left out: their gradient is exactly 0
  because the measured batches never reach them (the embedding rows of tokens that never
  occur, above all), which says nothing of their worth; they are counted apart, in
  zero_count and fraction_zero, and the report's "zero" entry explains them (ZERO_NOTE)
  and names the modules holding most of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from itertools import islice
from typing import Any

import torch
from torch import nn

__all__ = ["HIST_EDGES", "QUANTILES", "SAMPLE_CAP", "THRESHOLDS", "sensitivity_report"]

THRESHOLDS: tuple[float, ...] = (1e-8, 1e-7, 1e-6)
QUANTILES: tuple[tuple[str, float], ...] = (
    ("p10", 0.10), ("p25", 0.25), ("median", 0.50), ("p75", 0.75), ("p90", 0.90),
    ("p99", 0.99))
HIST_EDGES: tuple[float, ...] = tuple(-12.0 + 0.5 * i for i in range(25))  # -12 .. 0
# Sorting the quantile samples was most of the statistics' time (MiniLM's 22.7M elements, 8
# sampled groups: 1.2 of 1.8 s at 1,000,000); 200,000 samples still give p99 within a
# fraction of a percent of its rank.
SAMPLE_CAP = 200_000
ZERO_NOTE = ("I = 0 exactly: the measured batches never reach these parameters (e.g. the "
             "embedding rows of tokens that never occur), so their gradient is 0; they are "
             "left out of fraction_below and the quantiles, not redundant")
ZERO_MODULES = 10  # the modules with most zeros, named in the "zero" entry
SAMPLE_SEED = 0
DEFAULT_MAX_BATCHES = 8

LossFn = Callable[[nn.Module, Any], torch.Tensor]


class _TensorStats:
    """Counts of one tensor's values, computed once and added to each of its groups."""

    def __init__(self, values: torch.Tensor) -> None:
        finite = torch.isfinite(values)
        self.nonfinite = int(values.numel() - finite.sum())
        values_f = values[finite] if self.nonfinite else values
        self.sum = float(values_f.double().sum())
        zero = values_f == 0
        self.zeros = int(zero.sum())
        positive = values_f[~zero]
        edges = torch.tensor(HIST_EDGES, dtype=torch.float32)
        # bucket 0: below -12 (underflow); 1..24: the bins; 25: >= 0 (overflow)
        buckets = torch.bucketize(torch.log10(positive), edges, right=True)
        self.bins = torch.bincount(buckets, minlength=len(HIST_EDGES) + 1)
        # 0 < I < t: zeros are counted apart
        self.below = [int((positive < t).sum()) for t in THRESHOLDS]


class _Group:
    """Streaming statistics of one group of sensitivity values."""

    def __init__(self, total: int) -> None:
        self.total = total  # elements the group will receive, for the sampling rate
        self.count = 0
        self.zeros = 0
        self.nonfinite = 0
        self.sum = 0.0
        self.bins = torch.zeros(len(HIST_EDGES) + 1, dtype=torch.long)
        self.below = [0] * len(THRESHOLDS)
        self.samples: list[torch.Tensor] = []

    @property
    def sampled(self) -> bool:
        return self.total > SAMPLE_CAP

    def add(self, values: torch.Tensor, stats: _TensorStats,
            generator: torch.Generator) -> None:
        """Add one tensor's values (flat, fp32, CPU) with their precomputed `stats`."""
        n = values.numel()
        if n == 0:
            return
        self.count += n
        self.nonfinite += stats.nonfinite
        self.sum += stats.sum
        self.zeros += stats.zeros
        self.bins += stats.bins
        self.below = [a + b for a, b in zip(self.below, stats.below, strict=True)]
        if self.sampled:
            k = max(1, round(n * SAMPLE_CAP / self.total))
            index = torch.randint(0, n, (min(k, n),), generator=generator)
            self.samples.append(values[index])
        else:
            self.samples.append(values)

    def report(self) -> dict[str, Any]:
        n = self.count
        out: dict[str, Any] = {
            "count": n, "zero_count": self.zeros, "nonfinite_count": self.nonfinite,
            "fraction_zero": self.zeros / n if n else None,
            "mean": self.sum / max(1, n - self.nonfinite) if n else None,
        }
        sample = torch.cat(self.samples) if self.samples else torch.zeros(0)
        sample = sample[torch.isfinite(sample) & (sample > 0)]
        if sample.numel():
            out.update({name: v for (name, _), v in
                        zip(QUANTILES, _quantiles(sample, [q for _, q in QUANTILES]),
                            strict=True)})
        else:
            out.update({name: None for name, _ in QUANTILES})
        out["sampled"] = self.sampled
        bins = self.bins.tolist()
        out["histogram_log10"] = {
            "edges": list(HIST_EDGES), "counts": bins[1:-1],
            "underflow": bins[0], "overflow": bins[-1]}
        touched = n - self.zeros - self.nonfinite
        out["fraction_below"] = {
            f"{t:g}": (b / touched if touched else None)
            for t, b in zip(THRESHOLDS, self.below, strict=True)}
        return out


def _quantiles(values: torch.Tensor, qs: list[float]) -> list[float]:
    """torch.quantile's linear interpolation, from one fp32 sort (torch.quantile sorts in
    the input dtype and refuses inputs of over 16M elements)."""
    ordered = values.sort().values.double()
    last = ordered.numel() - 1
    out = []
    for q in qs:
        pos = q * last
        lo, hi = math.floor(pos), math.ceil(pos)
        out.append(float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)))
    return out


def _owners(model: nn.Module) -> list[tuple[str, str | None, nn.Parameter]]:
    """(owning module's qualified name, enclosing block's name or None, parameter) for each
    trainable tensor, once each (first owner wins)."""
    blocks: dict[int, str] = {}
    for list_name, module in model.named_modules():
        if isinstance(module, nn.ModuleList):
            for child_name, child in module.named_children():
                block = f"{list_name}.{child_name}" if list_name else child_name
                for sub in child.modules():
                    blocks.setdefault(id(sub), block)
    seen: set[int] = set()
    owners = []
    for module_name, module in model.named_modules():
        for param in module.parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            owners.append((module_name or "(root)", blocks.get(id(module)), param))
    return owners


def accumulate_gradients(model: nn.Module, batches: Iterable[Any], loss_fn: LossFn,
                         max_batches: int = DEFAULT_MAX_BATCHES) -> int:
    """Leave in each parameter's .grad the gradient of the mean per-example loss over at
    most `max_batches` batches, in eval mode; return the number of examples used.
    `loss_fn(model, batch)` returns the per-example losses (any shape; each element is an
    example)."""
    was_training = model.training
    model.zero_grad(set_to_none=True)
    model.eval()
    examples = 0
    try:
        with torch.enable_grad():
            for batch in islice(batches, max_batches):
                losses = loss_fn(model, batch)
                examples += losses.numel()
                losses.float().sum().backward()
        if examples:
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.div_(examples)
    finally:
        model.train(was_training)
    return examples


@torch.no_grad()
def _report_from_grads(model: nn.Module) -> dict[str, Any]:
    owners = _owners(model)
    totals: dict[tuple[str, str], int] = {}
    for module_name, block, p in owners:
        for key in (("modules", module_name), ("blocks", block or ""), ("overall", "")):
            if key[0] == "blocks" and block is None:
                continue
            totals[key] = totals.get(key, 0) + p.numel()
    groups = {key: _Group(total) for key, total in totals.items()}
    generator = torch.Generator().manual_seed(SAMPLE_SEED)
    for module_name, block, p in owners:
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        values = (p.detach().float() * grad.float()).abs().reshape(-1).cpu()
        stats = _TensorStats(values)
        groups[("modules", module_name)].add(values, stats, generator)
        if block is not None:
            groups[("blocks", block)].add(values, stats, generator)
        groups[("overall", "")].add(values, stats, generator)
    overall = groups.get(("overall", ""))
    by_module = sorted(((g.zeros, name) for (kind, name), g in groups.items()
                        if kind == "modules" and g.zeros), reverse=True)
    report: dict[str, Any] = {
        "thresholds": list(THRESHOLDS),
        "zero": {"count": overall.zeros if overall else 0,
                 "fraction": overall.zeros / overall.count if overall and overall.count
                 else None,
                 "explanation": ZERO_NOTE,
                 "modules": {name: zeros for zeros, name in by_module[:ZERO_MODULES]}},
        "overall": groups[("overall", "")].report() if ("overall", "") in groups
        else _Group(0).report(),
        "blocks": {name: g.report() for (kind, name), g in groups.items() if kind == "blocks"},
        "modules": {name: g.report() for (kind, name), g in groups.items()
                    if kind == "modules"},
    }
    return report


def sensitivity_report(model: nn.Module, batches: Iterable[Any], loss_fn: LossFn,
                       max_batches: int = DEFAULT_MAX_BATCHES) -> dict[str, Any]:
    """The sensitivity report of `model` (see the module docstring) on at most
    `max_batches` of `batches`. `loss_fn(model, batch)` runs the forward pass (with any
    autocast the caller wants) and returns per-example losses. The model's gradients are
    cleared before and after; its train/eval mode is restored."""
    if max_batches < 1:
        raise ValueError(f"Invalid max_batches: {max_batches}")
    try:
        examples = accumulate_gradients(model, batches, loss_fn, max_batches)
        report = _report_from_grads(model)
    finally:
        model.zero_grad(set_to_none=True)
    report["examples"] = examples
    report["max_batches"] = max_batches
    report["sample_cap"] = SAMPLE_CAP
    if not examples:
        report["warning"] = "no validation examples: every gradient is 0"
    return _json_safe(report)


def _json_safe(value: Any) -> Any:
    """NaN and infinities (not valid JSON) become None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
