import atexit
import os
import shutil
import tempfile

# Triton kernels run in the CPU interpreter when there is no GPU; it must be set before they load.
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Tokenizers are cached for this session only, not in the user's ~/.cache.
os.environ["KOJUDGE_CACHE_DIR"] = tempfile.mkdtemp(prefix="kojudge-cache-")
atexit.register(shutil.rmtree, os.environ["KOJUDGE_CACHE_DIR"], ignore_errors=True)

import pytest
import torch

from kojudge.model.tiny import make_tiny_model

# Where the kernel tests put their tensors: the real GPU when there is one, else the CPU interpreter.
KERNEL_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# (family, tied embeddings, extra config): GQA everywhere (4 query heads over 2 KV heads).
MODELS = {
    "qwen2-tied": ("qwen2", True, {}),
    "qwen2-untied": ("qwen2", False, {}),
    "qwen3-tied": ("qwen3", True, {"head_dim": 32}),
    "qwen3-untied": ("qwen3", False, {"head_dim": 16}),
}


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {name: make_tiny_model(root / name, family, tie_word_embeddings=tied, seed=i, **extra)
            for i, (name, (family, tied, extra)) in enumerate(MODELS.items())}


@pytest.fixture(scope="session")
def hf_models(model_dirs):
    from transformers import AutoModelForCausalLM

    return {name: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
            for name, path in model_dirs.items()}


@pytest.fixture(scope="session")
def engines(model_dirs):
    """One shared engine per model for tests that do not care about engine state."""
    import kojudge

    return {name: kojudge.Engine(path) for name, path in model_dirs.items()}


def hf_greedy(hf_model, prompt_ids, max_new_tokens):
    """Reference continuation from transformers, one prompt at a time (no padding effects)."""
    out = hf_model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False,
                            eos_token_id=None, pad_token_id=0, min_new_tokens=max_new_tokens)
    return out[0, len(prompt_ids):].tolist()


def random_prompts(lengths, vocab=500, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]
