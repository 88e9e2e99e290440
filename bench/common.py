"""Shared helpers for benchmark scripts: machine info, result files, a matmul roofline."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def machine_info() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "threads": torch.get_num_threads()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_info(), **payload}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def matmul_peaks(dtype: torch.dtype = torch.float32, n: int = 1024, repeats: int = 20) -> dict[str, float]:
    """Best-of-`repeats` FLOP/s of an n x n x n matmul, measured now (the machine is shared and noisy),
    by torch's matmul ("aten": MKL for float32) and by oneDNN on a packed weight ("onednn"). The
    machine's peak is the faster: on this project's AMD CPUs MKL reaches under half of what oneDNN
    does in float32, so its figure alone would flatter every fraction of the peak."""
    from kojudge.kernels import onednn

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    products = {"aten": lambda: a @ b}
    if onednn.available() and dtype in onednn.PACKED_DTYPES:
        packed = onednn.pack(b.t().contiguous())
        products["onednn"] = lambda: onednn.linear(a, packed, None)
    return {name: 2 * n**3 / timed(product, repeats)[0] for name, product in products.items()}


def timed(fn, repeats: int = 3) -> tuple[float, object]:
    """Best wall time of `repeats` calls and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result
