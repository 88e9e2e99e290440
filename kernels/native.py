"""The C++ CPU kernels (cpu_kernels.cpp), which scripts/install.sh compiles for AVX-512: `library`
is the loaded extension, or None where it was not built (no compiler, torch missing at build
time) or the CPU lacks AVX-512, and the engine keeps its torch paths."""
from __future__ import annotations

import torch


def _load():
    # A library of AVX-512 code is not even loaded on a CPU without it (a checkout may move
    # between machines); torch's capability also follows ATEN_CPU_CAPABILITY.
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        return None
    try:
        # Compiled at install; absent where that was not possible.
        from kojudge.kernels import _cpu_kernels
    except ImportError:
        return None
    return _cpu_kernels


library = _load()
