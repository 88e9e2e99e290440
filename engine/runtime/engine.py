"""The public engine: load a local HF model, queue requests, step the scheduler, return outputs."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence as Seq

import torch

from kojudge.kernels import onednn
from kojudge.attention.batch import KVCache
from kojudge.runtime.prefix_cache import BlockPool
from kojudge.model.config import load_config
from kojudge.kernels.dispatch import choose_backend
from kojudge.model.decoder import Model
from kojudge.runtime.model_runner import ModelRunner
from kojudge.runtime.sampling import SamplingParams, sample
from kojudge.runtime.scheduler import Scheduler
from kojudge.runtime.sequence import RequestOutput, Sequence, Status
from kojudge.model.tokenizer import Detokenizer, Tokenizer
from kojudge.model.weights import load_weights


class PromptTooLong(ValueError):
    """A prompt that leaves the judge no room to generate, refused before any work starts: "subject:
    detail", where `index` is the subject's position in the batch it came with (a prompt, an item)."""

    def __init__(self, subject: str, detail: str, index: int, tokens: int, limit: int):
        super().__init__(f"{subject}: {detail}")
        self.detail, self.index, self.tokens, self.limit = detail, index, tokens, limit


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
Prompt = str | list[int]


class Engine:
    """Continuous-batching generation over a paged, prefix-cached KV pool.

    `kv_cache_blocks` sizes the pool directly (tests force preemption with it); otherwise
    `kv_cache_gib` of memory is used, capped at what `max_num_seqs` full-length sequences need; the
    torch backend's decode workspace (ModelRunner) may take up to as much again while decoding.
    `pack_weights` runs the linear layers on oneDNN-packed weights (kojudge.kernels.onednn: 2.4x MKL's
    float32 matmul here); by default on wherever it applies (CPU, float32 or bfloat16).
    """

    def __init__(self, model_dir: str | Path, dtype: str = "float32", device: str = "cpu", *,
                 block_size: int = 16, kv_cache_blocks: int | None = None, kv_cache_gib: float = 2.0,
                 max_num_seqs: int = 256, max_num_batched_tokens: int = 2048, max_model_len: int | None = None,
                 enable_prefix_caching: bool = True, enable_cascade: bool = True, attention_backend: str | None = None,
                 pack_weights: bool | None = None, seed: int = 0):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.config = load_config(model_dir)
        self.device = torch.device(device)
        self.dtype = DTYPES[dtype]
        self.attention_backend = choose_backend(self.device, attention_backend)
        if self.attention_backend == "flashinfer" and (self.device.type != "cuda" or self.dtype == torch.float32):
            raise ValueError(f"the flashinfer attention backend runs on a CUDA device in float16 or bfloat16; "
                             f"this engine is {dtype} on {self.device}")
        self.model_dir = Path(model_dir)
        self.tokenizer = Tokenizer(model_dir)
        with torch.device("meta"):
            model = Model(self.config)
        model = model.to_empty(device=self.device).to(self.dtype)
        load_weights(model, model_dir)
        self.model = model.eval()
        packable = onednn.can_pack(model)
        if pack_weights and not packable:
            raise ValueError(f"pack_weights: oneDNN packing needs a CPU model in float32 or bfloat16 and a torch "
                             f"built with oneDNN; this one is {dtype} on {device}")
        self.pack_weights = packable if pack_weights is None else pack_weights
        if self.pack_weights:
            self.model.pack_weights()
        self.max_model_len = min(max_model_len or self.config.max_position_embeddings,
                                 self.config.max_position_embeddings)
        if kv_cache_blocks is None:
            per_block = KVCache.bytes_per_block(self.config.num_layers, block_size, self.config.num_kv_heads,
                                                self.config.head_dim, self.dtype)
            enough = max_num_seqs * -(-self.max_model_len // block_size)
            kv_cache_blocks = max(1, min(int(kv_cache_gib * 2**30) // per_block, enough))
        self.cache = KVCache(self.config.num_layers, kv_cache_blocks, block_size, self.config.num_kv_heads,
                             self.config.head_dim, self.dtype, self.device)
        self.pool = BlockPool(kv_cache_blocks, block_size, enable_prefix_caching)
        self.scheduler = Scheduler(self.pool, max_num_seqs, max_num_batched_tokens)
        self.runner = ModelRunner(self.model, self.cache, self.device, cascade=enable_cascade,
                                  backend=self.attention_backend)
        self.shared_generator = torch.Generator().manual_seed(seed)
        self._next_id = 0
        self._unclaimed: list[RequestOutput] = []
        self._counters = dict(prompt_tokens=0, computed_prompt_tokens=0, generated_tokens=0)

    # ---- request intake -------------------------------------------------------------------------
    def _prompt_ids(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        if isinstance(prompt, (list, tuple)) and all(isinstance(t, int) for t in prompt):
            bad = [t for t in prompt if not 0 <= t < self.config.vocab_size]
            if bad:
                raise ValueError(f"token id {bad[0]} is outside the vocabulary (size {self.config.vocab_size})")
            return list(prompt)
        raise TypeError(f"a prompt must be a str or a list of int token ids, got {type(prompt).__name__}")

    def _check(self, ids: list[int], params: SamplingParams, index: int) -> None:
        if not ids:
            raise ValueError(f"prompt {index} is empty")
        if len(ids) >= self.max_model_len:
            raise PromptTooLong(f"prompt {index}", f"{len(ids)} tokens leave no room to generate within the max "
                                f"model length {self.max_model_len}", index, len(ids), self.max_model_len)
        # Generation stops at the max model length (finish_reason "length"), as in vLLM.
        needed = min(len(ids) + params.max_tokens, self.max_model_len)
        capacity = self.pool.num_blocks * self.pool.block_size
        if needed > capacity:
            raise ValueError(f"prompt {index} needs {needed} KV slots but the pool holds "
                             f"{capacity}; raise kv_cache_blocks / kv_cache_gib")

    def _enqueue(self, prompt: Prompt, ids: list[int], params: SamplingParams) -> int:
        rid = self._next_id
        self._next_id += 1
        self.scheduler.add(Sequence(rid, prompt if isinstance(prompt, str) else None, ids, params,
                                    Detokenizer(self.tokenizer)))
        self._counters["prompt_tokens"] += len(ids)
        return rid

    def submit(self, prompt: Prompt, params: SamplingParams | None = None) -> int:
        """Queue one request; returns its id. step() reports it when finished."""
        params = params or SamplingParams()
        ids = self._prompt_ids(prompt)
        self._check(ids, params, 0)
        return self._enqueue(prompt, ids, params)

    # ---- the loop -------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one scheduler step; returns the requests that finished in it (and any submitted
        requests that finished inside a generate() call, which they were not part of)."""
        held, self._unclaimed = self._unclaimed, []
        work = self.scheduler.schedule()
        if not work:
            return held
        sample_rows = [i for i, (seq, n) in enumerate(work) if seq.num_computed + n == seq.num_tokens]
        logits = self.runner.run(work, sample_rows) if sample_rows else None
        for seq, n in work:
            prompt_part = max(0, min(seq.num_computed + n, seq.num_prompt_tokens) - seq.num_computed)
            self._counters["computed_prompt_tokens"] += prompt_part
            seq.num_computed += n
            self._register_full_blocks(seq)
        if logits is None:
            return held
        sampled = [work[i][0] for i in sample_rows]
        tokens = sample(logits, [s.params for s in sampled], [s.generator for s in sampled], self.shared_generator)
        want_logprobs = [i for i, s in enumerate(sampled) if s.params.logprobs]
        chosen_logprobs = None
        if want_logprobs:
            rows = torch.tensor(want_logprobs, device=logits.device)
            chosen_logprobs = dict(zip(want_logprobs, logits[rows].log_softmax(-1).gather(
                1, tokens[rows][:, None]).squeeze(1).tolist()))
        finished = []
        for i, (seq, token) in enumerate(zip(sampled, tokens.tolist())):
            seq.token_ids.append(token)
            self._counters["generated_tokens"] += 1
            if chosen_logprobs is not None and i in chosen_logprobs:
                seq.logprobs.append(chosen_logprobs[i])
            if self._check_finished(seq, token):
                self.scheduler.finish(seq)
                finished.append(self._output(seq))
        return held + finished

    def _register_full_blocks(self, seq: Sequence) -> None:
        if not self.pool.enable_prefix_caching:
            return
        bs = self.pool.block_size
        for b in range(seq.num_registered_blocks, seq.num_computed // bs):
            seq.prefix_node = self.pool.register(seq.block_table[b], seq.prefix_node,
                                                 seq.token_ids[b * bs: (b + 1) * bs])
        seq.num_registered_blocks = max(seq.num_registered_blocks, seq.num_computed // bs)

    def _check_finished(self, seq: Sequence, token: int) -> bool:
        p = seq.params
        if (not p.ignore_eos and token in self.config.eos_token_ids) or token in p.stop_token_ids:
            seq.finish_reason = "stop"
            return True
        if p.stop:
            delta = seq.detokenizer.step(seq.output_ids)
            if delta:
                # Only the tail can hold a new match: the delta plus the longest stop string's overlap.
                window_start = max(0, len(seq.text) - max(map(len, p.stop)) + 1)
                seq.text += delta
                hits = [(i, s) for s in p.stop if (i := seq.text.find(s, window_start)) >= 0]
                if hits:
                    index, stop = min(hits)
                    seq.stop_index = index + (len(stop) if p.include_stop_str_in_output else 0)
                    seq.finish_reason = "stop"
                    return True
        if len(seq.output_ids) >= p.max_tokens or seq.num_tokens >= self.max_model_len:
            seq.finish_reason = "length"
            return True
        return False

    def _output(self, seq: Sequence) -> RequestOutput:
        text = self.tokenizer.decode(seq.output_ids)
        if seq.stop_index is not None:
            text = seq.text[: seq.stop_index]
        return RequestOutput(
            request_id=seq.request_id, prompt=seq.prompt, prompt_token_ids=seq.token_ids[: seq.num_prompt_tokens],
            text=text, token_ids=seq.output_ids, finish_reason=seq.finish_reason,
            logprobs=list(seq.logprobs) if seq.params.logprobs else None, cached_tokens=seq.cached_tokens or 0,
        )

    # ---- batch helpers --------------------------------------------------------------------------
    def generate(self, prompts: Seq[Prompt], params: SamplingParams | Seq[SamplingParams] | None = None,
                 use_tqdm: bool = False) -> list[RequestOutput]:
        """Generate for every prompt (continuous batching); outputs in input order."""
        if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Iterable):
            raise TypeError("prompts must be a list of str or of token-id lists")
        prompts = list(prompts)
        if not prompts:
            raise ValueError("generate() got an empty prompt list")
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"{len(params)} SamplingParams for {len(prompts)} prompts")
        encoded = [self._prompt_ids(p) for p in prompts]
        for index, (ids, p) in enumerate(zip(encoded, params)):
            self._check(ids, p, index)  # every prompt is checked before any work starts
        return self._run_all([self._enqueue(p, ids, sp) for p, ids, sp in zip(prompts, encoded, params)], use_tqdm)

    def chat(self, conversations: Seq[list[dict[str, str]]], params: SamplingParams | Seq[SamplingParams] | None = None,
             use_tqdm: bool = False) -> list[RequestOutput]:
        """Generate replies to chat conversations, formatted by the tokenizer's chat template."""
        return self.generate([self.tokenizer.apply_chat_template(c) for c in conversations], params, use_tqdm)

    def _run_all(self, request_ids: list[int], use_tqdm: bool) -> list[RequestOutput]:
        pending = set(request_ids)
        results: dict[int, RequestOutput] = {}
        progress = None
        if use_tqdm:
            from tqdm import tqdm

            progress = tqdm(total=len(request_ids), desc="generate", unit="req")
        while pending:
            if not self.scheduler.has_work():
                raise RuntimeError(f"requests {sorted(pending)} were lost by the scheduler")
            for out in self.step():
                if out.request_id not in pending:
                    self._unclaimed.append(out)  # someone else's submit(): the next step() hands it over
                    continue
                pending.discard(out.request_id)
                results[out.request_id] = out
                if progress is not None:
                    progress.update(1)
        if progress is not None:
            progress.close()
        return [results[rid] for rid in request_ids]

    @torch.no_grad()
    def update_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Copy new weights (our parameter names, e.g. from the trainer) into the model in place and
        drop the prefix cache, whose keys and values the old weights computed."""
        if self.scheduler.has_work():
            raise RuntimeError("update_weights() while requests are in flight")
        params = dict(self.model.named_parameters())
        missing = sorted(set(params) - set(weights))
        if missing:
            raise KeyError(f"update_weights(): no tensor for {missing[:3]}")
        for name, param in params.items():
            param.copy_(weights[name])
        if self.pack_weights:
            self.model.pack_weights()
        self.pool.clear_cache()

    def stats(self) -> dict[str, int]:
        return dict(self._counters, cached_prompt_tokens=self.scheduler.cached_prompt_tokens,
                    preemptions=self.scheduler.num_preemptions)
