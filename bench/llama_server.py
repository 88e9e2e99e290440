"""llama.cpp as a benchmark baseline: the HF model converted to GGUF, its server started with N
parallel slots (continuous batching, prompt cache on), every prompt sent at once as token ids.

Built by scripts/build_llama_cpp.sh into build/llama.cpp (or $KOJUDGE_LLAMA_CPP).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(os.environ.get("KOJUDGE_LLAMA_CPP",
                           Path(__file__).resolve().parent.parent / "build" / "llama.cpp"))
GGUF_TYPES = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}
# The converter names the BPE pre-tokenizer from a hash of a test string's tokens; the random
# models' tokenizers match no published one. Prompts go in as token ids, so any name will do.
# Its Qwen2 class tries sentencepiece (not installed) before the byte-level BPE these models have.
CONVERT = """import runpy, sys
sys.path[:0] = [{root!r}, {root!r} + '/gguf-py']
import conversion.base as base
import conversion.qwen as qwen
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: 'qwen2'
qwen.Qwen2Model.set_vocab = lambda self: self._set_vocab_gpt2()
sys.argv = ['convert_hf_to_gguf.py', *sys.argv[1:]]
runpy.run_path({root!r} + '/convert_hf_to_gguf.py', run_name='__main__')
"""


def llama_cpp_built() -> bool:
    return (ROOT / "bin" / "llama-server").is_file()


def convert_to_gguf(model_dir: Path, dtype: str, work_dir: Path) -> Path:
    """The model as GGUF in `dtype` (no quantization), converted once per directory."""
    out = Path(work_dir) / f"{Path(model_dir).name}-{GGUF_TYPES[dtype]}.gguf"
    if not out.is_file():
        script = CONVERT.format(root=str(ROOT))
        subprocess.run([sys.executable, "-c", script, str(model_dir), "--outtype",
                        GGUF_TYPES[dtype], "--outfile", str(out)], check=True,
                       stdout=subprocess.DEVNULL)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """`with LlamaServer(gguf, slots=8, ...) as server: server.complete(prompts, n)`."""

    def __init__(self, gguf: Path, slots: int, context_per_slot: int, flash_attn: str = "off",
                 threads: int | None = None):
        self.port = free_port()
        threads = threads or os.cpu_count()
        self.command = [str(ROOT / "bin" / "llama-server"), "-m", str(gguf), "--host",
                        "127.0.0.1", "--port", str(self.port), "-np", str(slots), "-c",
                        str(slots * context_per_slot), "-t", str(threads), "-tb", str(threads),
                        "-fa", flash_attn, "--no-webui"]
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "LlamaServer":
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-server exited: {self.process.stderr.read()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5):
                    return self
            except OSError:
                time.sleep(0.5)
        raise TimeoutError("llama-server did not become healthy in 600 s")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)

    def _one(self, prompt: list[int], new_tokens: int) -> list[int]:
        body = json.dumps({"prompt": prompt, "n_predict": new_tokens, "temperature": 0.0,
                           "top_k": 1, "ignore_eos": True, "cache_prompt": True,
                           "return_tokens": True}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/completion", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=3600) as response:
            return json.loads(response.read())["tokens"]

    def complete(self, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
        """Greedy continuations of every prompt, all requests in flight at once."""
        with ThreadPoolExecutor(len(prompts)) as pool:
            return list(pool.map(lambda p: self._one(p, new_tokens), prompts))
