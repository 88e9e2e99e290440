"""Small helpers every layer uses."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import os
from pathlib import Path
from typing import Any, Iterator


def ceil_div(a: int, b: int) -> int:
    """The smallest integer >= a / b, for positive b."""
    return -(-a // b)


def jsonl_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes) of every non-blank line of a JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, 1):
            if raw.strip():
                yield line_no, raw


def parse_jsonl_line(path: str | Path, line_no: int, raw: bytes) -> dict[str, Any]:
    """One line's JSON object; anything else is a ValueError naming the file and line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = f"byte {exc.start + 1} of the line"
        raise ValueError(f"{path}:{line_no}: not UTF-8 ({where})") from None
    try:
        item = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"{exc.msg} at column {exc.colno}"
        raise ValueError(f"{path}:{line_no}: invalid JSON ({where})") from None
    if not isinstance(item, dict):
        raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(item).__name__}")
    return item


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; a bad line names the file and line."""
    for line_no, raw in jsonl_lines(path):
        yield line_no, parse_jsonl_line(path, line_no, raw)


def process_device(device: str) -> str:
    """Under torchrun each process takes its own GPU: a bare 'cuda' becomes cuda:LOCAL_RANK."""
    local_rank = os.environ.get("LOCAL_RANK")
    return f"cuda:{local_rank}" if device == "cuda" and local_rank is not None else device


# glibc's mallopt parameters.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Freed blocks up to this size stay in the heap for reuse; larger ones (the KV pool) are still
# mapped fresh, so they keep their lazily zeroed pages.
REUSED_BLOCK_BYTES = 256 * 2**20


@functools.cache
def reuse_freed_memory() -> bool:
    """Make glibc keep freed blocks of up to REUSED_BLOCK_BYTES for reuse, as a caching allocator
    would: by default it returns each block over 32 MB to the OS on free and maps a fresh one
    for the next tensor, whose every page then faults in again (a step's intermediates of tens
    of MB each: elementwise ops ran at half speed). False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, REUSED_BLOCK_BYTES)
                and mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
