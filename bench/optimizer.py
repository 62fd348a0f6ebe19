"""How much slower is one SAGE step than one fused AdamW step, on a BERT's tensors?

    .venv/bin/python bench/optimizer.py                  # CPU
    .venv/bin/python bench/optimizer.py --device cuda    # GPU, when there is one
    .venv/bin/python bench/optimizer.py --fresh-cache    # also time a cold compilation
    .venv/bin/python bench/optimizer.py --threads 1 --clock cpu --no-foreach   # loaded machine

The tensors are those of a 6-layer, 384-wide BERT for sequence classification (vocab
30522, 512 positions, intermediate 1536, pooler, 2-class head): 105 tensors, 22.7M
parameters, with random gradients. Two layouts: every tensor under SAGE, and the
realistic one from `sage_param_groups` (SAGE on the blocks' linear layers, weight decay
0.01 except biases and norms), each against torch.optim.AdamW(fused=True) on the same
groups. The optimizers are stepped in turn, one step each per round, so that load from
other processes hits them alike; the figures are medians over rounds. Every step gets a
new lr, as from a scheduler, to show the compiled kernels are never rebuilt.

Before each step both optimizers are handed new gradient tensors (same values, untimed),
as autograd does after the training loop's zero_grad(set_to_none=True). SAGE runs with
its default settings: on CPU its automatic choice is the compiled kernels for these
groups (`sage_core.optim.sage._choose_implementation`); the uncompiled foreach SAGE
(`foreach=True`) is timed beside it unless --no-foreach.

SAGE.md's floor for the ratio is 9/7 = 1.29 (memory passes); a faster-than-floor figure
means torch's fused AdamW kernel is itself not at its memory bound on this machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="parameter dtype; SAGE's state is fp32 either way")
    parser.add_argument("--rounds", type=int, default=11, help="timed steps per optimizer")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="wall: elapsed time (default); cpu: this process's CPU time, "
                             "which other processes' load does not inflate (use with "
                             "--threads 1: with more, idle OpenMP threads spin and count)")
    parser.add_argument("--no-foreach", action="store_true",
                        help="skip the (slow) uncompiled foreach SAGE, e.g. on a loaded machine")
    parser.add_argument("--fresh-cache", action="store_true",
                        help="compile into an empty inductor cache (a cold start)")
    return parser.parse_args()


def bert_model(device: str, dtype: Any) -> Any:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
        intermediate_size=1536, max_position_embeddings=512, num_labels=2,
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).to(device=device, dtype=dtype)
    gen = torch.Generator(device=device).manual_seed(1)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen, device=device, dtype=dtype) * 1e-2
    return model


CLOCK: Callable[[], float] = time.perf_counter


def timed(
    step: Callable[[], Any], sync: Callable[[], None], clock: Callable[[], float] | None = None
) -> float:
    clock = clock or CLOCK
    sync()
    start = clock()
    step()
    sync()
    return clock() - start


def compiled_graphs() -> int:
    import torch

    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def run_layout(
    name: str, groups: list[dict[str, Any]], args: argparse.Namespace, sync: Callable[[], None]
) -> dict[str, float]:
    """Median step seconds of each optimizer on `groups`; also the compile seconds."""
    import torch

    from sage_core.optim import SAGE

    def own(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # an optimizer fills its defaults into the group dicts it is given: never share them
        return [dict(g) for g in groups]

    optimizers: dict[str, torch.optim.Optimizer] = {
        "adamw": torch.optim.AdamW(own(groups), lr=1e-5, eps=1e-6, fused=True),
        "default": SAGE(own(groups), lr=1e-5),
        "foreach": SAGE(own(groups), lr=1e-5, foreach=True),
    }
    if args.no_foreach:
        del optimizers["foreach"]
    params = [p for g in groups for p in g["params"]]
    grad_values = [p.grad.clone() for p in params]

    def with_new_grads() -> None:
        for p, g in zip(params, grad_values, strict=True):
            p.grad = g.clone()

    results: dict[str, float] = {}
    # the first default step compiles the kernels it needs; the second one is warm
    # (wall clock whatever --clock says: inductor compiles in worker processes)
    first = timed(optimizers["default"].step, sync, clock=time.perf_counter)
    second = timed(optimizers["default"].step, sync, clock=time.perf_counter)
    results["compile"] = first - second
    for key in ("adamw", "foreach"):
        for _ in range(2 if key in optimizers else 0):
            optimizers[key].step()
    graphs_before = compiled_graphs()
    times: dict[str, list[float]] = {key: [] for key in optimizers}
    for round_index in range(args.rounds):
        for key, optimizer in optimizers.items():
            for group in optimizer.param_groups:
                group["lr"] = 1e-5 * (1 + round_index % 7)
            with_new_grads()
            times[key].append(timed(optimizer.step, sync))
    results.update({key: statistics.median(values) for key, values in times.items()})
    results.update({f"{key}_min": min(values) for key, values in times.items()})
    results["recompiles"] = compiled_graphs() - graphs_before
    print(f"  [{name}] done: {len(groups)} groups, "
          f"{sum(1 for g in groups if g.get('use_sage', True))} under SAGE", flush=True)
    return results


def main() -> None:
    args = parse_args()
    cache_dir = None
    if args.fresh_cache:
        cache_dir = tempfile.mkdtemp(prefix="sage-inductor-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
    import torch

    from sage_core.optim import sage_param_groups

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        if args.device != "cpu":
            sys.exit("--clock cpu: only for --device cpu")
        global CLOCK
        CLOCK = time.process_time
    dtype = getattr(torch, args.dtype)
    model = bert_model(args.device, dtype)
    params = [p for p in model.parameters()]
    sync: Callable[[], None] = (
        torch.cuda.synchronize if args.device.startswith("cuda") else lambda: None
    )
    device_name = (
        torch.cuda.get_device_name(args.device) if args.device.startswith("cuda")
        else f"cpu, {torch.get_num_threads()} threads"
    )
    print(
        f"SAGE step vs torch.optim.AdamW(fused=True): BERT 6x384 tensors "
        f"({len(params)} tensors, {sum(p.numel() for p in params) / 1e6:.2f}M params, "
        f"{args.dtype}) on {device_name}; torch {torch.__version__}; "
        f"median of {args.rounds} interleaved steps, {args.clock} clock"
        + (f"; fresh inductor cache {cache_dir}" if cache_dir else "")
        + "; load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()),
        flush=True,
    )
    layouts = {
        "all tensors SAGE": [{"params": params, "weight_decay": 0.01}],
        "blocks scope": sage_param_groups(model, weight_decay=0.01, scope="blocks"),
    }
    results = {name: run_layout(name, groups, args, sync) for name, groups in layouts.items()}

    names = list(results)
    width = 26
    print()
    print(f"{'':28}" + "".join(f"{n:>{width}}" for n in names))

    def row(label: str, cell: Callable[[dict[str, float]], str]) -> None:
        print(f"{label:28}" + "".join(f"{cell(results[n]):>{width}}" for n in names))

    row("compile (first step - warm)", lambda r: f"{r['compile']:.1f} s")
    keys = ["default"] + ([] if args.no_foreach else ["foreach"])
    labels = {"default": "SAGE default", "foreach": "SAGE foreach=True"}
    for prefix, suffix in (("", ""), ("fastest step: ", "_min")):
        row(f"{prefix}AdamW fused", lambda r, s=suffix: f"{r['adamw' + s] * 1e3:.2f} ms")
        for key in keys:
            row(f"{prefix}{labels[key]}", lambda r, k=key + suffix, s=suffix: (
                f"{r[k] * 1e3:.2f} ms  ({r[k] / r['adamw' + s]:.2f}x)"))
    row("recompiles while timing", lambda r: f"{int(r['recompiles'])}")
    print(f"{'floor (9/7 memory passes)':28}" + "".join(f"{'1.29x':>{width}}" for _ in names))
    for name in names:
        r = results[name]
        print(
            f"RATIO [{args.device}, {name}] sage_default/adamw_fused: median "
            f"{r['default'] / r['adamw']:.2f}, fastest {r['default_min'] / r['adamw_min']:.2f}"
        )


if __name__ == "__main__":
    main()
