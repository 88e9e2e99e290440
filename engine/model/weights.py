"""Weights from (and to) Hugging Face safetensors: single or sharded files, never pickle."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open

from kojudge.model.config import ModelConfig
from kojudge.model.decoder import Model


def hf_sources(config: ModelConfig) -> Iterator[tuple[str, list[tuple[str, int]]]]:
    """(our parameter name, [(HF tensor name, rows)]): our tensor is the HF pieces stacked along
    dim 0."""
    yield "embed_tokens.weight", [("model.embed_tokens.weight", config.vocab_size)]
    yield "norm.weight", [("model.norm.weight", config.hidden_size)]
    if not config.tie_word_embeddings:
        yield "lm_head.weight", [("lm_head.weight", config.vocab_size)]
    q, kv = config.q_size, config.kv_size
    inter, hidden = config.intermediate_size, config.hidden_size
    for i in range(config.num_layers):
        hf, ours = f"model.layers.{i}.", f"layers.{i}."
        qkv_kinds = ["weight"] + (["bias"] if config.qkv_bias else [])
        for kind in qkv_kinds:
            yield f"{ours}self_attn.qkv_proj.{kind}", [(f"{hf}self_attn.q_proj.{kind}", q),
                                                       (f"{hf}self_attn.k_proj.{kind}", kv),
                                                       (f"{hf}self_attn.v_proj.{kind}", kv)]
        for kind in ["weight"] + (["bias"] if config.o_bias else []):
            yield f"{ours}self_attn.o_proj.{kind}", [(f"{hf}self_attn.o_proj.{kind}", hidden)]
        for kind in ["weight"] + (["bias"] if config.mlp_bias else []):
            yield f"{ours}mlp.gate_up_proj.{kind}", [(f"{hf}mlp.gate_proj.{kind}", inter),
                                                     (f"{hf}mlp.up_proj.{kind}", inter)]
            yield f"{ours}mlp.down_proj.{kind}", [(f"{hf}mlp.down_proj.{kind}", hidden)]
        yield f"{ours}input_layernorm.weight", [(f"{hf}input_layernorm.weight", hidden)]
        post_norm = "post_attention_layernorm.weight"
        yield f"{ours}{post_norm}", [(f"{hf}{post_norm}", hidden)]
        if config.qk_norm:
            yield f"{ours}self_attn.q_norm.weight", [(f"{hf}self_attn.q_norm.weight",
                                                      config.head_dim)]
            yield f"{ours}self_attn.k_norm.weight", [(f"{hf}self_attn.k_norm.weight",
                                                      config.head_dim)]


def _weight_files(model_dir: Path) -> dict[str, Path]:
    """HF tensor name -> the safetensors file that holds it."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise ValueError(f"{index}: not a valid safetensors index ({exc})") from exc
        return {name: model_dir / file for name, file in weight_map.items()}
    single = model_dir / "model.safetensors"
    if not single.is_file():
        found = sorted(p.name for pattern in ("*.bin", "*.pt") for p in model_dir.glob(pattern))
        hint = ""
        if found:
            hint = (f" (found {found}: pickle checkpoints are not loaded; convert them to "
                    "safetensors)")
        raise FileNotFoundError(f"{model_dir}: no model.safetensors or "
                                f"model.safetensors.index.json{hint}")
    try:
        with safe_open(single, framework="pt") as f:
            return {name: single for name in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{single}: cannot read safetensors header (truncated or corrupt file?): "
                         f"{exc}") from exc


def load_weights(model: Model, model_dir: str | Path, packed: bool = False) -> None:
    """Copy the checkpoint's tensors into `model`, merging q/k/v and gate/up; checks every shape.
    packed: weights that Model.pack_weight keeps packed go there from the file, with no dense
    copy."""
    model_dir = Path(model_dir)
    files = _weight_files(model_dir)
    params = dict(model.named_parameters())
    handles: dict[Path, object] = {}
    try:
        for name, pieces in hf_sources(model.config):
            tensors = []
            for hf_name, rows in pieces:
                path = files.get(hf_name)
                if path is None:
                    raise KeyError(f"{model_dir}: tensor {hf_name!r} is missing from the "
                                   "checkpoint")
                if path not in handles:
                    if not path.is_file():
                        raise FileNotFoundError(f"{path} is missing (named by the safetensors "
                                                "index)")
                    handles[path] = safe_open(path, framework="pt")
                try:
                    tensor = handles[path].get_tensor(hf_name)
                except (SafetensorError, OSError) as exc:
                    raise ValueError(f"{path}: cannot read tensor {hf_name!r} (truncated file?): "
                                     f"{exc}") from exc
                expected = (rows,) + tuple(params[name].shape[1:])
                if tuple(tensor.shape) != expected:
                    raise ValueError(f"{path}: tensor {hf_name!r} has shape "
                                     f"{tuple(tensor.shape)}, config.json implies {expected}")
                tensors.append(tensor)
            param = params[name]
            if not (packed and model.pack_weight(name, _stacked(tensors, param.dtype))):
                _copy_rows(tensors, param)
    except SafetensorError as exc:
        raise ValueError(f"{model_dir}: cannot read safetensors file (truncated or corrupt?): "
                         f"{exc}") from exc


def _stacked(tensors: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """The pieces stacked along dim 0 in `dtype`, in one pass (or none: a single piece already
    in it is returned as it is)."""
    if len(tensors) == 1 and tensors[0].dtype == dtype:
        return tensors[0]
    out = torch.empty((sum(len(t) for t in tensors), *tensors[0].shape[1:]), dtype=dtype)
    _copy_rows(tensors, out)
    return out


@torch.no_grad()
def _copy_rows(tensors: list[torch.Tensor], out: torch.Tensor) -> None:
    """Each piece into its rows of `out`: a merged copy first would be new memory."""
    for rows, tensor in zip(out.split([len(t) for t in tensors]), tensors):
        rows.copy_(tensor)


def hf_state_dict(model: Model) -> dict[str, torch.Tensor]:
    """The model's weights under Hugging Face names, merged tensors split back (for checkpoints)."""
    released = [name for name, p in model.named_parameters() if p.numel() == 0]
    if released:
        raise ValueError(f"hf_state_dict: {released[0]} is held packed only (an inference model "
                         "loaded with packed=True); load the checkpoint without packing")
    return to_hf_names(model.config, {name: p.detach() for name, p in model.named_parameters()})


def to_hf_names(config: ModelConfig, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our parameter tensors (by our names) -> Hugging Face tensors."""
    out = {}
    for name, pieces in hf_sources(config):
        parts = tensors[name].split([rows for _, rows in pieces])
        out.update({hf_name: part.contiguous() for (hf_name, _), part in zip(pieces, parts)})
    return out
