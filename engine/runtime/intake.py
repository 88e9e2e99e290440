"""What a request may be: prompts as text or token ids, checked before anything runs."""
from __future__ import annotations

from kojudge.model.tokenizer import Tokenizer
from kojudge.runtime.sampling import SamplingParams

Prompt = str | list[int]


class PromptTooLong(ValueError):
    """A prompt that leaves the judge no room to generate, refused before any work starts:
    "subject: detail", where `index` is the subject's position in the batch it came with."""

    def __init__(self, subject: str, detail: str, index: int, tokens: int, limit: int):
        super().__init__(f"{subject}: {detail}")
        self.detail = detail
        self.index = index
        self.tokens = tokens
        self.limit = limit


class RequestIntake:
    """Turns prompts into checked token ids for an engine of `max_model_len` positions and a KV
    pool of `capacity` slots."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, max_model_len: int, capacity: int):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.capacity = capacity

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        if isinstance(prompt, (list, tuple)) and all(isinstance(t, int) for t in prompt):
            vocab = self.vocab_size
            bad = [t for t in prompt if not 0 <= t < vocab]
            if bad:
                raise ValueError(f"token id {bad[0]} is outside the vocabulary (size {vocab})")
            return list(prompt)
        raise TypeError(f"a prompt must be a str or a list of int token ids, "
                        f"got {type(prompt).__name__}")

    def check(self, ids: list[int], params: SamplingParams, index: int) -> None:
        if not ids:
            raise ValueError(f"prompt {index} is empty")
        if len(ids) >= self.max_model_len:
            raise PromptTooLong(f"prompt {index}", f"{len(ids)} tokens leave no room to generate "
                                f"within the max model length {self.max_model_len}", index,
                                len(ids), self.max_model_len)
        # Generation stops at the max model length (finish_reason "length"), as in vLLM.
        needed = min(len(ids) + params.max_tokens, self.max_model_len)
        if needed > self.capacity:
            raise ValueError(f"prompt {index} needs {needed} KV slots but the pool holds "
                             f"{self.capacity}; raise kv_cache_blocks / kv_cache_gib")

    def scoring_ids(self, prompt: Prompt, continuation: Prompt,
                    index: int) -> tuple[list[int], int]:
        """(prompt + continuation ids, where the continuation starts), checked."""
        prompt_ids = self.prompt_ids(prompt)
        if isinstance(continuation, str):
            continuation_ids = self.tokenizer.encode(continuation, add_special_tokens=False)
        else:
            continuation_ids = self.prompt_ids(continuation)
        if not prompt_ids or not continuation_ids:
            raise ValueError(f"score {index}: the prompt and the continuation must not be empty")
        ids = prompt_ids + continuation_ids
        if len(ids) > self.max_model_len:
            raise PromptTooLong(f"score {index}", f"prompt and continuation have {len(ids)} "
                                f"tokens, over the max model length {self.max_model_len}", index,
                                len(ids), self.max_model_len)
        if len(ids) > self.capacity:
            raise ValueError(f"score {index} needs {len(ids)} KV slots but the pool holds "
                             f"{self.capacity}; raise kv_cache_blocks / kv_cache_gib")
        return ids, len(prompt_ids)
