"""Tiny random Hugging Face models made locally: for tests, smoke runs and benchmarks (no
downloads)."""
from __future__ import annotations

import string
from pathlib import Path

import torch

CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
                 "{{ message['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _corpus() -> list[str]:
    words = ["the", "answer", "is", "correct", "incorrect", "response", "judge", "step", "sum",
             "carry", "digit", "question", "solution", "therefore", "check", "each", "final",
             "boxed", "compare", "score"]
    lines = [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    lines += [f"{a} + {b} = {a + b}" for a in range(0, 200, 7) for b in range(0, 200, 13)]
    lines += [string.printable,
              "<resp_a_judge>Correct</resp_a_judge> <resp_b_judge>Incorrect</resp_b_judge>",
              "<think> <generate_rubrics> <eval> <answer> </answer>"]
    return lines


def make_tokenizer(path: str | Path, vocab_size: int = 512):
    """A byte-level BPE tokenizer with a ChatML chat template, saved as tokenizer.json in `path`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(_corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    return tokenizer


def make_char_tokenizer(path: str | Path):
    """One token per byte plus ChatML specials: fixed-width digits, so a small judge compares
    numbers digit by digit. It is a byte-level BPE without merges, so transformers' Qwen2 tokenizer
    class (which AutoTokenizer rebuilds from the vocabulary) tokenizes exactly as tokenizer.json
    does."""
    from tokenizers.pre_tokenizers import ByteLevel

    return make_tokenizer(path, vocab_size=len(ByteLevel.alphabet()) + len(SPECIAL_TOKENS))


def make_tiny_model(path: str | Path, family: str = "qwen2", *, tie_word_embeddings: bool = True,
                    hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                    num_kv_heads: int = 2, intermediate_size: int = 128, vocab_size: int = 512,
                    max_position_embeddings: int = 2048, head_dim: int | None = None,
                    initializer_range: float = 0.1, seed: int = 0,
                    max_shard_size: str | None = None, char_tokenizer: bool = False,
                    embedding_rows: int | None = None, **config_overrides) -> Path:
    """Write a random model of `family` (qwen2 | qwen3 | llama) and its tokenizer to `path`.

    A wider initializer than the default keeps the random model's next-token distribution peaked, so
    greedy decoding has no near-ties that float rounding could flip. `embedding_rows` sizes the
    embedding and LM head past the tokenizer's vocabulary, as released checkpoints do (a benchmark
    shape's 151,936 rows).
    """
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = make_char_tokenizer(path) if char_tokenizer else make_tokenizer(path, vocab_size)
    config_cls = {"qwen2": Qwen2Config, "qwen3": Qwen3Config, "llama": LlamaConfig}[family]
    extra = {"head_dim": head_dim} if head_dim else {}
    rows = max(len(tokenizer), embedding_rows or 0)
    config = config_cls(vocab_size=rows, hidden_size=hidden_size,
                        intermediate_size=intermediate_size, num_hidden_layers=num_layers,
                        num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                        max_position_embeddings=max_position_embeddings,
                        tie_word_embeddings=tie_word_embeddings,
                        initializer_range=initializer_range, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id, bos_token_id=None, **extra,
                        **config_overrides,)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(path, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    return path
