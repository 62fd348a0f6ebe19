"""Samples per second of one job trained by N ranks, side by side, through the real engine.

Fine-tunes a random BERT (sage_core.testing.build_tiny_model, --hidden wide, --layers deep,
built in a temporary folder) for text classification on --examples synthetic sentences
(sequence length 32, global batch --batch-size, SAGE), once per rank count: 1 and 2 on a
CPU-only machine (gloo, one process per rank, the cores split between them), 1 and every
visible GPU with CUDA (nccl, DDP). Each run trains --warmup unmeasured steps, then --steps
measured ones; a run's figure is the median of its per-step train rows' samples_per_second
(rank 0's wall time per step, the global batch counted). Scaling efficiency is
samples/s at N over N times samples/s at 1. The rank counts' global batch is the same, so
each rank of N trains batch_size / N examples a step.

    python bench/distributed.py                  # CUDA if present, else CPU: N = 1, 2
    python bench/distributed.py --ranks 1 2 4 --steps 40
    python bench/distributed.py --smoke          # a few steps of a tiny model: does it run

Not a timed test; `tests/bench/test_distributed_bench.py` runs the smoke mode.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from sage_core.schemas import JobSpec, Resources  # noqa: E402
from sage_core.testing import build_tiny_model  # noqa: E402
from sage_core.training import Callbacks, run_training  # noqa: E402

MODEL = "bench-bert"
WORDS = ("free win prize call now cash claim urgent hello see you later home good ok fine "
         "the a is to of and").split()


def write_data(path: Path, examples: int, seed: int = 0) -> Path:
    import json

    rng = random.Random(seed)
    with path.open("w") as fh:
        for i in range(examples):
            words = [rng.choice(WORDS) for _ in range(rng.randint(12, 24))]
            fh.write(json.dumps({"text": " ".join(words), "label": ["ham", "spam"][i % 2]})
                     + "\n")
    return path


def measure(ranks: int, args: argparse.Namespace, models: Path, train: Path, out: Path
            ) -> dict[str, Any]:
    spec = JobSpec(model=MODEL, hyperparameters={
        "n_epochs": 100, "batch_size": args.batch_size, "learning_rate": 1e-4,
        "max_seq_length": 32, "optimizer": "sage"},
        resources=Resources(gpus=ranks)).resolve()
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    run_training(spec, train, out, models_dir=models, device=args.device, resume=False,
                 max_steps=args.warmup + args.steps, log_every=1,
                 callbacks=Callbacks(on_metrics=rows.append))
    measured = [r["samples_per_second"] for r in rows
                if "samples_per_second" in r and r["step"] > args.warmup]
    return {"ranks": ranks, "samples_per_second": statistics.median(measured),
            "wall_seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--ranks", type=int, nargs="+",
                        default=[1, torch.cuda.device_count()] if cuda else [1, 2])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--examples", type=int, default=2048)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--smoke", action="store_true",
                        help="a 2-layer, 64-wide model for 1 + 2 steps")
    args = parser.parse_args(argv)
    if args.smoke:
        args.hidden, args.layers, args.examples, args.warmup, args.steps = 64, 2, 64, 1, 2
        args.batch_size = min(args.batch_size, 8)
    ranks = sorted(set(args.ranks))
    if ranks[0] != 1:
        ranks.insert(0, 1)  # the efficiency's reference
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as tmp:
        root = Path(tmp)
        build_tiny_model(root / "models" / MODEL, layers=args.layers, hidden=args.hidden)
        train = write_data(root / "train.jsonl", args.examples)
        results = [measure(n, args, root / "models", train, root / f"run-{n}") for n in ranks]
    base = results[0]["samples_per_second"]
    print(f"device {args.device}, BERT {args.layers}x{args.hidden}, batch {args.batch_size}, "
          f"{args.steps} measured steps after {args.warmup}")
    print(f"{'ranks':>5} {'samples/s':>10} {'speedup':>8} {'efficiency':>10} {'wall s':>7}")
    for r in results:
        speedup = r["samples_per_second"] / base
        print(f"{r['ranks']:>5} {r['samples_per_second']:>10.1f} {speedup:>8.2f} "
              f"{speedup / r['ranks']:>10.2f} {r['wall_seconds']:>7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
