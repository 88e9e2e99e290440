"""Tournament-shaped workloads: Q questions x N candidates judged in knockout matches.

Every judge prompt = shared instruction template + question + candidate A + candidate B + a short
closing instruction, as token ids drawn at random (the model is random too; only shapes matter).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class TournamentWorkload:
    prompts: list[list[int]]
    question_of: list[int]  # question index of each prompt
    unique_prompt_tokens: int  # distinct prefixes over all prompts: the work an ideal cache computes


def count_unique_prefix_tokens(prompts: list[list[int]]) -> int:
    """Number of nodes of the token trie of the prompts."""
    root: dict = {}
    count = 0
    for prompt in prompts:
        node = root
        for token in prompt:
            nxt = node.get(token)
            if nxt is None:
                nxt = node[token] = {}
                count += 1
            node = nxt
    return count


def first_round(num_questions: int = 8, num_candidates: int = 16, template_tokens: int = 600,
                question_tokens: int = 60, candidate_tokens: tuple[int, int] = (100, 300), tail_tokens: int = 12,
                vocab_size: int = 512, seed: int = 0) -> TournamentWorkload:
    """The knockout's first round: num_candidates / 2 matches per question, each candidate once."""
    g = torch.Generator().manual_seed(seed)

    def tokens(n: int) -> list[int]:
        return torch.randint(3, vocab_size, (n,), generator=g).tolist()

    template, tail = tokens(template_tokens), tokens(tail_tokens)
    prompts, question_of = [], []
    for q in range(num_questions):
        question = tokens(question_tokens)
        lengths = torch.randint(candidate_tokens[0], candidate_tokens[1] + 1, (num_candidates,), generator=g).tolist()
        candidates = [tokens(n) for n in lengths]
        for a in range(0, num_candidates - 1, 2):
            prompts.append(template + question + candidates[a] + candidates[a + 1] + tail)
            question_of.append(q)
    return TournamentWorkload(prompts, question_of, count_unique_prefix_tokens(prompts))


# Random-weight models of real judges' shapes (tied embeddings, as both Qwen2.5 sizes have).
MODEL_SHAPES = {
    "bench-25m": dict(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4,
                      intermediate_size=1536, vocab_size=2048),
    "qwen2.5-0.5b": dict(hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2,
                         intermediate_size=4864, embedding_rows=151936,
                         max_position_embeddings=32768),
    "qwen2.5-1.5b": dict(hidden_size=1536, num_layers=28, num_heads=12, num_kv_heads=2,
                         intermediate_size=8960, embedding_rows=151936,
                         max_position_embeddings=32768),
}
MODELS_DIR = Path(__file__).parent / "results" / "tmp" / "models"


def bench_model(name: str) -> Path:
    """The model directory of a MODEL_SHAPES entry, written once (its tokenizer trained on a small
    corpus, so it holds fewer tokens than asked for: see prompt_vocab)."""
    from kojudge.model.tiny import make_tiny_model

    path = MODELS_DIR / name
    if not (path / "config.json").is_file():
        shape = dict(MODEL_SHAPES[name])
        vocab = shape.pop("vocab_size", 2048)
        make_tiny_model(path, "qwen2", tie_word_embeddings=True, initializer_range=0.05,
                        vocab_size=vocab, **shape)
    return path


def prompt_vocab(config) -> int:
    """Random prompt token ids are drawn below this: ids the tokenizer holds (llama.cpp gets the
    same ids), at most 2,048 however large the embedding."""
    return min(config.vocab_size, 2048)
