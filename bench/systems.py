"""The systems a benchmark compares on one workload (token-id prompts, N greedy tokens each, EOS
ignored), each at its best: kojudge cold and warm, HF `generate` at every batch size given,
llama.cpp's server at every slot count and flash-attention setting given.

kojudge runs in a fresh process (bench/cold_start.py), so its first round is what `kojudge judge`
sees; HF and llama.cpp get a warm-up first, which only flatters them.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from kojudge.model.tokenizer import Tokenizer
from llama_server import LlamaServer, convert_to_gguf, llama_cpp_built

BENCH_DIR = Path(__file__).parent


def run_kojudge(model_dir: Path, dtype: str, prompts: list[list[int]], new_tokens: int,
                repeats: int) -> dict:
    """bench/cold_start.py in a fresh process: load and first-round times, best warm round, the
    step profile of a warm round, and the outputs. The tokenizer is cached first, as any earlier
    process that loaded the model leaves it."""
    Tokenizer(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        request, reply = Path(tmp) / "request.json", Path(tmp) / "reply.json"
        request.write_text(json.dumps(dict(model_dir=str(model_dir), dtype=dtype, prompts=prompts,
                                           new_tokens=new_tokens, repeats=repeats)))
        subprocess.run([sys.executable, str(BENCH_DIR / "cold_start.py"), str(request),
                        str(reply)], check=True)
        return json.loads(reply.read_text())


def hf_generate(hf, prompts: list[list[int]], new_tokens: int, pad_id: int = 0) -> list[list[int]]:
    """One left-padded batch through HF `generate`, greedy, exactly `new_tokens` each."""
    width = max(map(len, prompts))
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.inference_mode():
        out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_id,
                          eos_token_id=None)
    return [row[width:].tolist() for row in out]


def run_hf(model_dir: Path, dtype: str, prompts: list[list[int]], new_tokens: int,
           batches: list[int]) -> dict:
    """Wall time of the whole workload at each batch size (prompts in order, `batch` at a time),
    after a warm-up at the largest; outputs of the fastest."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
    hf_generate(hf, [p[-64:] for p in prompts[: max(batches)]], 4)
    seconds, outputs = {}, {}
    for batch in batches:
        start = time.perf_counter()
        outputs[batch] = [row for i in range(0, len(prompts), batch)
                          for row in hf_generate(hf, prompts[i: i + batch], new_tokens)]
        seconds[batch] = time.perf_counter() - start
        print(f"  HF generate, batch {batch}: {seconds[batch]:.1f} s", flush=True)
    best = min(seconds, key=seconds.get)
    return {"seconds_by_batch": seconds, "best_batch": best, "seconds": seconds[best],
            "outputs": outputs[best]}


def run_llama_cpp(model_dir: Path, dtype: str, prompts: list[list[int]], new_tokens: int,
                  slots: list[int], flash: list[str], work_dir: Path) -> dict | None:
    """llama.cpp's server at each (slots, flash-attention) setting, all prompts sent at once;
    None where it is not built (scripts/build_llama_cpp.sh)."""
    if not llama_cpp_built():
        print("  llama.cpp: not built (bash scripts/build_llama_cpp.sh); skipped", flush=True)
        return None
    gguf = convert_to_gguf(model_dir, dtype, work_dir)
    context = max(map(len, prompts)) + new_tokens
    seconds, outputs = {}, {}
    for n in slots:
        for fa in flash:
            with LlamaServer(gguf, slots=n, context_per_slot=context, flash_attn=fa) as server:
                server.complete([prompts[0][-64:]], 4)
                start = time.perf_counter()
                outputs[(n, fa)] = server.complete(prompts, new_tokens)
                seconds[(n, fa)] = time.perf_counter() - start
            print(f"  llama.cpp, {n} slots, flash-attn {fa}: {seconds[(n, fa)]:.1f} s", flush=True)
    best = min(seconds, key=seconds.get)
    return {"seconds_by_setting": {f"{n} slots, flash-attn {fa}": s
                                   for (n, fa), s in seconds.items()},
            "best_setting": f"{best[0]} slots, flash-attn {best[1]}", "seconds": seconds[best],
            "outputs": outputs[best]}


def agreement(a: list[list[int]], b: list[list[int]]) -> str:
    return f"{sum(x == y for x, y in zip(a, b))}/{len(a)}"
