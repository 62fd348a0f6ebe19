"""Reading back what the run-tracking integrations wrote: TensorBoard event files (with
TensorBoard's own EventAccumulator) and a W&B offline run's .wandb file (its records are
wandb's own protobuf messages, framed as a LevelDB log)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

WANDB_HEADER = struct.Struct("<4sHB")  # b":W&B", 0xBEE1, version
WANDB_BLOCK = 32 * 1024
RECORD_HEADER = struct.Struct("<IHB")  # crc32, length, type: 1 full, 2 first, 3 middle, 4 last


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag in the event files under `folder`: [(step, value), ...]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def _wandb_records(data: bytes) -> list[bytes]:
    magic, ident, _ = WANDB_HEADER.unpack_from(data)
    assert magic == b":W&B" and ident == 0xBEE1, (magic, ident)
    records, pending, offset = [], b"", WANDB_HEADER.size
    while offset + RECORD_HEADER.size <= len(data):
        left_in_block = WANDB_BLOCK - offset % WANDB_BLOCK
        if left_in_block < RECORD_HEADER.size:  # a block's tail too short for a header
            offset += left_in_block
            continue
        _, length, kind = RECORD_HEADER.unpack_from(data, offset)
        offset += RECORD_HEADER.size
        chunk, offset = data[offset:offset + length], offset + length
        if kind == 0 and length == 0:  # zero padding
            continue
        pending += chunk
        if kind in (1, 4):
            records.append(pending)
            pending = b""
    return records


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def read_wandb_run(path: Path) -> dict[str, Any]:
    """An offline run's project, name, tags, config, history rows and summary."""
    from wandb.proto import wandb_internal_pb2 as pb

    run: dict[str, Any] = {"config": {}, "history": [], "summary": {}}
    for raw in _wandb_records(path.read_bytes()):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.update(project=record.run.project, name=record.run.display_name,
                       tags=list(record.run.tags))
            for item in record.run.config.update:
                run["config"][_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                run["config"][_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            run["history"].append({_key(i): json.loads(i.value_json)
                                   for i in record.history.item})
        elif kind == "summary":
            run["summary"].update({_key(i): json.loads(i.value_json)
                                   for i in record.summary.update})
    # wandb keeps the config's values as {"value": ...}
    run["config"] = {k: v.get("value", v) if isinstance(v, dict) else v
                     for k, v in run["config"].items()}
    return run
