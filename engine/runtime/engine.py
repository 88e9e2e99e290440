"""The public engine: load a local HF model, queue requests, step the scheduler, return outputs."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Iterable
from typing import Sequence as Seq

import torch
from tqdm import tqdm

from kojudge.attention.batch import KVCache
from kojudge.kernels import onednn
from kojudge.kernels.dispatch import choose_backend
from kojudge.model.config import load_config
from kojudge.model.decoder import Model, empty_model
from kojudge.model.tokenizer import Tokenizer
from kojudge.model.weights import load_weights
from kojudge.runtime.config import EngineConfig
from kojudge.runtime.intake import Prompt, RequestIntake
from kojudge.runtime.model_runner import ModelRunner
from kojudge.runtime.prefix_cache import PrefixCache
from kojudge.runtime.sampling import SamplingParams, chosen_logprobs, sample
from kojudge.runtime.scheduler import Scheduler
from kojudge.runtime.sequence import (RequestOutput, ScheduledChunk, Sequence,
                                      request_output)
from kojudge.runtime.stopping import Detokenizer, finish_reason
from kojudge.utils import ceil_div, reuse_freed_memory

SCORE_ROWS = 256  # scored rows whose float32 logits are held at a time


class Engine:
    """Continuous-batching generation over a paged, prefix-cached KV pool.

    `Engine(model_dir, dtype, device, **options)`: the options are EngineConfig's fields (or pass
    `config=EngineConfig(...)`).
    """

    def __init__(self, model_dir: str | Path, dtype: str | None = None, device: str | None = None,
                 *, config: EngineConfig | None = None, **options):
        given = {"dtype": dtype, "device": device}
        config = replace(config or EngineConfig(),
                         **{k: v for k, v in given.items() if v is not None}, **options)
        self.engine_config = config
        self.config = load_config(model_dir)
        self.model_dir = Path(model_dir)
        self.device = torch.device(config.device)
        if self.device.type == "cpu":
            reuse_freed_memory()
        self.dtype = config.torch_dtype
        self.attention_backend = choose_backend(self.device, config.attention_backend)
        half_on_cuda = self.device.type == "cuda" and self.dtype != torch.float32
        if self.attention_backend == "flashinfer" and not half_on_cuda:
            raise ValueError("the flashinfer attention backend runs on a CUDA device in float16 or "
                             f"bfloat16; this engine is {config.dtype} on {self.device}")
        self.tokenizer = Tokenizer(model_dir)
        self.model = self._load_model()
        limit = self.config.max_position_embeddings
        self.max_model_len = min(config.max_model_len or limit, limit)
        self.cache = self._allocate_kv_cache()
        self.prefix_cache = PrefixCache(self.cache.num_blocks, config.block_size,
                                        config.enable_prefix_caching)
        capacity = self.cache.num_blocks * config.block_size
        self.intake = RequestIntake(self.tokenizer, self.config.vocab_size, self.max_model_len,
                                    capacity)
        self.scheduler = Scheduler(self.prefix_cache, config.max_num_seqs,
                                   config.max_num_batched_tokens)
        self.runner = ModelRunner(self.model, self.cache, self.device,
                                  cascade=config.enable_cascade, backend=self.attention_backend,
                                  max_num_seqs=config.max_num_seqs)
        self.shared_generator = torch.Generator().manual_seed(config.seed)
        self._next_id = 0
        self._unclaimed: list[RequestOutput] = []
        self._counters = dict(prompt_tokens=0, computed_prompt_tokens=0, generated_tokens=0)

    def _load_model(self) -> Model:
        options = self.engine_config
        model = empty_model(self.config, self.dtype, self.device)
        packable = onednn.can_pack(model)
        if options.pack_weights and not packable:
            raise ValueError("pack_weights: oneDNN packing needs a CPU model in float32 or "
                             "bfloat16 and a torch built with oneDNN; this one is "
                             f"{options.dtype} on {self.device}")
        self.pack_weights = packable if options.pack_weights is None else options.pack_weights
        load_weights(model, self.model_dir, packed=self.pack_weights)
        return model.eval()

    def _allocate_kv_cache(self) -> KVCache:
        shape = self.config
        options = self.engine_config
        blocks = options.kv_cache_blocks
        if blocks is None:
            per_block = KVCache.bytes_per_block(shape.num_layers, options.block_size,
                                                shape.num_kv_heads, shape.head_dim, self.dtype)
            enough = options.max_num_seqs * ceil_div(self.max_model_len, options.block_size)
            blocks = max(1, min(int(options.kv_cache_gib * 2**30) // per_block, enough))
        return KVCache(shape.num_layers, blocks, options.block_size, shape.num_kv_heads,
                       shape.head_dim, self.dtype, self.device)

    # ---- request intake ---------------------------------------------------------------------
    def _enqueue(self, prompt: Prompt, ids: list[int], params: SamplingParams,
                 score_from: int | None = None) -> int:
        rid = self._next_id
        self._next_id += 1
        text = prompt if isinstance(prompt, str) else None
        self.scheduler.add(Sequence(rid, text, ids, params, Detokenizer(self.tokenizer),
                                    score_from))
        self._counters["prompt_tokens"] += len(ids)
        return rid

    def submit(self, prompt: Prompt, params: SamplingParams | None = None) -> int:
        """Queue one request; returns its id. step() reports it when finished."""
        params = params or SamplingParams()
        ids = self.intake.prompt_ids(prompt)
        self.intake.check(ids, params, 0)
        return self._enqueue(prompt, ids, params)

    def submit_score(self, prompt: Prompt, continuation: Prompt) -> int:
        """Queue the teacher-forced scoring of `continuation` after `prompt`; step() reports it
        with .logprobs, log p of each continuation token (see score)."""
        ids, start = self.intake.scoring_ids(prompt, continuation, 0)
        return self._enqueue(prompt, ids, SamplingParams(max_tokens=1), score_from=start)

    def score(self, prompts: Seq[Prompt], continuations: Seq[Prompt]) -> list[list[float]]:
        """Exact log-probs of given continuations: for each pair, log p(token | everything before
        it) of every continuation token, nothing sampled. The prompt goes through the prefix
        cache, so k continuations of one prompt cost one prompt prefill plus k short extends.
        A str continuation is tokenized on its own, without special tokens."""
        if len(prompts) != len(continuations):
            raise ValueError(f"score() got {len(prompts)} prompts for {len(continuations)} "
                             "continuations")
        pairs = enumerate(zip(prompts, continuations))
        checked = [self.intake.scoring_ids(p, c, i) for i, (p, c) in pairs]
        request_ids = [self._enqueue(prompt, ids, SamplingParams(max_tokens=1), score_from=start)
                       for prompt, (ids, start) in zip(prompts, checked)]
        return [out.logprobs for out in self._run_all(request_ids, use_tqdm=False)]

    # ---- the loop -----------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[RequestOutput]:
        """Run one scheduler step; returns the requests that finished in it (and any submitted
        requests that finished inside a generate() call, which they were not part of)."""
        held = self._unclaimed
        self._unclaimed = []
        work = self.scheduler.schedule()
        if not work:
            return held
        sampled = [s for s, n in work
                   if s.score_from is None and s.num_computed + n == s.num_tokens]
        scored = [(s, position) for s, n in work for position in s.scored_positions(n)]
        hidden = self.runner.run(work, [(s, s.num_tokens - 1) for s in sampled] + scored)
        self._record_computed(work)
        finished = self._record_scores(work, scored, hidden[len(sampled):])
        if sampled:
            finished += self._postprocess(sampled, self.model.logits(hidden[: len(sampled)]))
        return held + finished

    def _record_computed(self, work: list[ScheduledChunk]) -> None:
        for seq, n in work:
            prompt_part = min(seq.num_computed + n, seq.num_prompt_tokens) - seq.num_computed
            self._counters["computed_prompt_tokens"] += max(0, prompt_part)
            seq.num_computed += n
            self.prefix_cache.publish(seq)

    def _record_scores(self, work: list[ScheduledChunk], scored: list[tuple[Sequence, int]],
                       hidden: torch.Tensor) -> list[RequestOutput]:
        """Log p of the token after each scored position; finish the scoring requests whose
        every token is computed."""
        for start in range(0, len(scored), SCORE_ROWS):
            part = scored[start: start + SCORE_ROWS]
            targets = torch.tensor([s.token_ids[p + 1] for s, p in part], device=hidden.device)
            logits = self.model.logits(hidden[start: start + SCORE_ROWS]).float()
            values = logits.log_softmax(-1).gather(1, targets[:, None]).squeeze(1).tolist()
            for (seq, position), value in zip(part, values):
                seq.scores[position] = value
        finished = []
        for seq, _ in work:
            if seq.score_from is not None and seq.num_computed == seq.num_tokens:
                seq.finish_reason = "length"
                self.scheduler.finish(seq)
                finished.append(request_output(seq, self.tokenizer))
        return finished

    def _postprocess(self, sampled: list[Sequence], logits: torch.Tensor) -> list[RequestOutput]:
        """Sample each sequence's next token, then finish those that stop."""
        params = [s.params for s in sampled]
        tokens = sample(logits, params, [s.generator for s in sampled], self.shared_generator)
        logprobs = chosen_logprobs(logits, tokens, params)
        finished = []
        for seq, token, logprob in zip(sampled, tokens.tolist(), logprobs):
            seq.token_ids.append(token)
            self._counters["generated_tokens"] += 1
            if logprob is not None:
                seq.logprobs.append(logprob)
            seq.finish_reason = finish_reason(seq, token, self.config.eos_token_ids,
                                              self.max_model_len)
            if seq.finish_reason is not None:
                self.scheduler.finish(seq)
                finished.append(request_output(seq, self.tokenizer))
        return finished

    # ---- batch helpers ------------------------------------------------------------------------
    def generate(self, prompts: Seq[Prompt],
                 params: SamplingParams | Seq[SamplingParams] | None = None,
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
        encoded = [self.intake.prompt_ids(p) for p in prompts]
        for index, (ids, p) in enumerate(zip(encoded, params)):
            self.intake.check(ids, p, index)  # every prompt is checked before any work starts
        request_ids = [self._enqueue(*request) for request in zip(prompts, encoded, params)]
        return self._run_all(request_ids, use_tqdm)

    def chat(self, conversations: Seq[list[dict[str, str]]],
             params: SamplingParams | Seq[SamplingParams] | None = None,
             use_tqdm: bool = False) -> list[RequestOutput]:
        """Generate replies to chat conversations, formatted by the tokenizer's chat template."""
        prompts = [self.tokenizer.apply_chat_template(c) for c in conversations]
        return self.generate(prompts, params, use_tqdm)

    def _run_all(self, request_ids: list[int], use_tqdm: bool) -> list[RequestOutput]:
        pending = set(request_ids)
        results: dict[int, RequestOutput] = {}
        with tqdm(total=len(request_ids), desc="generate", unit="req",
                  disable=not use_tqdm) as progress:
            while pending:
                if not self.scheduler.has_work():
                    raise RuntimeError(f"requests {sorted(pending)} were lost by the scheduler")
                for out in self.step():
                    if out.request_id not in pending:
                        # Someone else's submit(): the next step() hands it over.
                        self._unclaimed.append(out)
                        continue
                    pending.discard(out.request_id)
                    results[out.request_id] = out
                    progress.update(1)
        return [results[rid] for rid in request_ids]

    @torch.no_grad()
    def update_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Copy new weights (our parameter names, e.g. from the trainer) into the model in place
        and drop the prefix cache, whose keys and values the old weights computed."""
        if self.scheduler.has_work():
            raise RuntimeError("update_weights() while requests are in flight")
        params = dict(self.model.named_parameters())
        missing = sorted(set(params) - set(weights))
        if missing:
            raise KeyError(f"update_weights(): no tensor for {missing[:3]}")
        for name, param in params.items():
            new = weights[name].to(param.device, param.dtype)
            if not (self.pack_weights and self.model.pack_weight(name, new)):
                param.copy_(new)
        self.prefix_cache.clear()

    def stats(self) -> dict[str, int]:
        return dict(self._counters, cached_prompt_tokens=self.scheduler.cached_prompt_tokens,
                    preemptions=self.scheduler.num_preemptions)
