"""The trainer: SFT drives the loss down, checkpoints load in kojudge and transformers, a killed run
resumes to the same curve, and a 2-process FSDP2 step equals the single-process one."""
import json
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kojudge
from conftest import hf_greedy
from kojudge.train.config import SFTConfig, load_train_config
from kojudge.train.sft import train_sft


def write_sft_data(path, count=32, seed=0):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(count):
            a, b = rng.randrange(100), rng.randrange(100)
            f.write(json.dumps({"messages": [{"role": "user", "content": f"{a} + {b} = ?"},
                                             {"role": "assistant", "content": f"the answer is {a + b}"}]}) + "\n")
    return path


@pytest.fixture
def sft_setup(tmp_path, model_dirs):
    return model_dirs["qwen2-tied"], write_sft_data(tmp_path / "data.jsonl")


def test_sft_drives_the_loss_down_and_exports_a_loadable_model(tmp_path, sft_setup):
    model, data = sft_setup
    cfg = SFTConfig(model=str(model), data=str(data), output=str(tmp_path / "out"), batch_size=8, epochs=10, lr=3e-3,
                    warmup_steps=5, save_every=1000, eval_data=str(data), eval_every=20)
    records = train_sft(cfg, progress=False)
    assert len(records) == 40
    assert records[-1]["loss"] < 0.25 * records[0]["loss"]
    assert records[-1]["eval_loss"] < records[19]["eval_loss"]
    final = tmp_path / "out" / "final"
    engine = kojudge.Engine(final)
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32).eval()
    prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": "12 + 30 = ?"}])
    ours = engine.generate([prompt], kojudge.SamplingParams(max_tokens=8, ignore_eos=True))[0].token_ids
    assert ours == hf_greedy(hf, prompt, 8)
    assert engine.tokenizer.decode(ours).startswith("the answer is")  # it learned the format


def test_sft_in_bfloat16_runs_under_autocast(tmp_path, sft_setup):
    """A single process trains bfloat16 under autocast: the float32 layers' oneDNN path must step
    aside for autocast's casts (it once met bfloat16 activations and raised)."""
    model, data = sft_setup
    records = train_sft(SFTConfig(model=str(model), data=str(data), output=str(tmp_path / "bf16"),
                                  batch_size=8, max_steps=6, lr=3e-3, warmup_steps=2, dtype="bfloat16",
                                  save_every=1000), progress=False)
    losses = [r["loss"] for r in records]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_killed_sft_run_resumes_to_the_same_loss_curve(tmp_path, sft_setup):
    model, data = sft_setup
    base = dict(model=str(model), data=str(data), batch_size=8, epochs=5, lr=3e-3, warmup_steps=3, save_every=5)
    straight = train_sft(SFTConfig(output=str(tmp_path / "a"), **base), progress=False)
    out = tmp_path / "b"
    train_sft(SFTConfig(output=str(out), **base), progress=False)
    # As if killed at step 13: only what had been written by then survives.
    for name in ("state-15", "state-20", "checkpoint-15", "final"):
        shutil.rmtree(out / name, ignore_errors=True)
    lines = (out / "metrics.jsonl").read_text().splitlines()[:13]
    (out / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    resumed = train_sft(SFTConfig(output=str(out), **base), progress=False)
    assert [r["step"] for r in resumed] == list(range(11, 21))
    curve = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert curve == pytest.approx([r["loss"] for r in straight], abs=1e-6)


def free_port() -> int:
    """A port nobody listens on now (a fixed or pid-derived one can collide with a lingering run)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_fsdp_step_equals_single_process(tmp_path, sft_setup):
    from safetensors.torch import load_file

    from kojudge.model.tokenizer import Tokenizer
    from kojudge.train.checkpoint import full_weights
    from kojudge.train.loop import make_optimizer
    from kojudge.train.policy import build_policy
    from kojudge.train.data import load_sft, pack
    from kojudge.train.sft import sft_step

    model, data = sft_setup
    out = tmp_path / "fsdp.safetensors"
    worker = Path(__file__).parent / "fsdp_step_worker.py"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(free_port()), str(worker), str(model), str(data), str(out)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    examples = load_sft(data, Tokenizer(model), 512)
    module = build_policy(model, 1, "float32")
    optimizer = make_optimizer(module, 1e-2, 0.01)
    before = {k: v.clone() for k, v in full_weights(module).items()}
    sft_step(module, optimizer, [pack(examples[:4]), pack(examples[4:8])], 1, "float32", 1e-2, 1.0)
    single, sharded = full_weights(module), load_file(out)
    assert single.keys() == sharded.keys()
    for name in single:
        torch.testing.assert_close(sharded[name], single[name], atol=1e-5, rtol=1e-5, msg=name)
    assert any(not torch.equal(before[n], single[n]) for n in single)  # the step did move the weights


def test_token_logprobs_padding_changes_nothing(sft_setup):
    """The training module pads packed batches to a multiple of SHAPE_MULTIPLE tokens (a leak fix); the
    log-probs and gradients of the real tokens must be those of the unpadded batch."""
    from kojudge.attention.varlen import CausalVarlenAttention
    from kojudge.train.policy import build_policy
    from kojudge.train.policy import SHAPE_MULTIPLE

    module = build_policy(sft_setup[0], 1, "float32")
    lengths = [37, 1, 90]
    cu = [0, 37, 38, 128]
    ids = torch.randint(3, 60, (128,), generator=torch.Generator().manual_seed(0))
    positions = torch.cat([torch.arange(n) for n in lengths])
    targets = ids.roll(-1)
    got = module(ids, positions, cu, targets)
    assert got.shape == (128,) and 128 % SHAPE_MULTIPLE
    got.sum().backward()
    padded_grad = module.model.embed_tokens.weight.grad.clone()
    module.zero_grad()
    hidden = module.model(ids, positions, CausalVarlenAttention(cu))
    want = torch.log_softmax(module.model.logits(hidden), -1).gather(-1, targets[:, None])[:, 0]
    want.sum().backward()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded_grad, module.model.embed_tokens.weight.grad, atol=1e-5, rtol=1e-5)


def test_train_config_errors_name_the_setting(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: m\ndata: d\noutput: o\nlearning_rate: 1\n")
    with pytest.raises(ValueError, match=r"c.yaml: unknown setting\(s\) \['learning_rate'\]"):
        load_train_config(path, SFTConfig)
    path.write_text("model: m\n")
    with pytest.raises(ValueError, match=r"missing required setting\(s\) \['data', 'output'\]"):
        load_train_config(path, SFTConfig)
    assert load_train_config(_json(tmp_path), SFTConfig).lr == 0.5


def test_a_device_that_cannot_train_is_a_clear_error(tmp_path, sft_setup):
    model, data = sft_setup
    for bad in ["tpu", "meta"] + ([] if torch.cuda.is_available() else ["cuda"]):
        with pytest.raises(ValueError, match=f"device {bad!r}"):
            train_sft(SFTConfig(model=str(model), data=str(data), output=str(tmp_path / "o"), device=bad),
                      progress=False)
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sft_on_cuda_follows_the_cpu_loss_curve(tmp_path, sft_setup):
    """Same data, seed and float32 steps on the GPU and on the CPU: the same losses, and a checkpoint
    that the CPU engine loads."""
    model, data = sft_setup
    base = dict(model=str(model), data=str(data), batch_size=8, max_steps=6, lr=3e-3, warmup_steps=2, save_every=1000)
    on_cpu = train_sft(SFTConfig(output=str(tmp_path / "cpu"), **base), progress=False)
    on_gpu = train_sft(SFTConfig(output=str(tmp_path / "gpu"), device="cuda", **base), progress=False)
    torch.testing.assert_close(torch.tensor([r["loss"] for r in on_gpu]), torch.tensor([r["loss"] for r in on_cpu]),
                               atol=1e-4, rtol=1e-4)
    params = kojudge.SamplingParams(max_tokens=4, ignore_eos=True)
    assert len(kojudge.Engine(tmp_path / "gpu" / "final").generate([[5, 6, 7]], params)[0].token_ids) == 4


def _json(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": "m", "data": "d", "output": "o", "lr": 0.5}))
    return path


def test_bad_sft_data_names_the_line(tmp_path, model_dirs):
    from kojudge.model.tokenizer import Tokenizer
    from kojudge.train.data import load_sft

    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]})
                    + "\n" + json.dumps({"messages": [{"role": "user", "content": "only a question"}]}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:2: no assistant message"):
        load_sft(path, Tokenizer(model_dirs["qwen2-tied"]), 512)


def test_grpo_par_raises_the_par_reward_of_a_tiny_judge(tmp_path):
    """SFT teaches the judgment format with scores unrelated to the response; GRPO-PAR then has to
    teach the judge to score the right sum above the slip."""
    from kojudge.model.tiny import make_tiny_model
    from kojudge.train.config import GRPOConfig
    from kojudge.train.grpo import train_grpo
    from kojudge.train.recipes.toy import write_toy_task

    model = make_tiny_model(tmp_path / "model", "qwen2", hidden_size=128, num_layers=2)
    pairs, sft = write_toy_task(tmp_path / "task", num_pairs=16)
    train_sft(SFTConfig(model=str(model), data=str(sft), output=str(tmp_path / "sft"), batch_size=8, max_steps=80,
                        lr=3e-3, warmup_steps=3, save_every=1000), progress=False)
    records = train_grpo(GRPOConfig(model=str(tmp_path / "sft" / "final"), data=str(pairs), output=str(tmp_path / "grpo"),
                                    pairs_per_batch=4, rollouts=4, max_new_tokens=96, lr=5e-4, epochs=5,
                                    save_every=1000), progress=False)
    par = [r["par_reward"] for r in records]
    assert len(par) == 20
    assert sum(par[-5:]) / 5 > sum(par[:5]) / 5 + 0.15, par
    assert records[-1]["valid_score_rate"] > 0.5  # the format survives the RL stage
    assert kojudge.Engine(tmp_path / "grpo" / "final").config.hidden_size == 128


def test_killed_grpo_run_resumes_to_the_same_metrics(tmp_path):
    """Rollouts are seeded by step, so a run killed after step 3 and resumed from its step-2
    state writes the metrics of the run that never stopped."""
    from kojudge.model.tiny import make_tiny_model
    from kojudge.train.config import GRPOConfig
    from kojudge.train.grpo import train_grpo
    from kojudge.train.recipes.toy import write_toy_task

    model = make_tiny_model(tmp_path / "model", "qwen2", hidden_size=64, num_layers=2)
    pairs, _ = write_toy_task(tmp_path / "task", num_pairs=8)
    base = dict(model=str(model), data=str(pairs), pairs_per_batch=2, rollouts=2,
                max_new_tokens=8, lr=1e-3, max_steps=5, save_every=2, kl_coef=0.05)
    straight = train_grpo(GRPOConfig(output=str(tmp_path / "a"), **base), progress=False)
    out = tmp_path / "b"
    train_grpo(GRPOConfig(output=str(out), **base), progress=False)
    for name in ("state-4", "state-5", "checkpoint-4", "final"):  # as if killed during step 4
        shutil.rmtree(out / name, ignore_errors=True)
    lines = (out / "metrics.jsonl").read_text().splitlines()[:3]
    (out / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    resumed = train_grpo(GRPOConfig(output=str(out), **base), progress=False)
    assert [r["step"] for r in resumed] == [3, 4, 5]
    written = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss", "kl", "reward", "pair_accuracy", "response_tokens"):
        assert [r[key] for r in written] == pytest.approx([r[key] for r in straight], abs=1e-6), key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_grpo_runs_on_cuda(tmp_path):
    """Policy, KL reference and rollout engine on the GPU: steps complete with finite losses, and the
    exported model loads in the CPU engine."""
    from kojudge.model.tiny import make_tiny_model
    from kojudge.train.config import GRPOConfig
    from kojudge.train.grpo import train_grpo
    from kojudge.train.recipes.toy import write_toy_task

    model = make_tiny_model(tmp_path / "model", "qwen2", hidden_size=128, num_layers=2)
    pairs, _ = write_toy_task(tmp_path / "task", num_pairs=8)
    records = train_grpo(GRPOConfig(model=str(model), data=str(pairs), output=str(tmp_path / "grpo"), device="cuda",
                                    pairs_per_batch=4, rollouts=2, max_new_tokens=16, lr=1e-3, max_steps=2,
                                    kl_coef=0.1, save_every=1000), progress=False)
    assert len(records) == 2 and all(torch.isfinite(torch.tensor([r["loss"], r["kl"]])).all() for r in records)
    assert kojudge.Engine(tmp_path / "grpo" / "final").config.hidden_size == 128
