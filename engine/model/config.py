"""Model configuration read from a local Hugging Face model directory."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

SUPPORTED_ARCHITECTURES = {
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "LlamaForCausalLM": "llama",
}
# config.json fields read as they stand only when all are there (else through transformers).
EXPLICIT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                   "num_attention_heads", "rms_norm_eps", "max_position_embeddings",
                   "tie_word_embeddings")
# Rope types whose frequencies do not depend on the sequence length (those need per-step tables).
STATIC_ROPE_TYPES = {"default", "linear", "llama3", "yarn"}


@dataclass(frozen=True)
class ModelConfig:
    family: str  # qwen2 | qwen3 | llama
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool
    rope_inv_freq: torch.Tensor  # [head_dim // 2], float32
    rope_attention_scaling: float
    eos_token_ids: tuple[int, ...]

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim


def _rope_frequencies(hf_config: Any, head_dim: int) -> tuple[torch.Tensor, float]:
    params = getattr(hf_config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    if rope_type not in STATIC_ROPE_TYPES:
        raise ValueError(f"rope type {rope_type!r} is not supported (supported: "
                         f"{sorted(STATIC_ROPE_TYPES)})")
    if rope_type == "default":
        theta = params.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
        return inv_freq, 1.0
    # The scaled variants use transformers' own formulas so they match the reference exactly.
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](hf_config, torch.device("cpu"))
    return inv_freq.float(), float(scaling)


def _eos_ids(model_dir: Path, hf_config: Any) -> tuple[int, ...]:
    ids: set[int] = set()

    def add(value: Any) -> None:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))

    add(getattr(hf_config, "eos_token_id", None))
    gen_path = model_dir / "generation_config.json"
    if gen_path.exists():
        try:
            add(json.loads(gen_path.read_text()).get("eos_token_id"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{gen_path}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
    return tuple(sorted(ids))


def _as_read(raw: dict[str, Any], family: str) -> SimpleNamespace | None:
    """config.json's own values where they are what transformers' AutoConfig would give, else
    None: every field present whose default differs between config classes, and no rope scaling
    or sliding windows to resolve. Importing transformers takes 0.7 s, most of a first
    Engine()."""
    if any(name not in raw for name in EXPLICIT_FIELDS):
        return None
    if family == "qwen3" and raw.get("head_dim") is None:  # Qwen3's default is 128, not h / n
        return None
    rope = raw.get("rope_parameters") or {}
    if raw.get("rope_scaling") or rope.get("rope_type", "default") != "default":
        return None
    if "rope_theta" not in raw and "rope_theta" not in rope:
        return None
    if set(raw.get("layer_types") or ["full_attention"]) != {"full_attention"}:
        return None
    return SimpleNamespace(**{"attention_bias": False, "mlp_bias": False, **raw})


def _from_transformers(model_dir: Path) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)


def load_config(model_dir: str | Path) -> ModelConfig:
    """Read config.json of a local model directory; raises a clear error for what we cannot run."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory not found: {model_dir} (a local path is "
                                "required; nothing is downloaded)")
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: not a Hugging Face model directory")
    try:
        raw = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_path}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
    archs = raw.get("architectures") or []
    family = next((SUPPORTED_ARCHITECTURES[a] for a in archs if a in SUPPORTED_ARCHITECTURES),
                  None)
    if family is None:
        raise ValueError(f"{config_path}: field 'architectures' is {archs!r}; supported: "
                         f"{sorted(SUPPORTED_ARCHITECTURES)}")
    hf = _as_read(raw, family) or _from_transformers(model_dir)
    if getattr(hf, "use_sliding_window", False):
        raise ValueError(f"{config_path}: use_sliding_window=true is not supported")
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    inv_freq, scaling = _rope_frequencies(hf, head_dim)
    return ModelConfig(
        family=family,
        vocab_size=hf.vocab_size,
        hidden_size=hf.hidden_size,
        intermediate_size=hf.intermediate_size,
        num_layers=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads,
        num_kv_heads=getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads,
        head_dim=head_dim,
        rms_norm_eps=hf.rms_norm_eps,
        max_position_embeddings=hf.max_position_embeddings,
        tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
        qkv_bias=family == "qwen2" or bool(getattr(hf, "attention_bias", False)),
        o_bias=family != "qwen2" and bool(getattr(hf, "attention_bias", False)),
        mlp_bias=bool(getattr(hf, "mlp_bias", False)),
        qk_norm=family == "qwen3",
        rope_inv_freq=inv_freq,
        rope_attention_scaling=scaling,
        eos_token_ids=_eos_ids(model_dir, hf),
    )
