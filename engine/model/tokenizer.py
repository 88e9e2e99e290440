"""Tokenizer and chat template of a model directory, through transformers."""
from __future__ import annotations

from pathlib import Path


class Tokenizer:
    def __init__(self, model_dir: str | Path):
        from transformers import AutoTokenizer

        try:
            self.hf = AutoTokenizer.from_pretrained(model_dir, local_files_only=True,
                                                    trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise FileNotFoundError(f"{model_dir}: cannot load a tokenizer from this directory: "
                                    f"{exc}") from exc
        self.eos_token_id = self.hf.eos_token_id

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.hf.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, token_ids: list[int]) -> str:
        return self.hf.decode(token_ids, skip_special_tokens=True)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> list[int]:
        if not self.hf.chat_template:
            raise ValueError("this model's tokenizer has no chat template; pass plain prompts to "
                             "generate()")
        text = self.hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # The template already carries any BOS it wants.
        return self.hf.encode(text, add_special_tokens=False)
