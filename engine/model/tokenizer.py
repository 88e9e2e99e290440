"""Tokenizer and chat template through transformers, plus incremental detokenization for stop strings."""
from __future__ import annotations

from pathlib import Path


class Tokenizer:
    def __init__(self, model_dir: str | Path):
        from transformers import AutoTokenizer

        try:
            self.hf = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise FileNotFoundError(f"{model_dir}: cannot load a tokenizer from this directory: {exc}") from exc
        self.eos_token_id = self.hf.eos_token_id

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text)

    def decode(self, token_ids: list[int]) -> str:
        return self.hf.decode(token_ids, skip_special_tokens=True)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> list[int]:
        if not self.hf.chat_template:
            raise ValueError("this model's tokenizer has no chat template; pass plain prompts to generate()")
        text = self.hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # The template already carries any BOS it wants.
        return self.hf.encode(text, add_special_tokens=False)


class Detokenizer:
    """Turns a growing list of token ids into text deltas without decoding everything each step.

    A token may end inside a multi-byte character; its text is held back until the character completes.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.prefix_offset = 0
        self.read_offset = 0

    def step(self, token_ids: list[int]) -> str:
        decode = self.tokenizer.decode
        prefix_text = decode(token_ids[self.prefix_offset: self.read_offset])
        full_text = decode(token_ids[self.prefix_offset:])
        if len(full_text) > len(prefix_text) and not full_text.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(token_ids)
            return full_text[len(prefix_text):]
        return ""
