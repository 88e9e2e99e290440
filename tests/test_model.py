"""Our decoder against Hugging Face transformers on tiny random models (float32, 1e-4)."""
import json
import shutil

import pytest
import torch

from conftest import MODELS, random_prompts
from kojudge.attention.batch import KVCache
from kojudge.attention.torch_paged import PagedAttention
from kojudge.attention.varlen import CausalVarlenAttention
from kojudge.model.config import load_config
from kojudge.kernels import onednn
from kojudge.model.decoder import Model
from kojudge.runtime.model_runner import ModelRunner, packing_order
from kojudge.runtime.sampling import SamplingParams
from kojudge.runtime.sequence import Sequence
from kojudge.model.tiny import make_tiny_model
from kojudge.model.weights import hf_state_dict, load_weights

LENGTHS = [5, 17, 1, 33, 16]


def load(path):
    model = Model(load_config(path))
    load_weights(model, path)
    return model.eval()


def varlen_logits(model, prompts):
    """Our logits of the prompts packed into one varlen batch."""
    cu = [0]
    for p in prompts:
        cu.append(cu[-1] + len(p))
    with torch.no_grad():
        hidden = model(torch.tensor(sum(prompts, [])), torch.cat([torch.arange(len(p)) for p in prompts]),
                       CausalVarlenAttention(cu))
        return model.logits(hidden)


def hf_logits(hf_model, prompts):
    with torch.no_grad():
        return torch.cat([hf_model(torch.tensor([p])).logits[0] for p in prompts])


@pytest.mark.parametrize("name", list(MODELS))
def test_packed_varlen_logits_match_transformers(name, model_dirs, hf_models):
    model = load(model_dirs[name])
    prompts = random_prompts(LENGTHS)
    ours = varlen_logits(model, prompts)
    torch.testing.assert_close(ours, hf_logits(hf_models[name], prompts), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["qwen2-untied", "qwen3-tied"])
def test_paged_chunked_logits_match_transformers(name, model_dirs, hf_models):
    """Prompts fed in uneven chunks through the paged cache, decodes and prefills in one batch."""
    model = load(model_dirs[name])
    cfg = model.config
    cache = KVCache(cfg.num_layers, 64, 4, cfg.num_kv_heads, cfg.head_dim, torch.float32, "cpu")
    runner = ModelRunner(model, cache, torch.device("cpu"))
    prompts = random_prompts(LENGTHS, seed=3)
    seqs = [Sequence(i, None, p, SamplingParams(), None) for i, p in enumerate(prompts)]
    next_block = iter(range(64))
    for s in seqs:
        s.block_table = [next(next_block) for _ in range(-(-len(s.token_ids) // 4))]
    got = {i: [] for i in range(len(seqs))}
    chunk_plan = [3, 1, 7]  # tokens per step for sequence i: rotate so prefills and decodes mix
    step = 0
    while any(s.num_uncomputed for s in seqs):
        work = [(s, min(s.num_uncomputed, chunk_plan[(s.request_id + step) % 3])) for s in seqs if s.num_uncomputed]
        ids, pos, batch = runner.build(work)
        with torch.no_grad():
            logits = model.logits(model(ids, pos, PagedAttention(cache, batch)))
        order = [work[i] for i in packing_order(work)]
        row = 0
        for s, n in order:
            got[s.request_id].append(logits[row: row + n])
            s.num_computed += n
            row += n
        step += 1
    ours = torch.cat([torch.cat(got[i]) for i in range(len(seqs))])
    torch.testing.assert_close(ours, hf_logits(hf_models[name], prompts), atol=1e-4, rtol=0)


@pytest.mark.parametrize("rope", [{"rope_type": "linear", "factor": 2.0},
                                  {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                                  {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}])
def test_llama_with_rope_scaling_matches_transformers(rope, tmp_path):
    from transformers import AutoModelForCausalLM

    path = make_tiny_model(tmp_path / "llama", "llama", tie_word_embeddings=False,
                           rope_parameters={"rope_theta": 10000.0, **rope})
    prompts = random_prompts([40, 90], seed=5)
    model = load(path)
    with torch.no_grad():
        ours = torch.cat([model.logits(model(torch.tensor(p), torch.arange(len(p)), CausalVarlenAttention([0, len(p)])))
                          for p in prompts])
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    torch.testing.assert_close(ours, hf_logits(hf, prompts), atol=1e-4, rtol=0)


def test_sharded_checkpoint_loads_identically(tmp_path, model_dirs):
    sharded = make_tiny_model(tmp_path / "sharded", "qwen2", tie_word_embeddings=False, seed=1,
                              max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").exists()
    ours, ref = hf_state_dict(load(sharded)), hf_state_dict(load(model_dirs["qwen2-untied"]))
    assert ours.keys() == ref.keys()
    for key in ref:
        torch.testing.assert_close(ours[key], ref[key], atol=0, rtol=0)


def test_hf_state_dict_round_trips_the_checkpoint(model_dirs):
    from safetensors.torch import load_file

    path = model_dirs["qwen3-untied"]
    original = load_file(path / "model.safetensors")
    exported = hf_state_dict(load(path))
    assert exported.keys() == original.keys()
    for key, tensor in original.items():
        assert torch.equal(exported[key], tensor), key


# ---- clear errors ---------------------------------------------------------------------------------

def copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_unknown_model_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        load_config(tmp_path / "nope")


def test_unsupported_architecture_names_the_field(tmp_path, model_dirs):
    path = copy_model(model_dirs["qwen2-tied"], tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="architectures.*GPT2LMHeadModel"):
        load_config(path)


def test_truncated_safetensors_is_a_clear_error(tmp_path, model_dirs):
    path = copy_model(model_dirs["qwen2-tied"], tmp_path / "m")
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match="model.safetensors"):
        load(path)


def test_shape_mismatch_names_the_tensor(tmp_path, model_dirs):
    path = copy_model(model_dirs["qwen2-tied"], tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="gate_proj.weight.*shape"):
        load(path)


def test_missing_weights_and_pickle_files_are_refused(tmp_path, model_dirs):
    path = copy_model(model_dirs["qwen2-tied"], tmp_path / "m")
    (path / "model.safetensors").unlink()
    (path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match="pickle checkpoints are not loaded"):
        load(path)


@pytest.mark.skipif(not onednn.available(), reason="torch built without oneDNN: nothing is packed")
def test_packed_model_with_mlp_biases_matches_transformers(tmp_path):
    """Packed, SwiGLU runs SiLU and the product in oneDNN's epilogues, biases split in halves."""
    from transformers import AutoModelForCausalLM

    path = make_tiny_model(tmp_path, "llama", mlp_bias=True, attention_bias=True)
    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():  # transformers initializes biases to zero
        for name, param in hf.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.5)
    hf.save_pretrained(path)
    model = load(path)
    model.pack_weights()
    assert all(layer.mlp.packed is not None for layer in model.layers)
    prompts = random_prompts(LENGTHS)
    ours = varlen_logits(model, prompts)
    torch.testing.assert_close(ours, hf_logits(hf, prompts), atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_rms_norm_equals_transformers_bit_for_bit(dtype):
    """The same numbers as transformers' cast to float32 and back, whole or (2-d, more rows than
    CHUNK_ROWS, no grad) a chunk of rows at a time. In float32 without grad, where the C++ kernel
    (kernels/token_ops.cpp) may run, its sum of squares is added in another order than torch's
    mean: within 3 ulp there; bit for bit with grad, on torch's path."""
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

    from kojudge.model.decoder import RMSNorm

    g = torch.Generator().manual_seed(0)
    ours, theirs = RMSNorm(96, 1e-6), Qwen2RMSNorm(96, eps=1e-6)
    weight = torch.randn(96, generator=g)
    with torch.no_grad():
        ours.weight.copy_(weight)
        theirs.weight.copy_(weight)
    ours, theirs = ours.to(dtype), theirs.to(dtype)
    for scale in (1e-3, 1.0, 50.0):
        x = (torch.randn(33, 7, 96, generator=g) * scale).to(dtype)
        rows = x.view(-1, 96)[: 2 * RMSNorm.CHUNK_ROWS + 5]
        with torch.no_grad():
            for inputs in (x, rows):
                if dtype == torch.float32:
                    torch.testing.assert_close(ours(inputs), theirs(inputs), atol=0, rtol=3.6e-7)
                else:
                    assert torch.equal(ours(inputs), theirs(inputs))
        assert torch.equal(ours(x), theirs(x))  # with grad: torch's path
