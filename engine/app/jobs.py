"""Long judging jobs: validated JSONL input, results appended as they finish, resume, rank
sharding."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable

from kojudge.utils import jsonl_lines, parse_jsonl_line


def read_jsonl(path: str | Path, fields: dict[str, type | tuple[type, ...]],
               keep_bad: bool = False) -> list[dict[str, Any]]:
    """Every item of a JSONL file, checked up front. `fields` maps required field names to their
    types; an item without "id" gets "line-N". A bad line raises a ValueError naming the file and
    line, or with `keep_bad` becomes an item {"id": ..., "error": ...} of its own."""
    items = []
    seen = set()
    for line_no, raw in jsonl_lines(path):
        try:
            item = parse_jsonl_line(path, line_no, raw)
            _check_fields(path, line_no, item, fields)
            item.setdefault("id", f"line-{line_no}")
            if item["id"] in seen:
                raise ValueError(f"{path}:{line_no}: duplicate id {item['id']!r}")
        except ValueError as exc:
            if not keep_bad:
                raise
            item = {"id": f"line-{line_no}", "error": str(exc)}
        seen.add(item["id"])
        items.append(item)
    return items


def _check_fields(path: str | Path, line_no: int, item: dict[str, Any],
                  fields: dict[str, type | tuple[type, ...]]) -> None:
    for name, kind in fields.items():
        if name not in item:
            raise ValueError(f"{path}:{line_no}: missing field '{name}'")
        if not isinstance(item[name], kind):
            raise ValueError(f"{path}:{line_no}: field '{name}' has the wrong type "
                             f"({type(item[name]).__name__})")
        if isinstance(item[name], list):
            if not item[name]:
                raise ValueError(f"{path}:{line_no}: field '{name}' is empty")
            if not all(isinstance(x, str) for x in item[name]):
                raise ValueError(f"{path}:{line_no}: field '{name}' must be a list of strings")


def finished_ids(path: str | Path) -> set:
    """Ids already in an output file. A last line cut short by a kill is dropped from the file."""
    path = Path(path)
    if not path.exists():
        return set()
    data = path.read_bytes()
    good_end = data.rfind(b"\n") + 1
    if good_end != len(data):
        with path.open("r+b") as f:
            f.truncate(good_end)
    ids = set()
    for line in data[:good_end].decode("utf-8").splitlines():
        if line.strip():
            ids.add(json.loads(line)["id"])
    return ids


class ResultWriter:
    """Appends one JSON line per finished item and makes it durable before going on."""

    def __init__(self, path: str | Path, resume: bool):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.path.open("a" if resume else "w", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def rank_and_world() -> tuple[int, int]:
    """This process's share under torchrun (RANK / WORLD_SIZE), (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def shard_path(output: Path, rank: int, world: int) -> Path:
    return output if world == 1 else output.with_name(f"{output.name}.rank{rank}-of-{world}")


def merge_shards(output: Path, world: int, order: Iterable, poll_s: float = 0.5,
                 timeout_s: float = 24 * 3600) -> None:
    """Rank 0: wait until every rank marked its shard done, then write all records in input
    order."""
    shards = [shard_path(output, r, world) for r in range(world)]
    deadline = time.monotonic() + timeout_s
    while not all(Path(f"{s}.done").exists() for s in shards):
        if time.monotonic() > deadline:
            missing = [str(s) for s in shards if not Path(f"{s}.done").exists()]
            raise TimeoutError(f"ranks did not finish within {timeout_s:.0f}s: {missing} (rerun "
                               "with --resume)")
        time.sleep(poll_s)
    records = {}
    for shard in shards:
        for line in shard.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                records[record["id"]] = line
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text("".join(records[i] + "\n" for i in order if i in records), encoding="utf-8")
    tmp.replace(output)
