"""Small helpers every layer uses."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator


def ceil_div(a: int, b: int) -> int:
    """The smallest integer >= a / b, for positive b."""
    return -(-a // b)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; bad JSON names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: invalid JSON ({exc.msg} at column "
                                 f"{exc.colno})") from None
            if not isinstance(item, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object, got "
                                 f"{type(item).__name__}")
            yield line_no, item


def process_device(device: str) -> str:
    """Under torchrun each process takes its own GPU: a bare 'cuda' becomes cuda:LOCAL_RANK."""
    local_rank = os.environ.get("LOCAL_RANK")
    return f"cuda:{local_rank}" if device == "cuda" and local_rank is not None else device
