"""Config and tokenizer loaded without transformers give what transformers gives, and a first
Engine() in a fresh process need not import it."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from kojudge.model import config as config_module
from kojudge.model.config import load_config
from kojudge.model.tiny import make_tiny_model
from kojudge.model.tokenizer import Tokenizer

DEMO_JUDGE = Path(config_module.__file__).parents[1] / "demo" / "judge"
TEXTS = ["Hello, world!", "  two  spaces\nand a newline\t", "émoji 🎉 and 数字 12345",
         "<|im_start|>user\nspecial tokens in text<|im_end|>", ""]
CONVERSATIONS = [[{"role": "user", "content": "Is 2 + 2 = 4?"}],
                 [{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Compare {a} and {b}: <|im_end|> é 🎉"}]]


def assert_same_config(a, b):
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y, field.name


def through_transformers(path, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(config_module, "_as_read", lambda raw, family: None)
        return load_config(path)


@pytest.mark.parametrize("name", ["qwen2-tied", "qwen2-untied", "qwen3-tied", "qwen3-untied"])
def test_config_read_directly_equals_transformers(name, model_dirs, monkeypatch):
    direct = load_config(model_dirs[name])
    assert_same_config(direct, through_transformers(model_dirs[name], monkeypatch))


@pytest.mark.parametrize("dropped", ["head_dim", "num_key_value_heads", "tie_word_embeddings",
                                     "rope_theta", "attention_bias"])
def test_config_with_fields_left_out_equals_transformers(dropped, tmp_path, monkeypatch):
    """Fields whose defaults transformers knows are either defaulted the same way here or the
    config goes through transformers."""
    path = make_tiny_model(tmp_path / "llama", "llama", tie_word_embeddings=False)
    raw = json.loads((path / "config.json").read_text())
    raw.pop(dropped, None)
    raw.get("rope_parameters", {}).pop(dropped, None)
    (path / "config.json").write_text(json.dumps(raw))
    assert_same_config(load_config(path), through_transformers(path, monkeypatch))


def tokenizer_dirs(model_dirs, tmp_path):
    char = make_tiny_model(tmp_path / "char", "qwen2", tie_word_embeddings=True,
                           char_tokenizer=True)
    return {"bpe": model_dirs["qwen2-tied"], "char": char, "demo judge": DEMO_JUDGE}


def test_cached_tokenizer_equals_transformers(model_dirs, tmp_path, monkeypatch):
    """The first load goes through transformers and caches what it built; a later one loads the
    cache without transformers and encodes, decodes and renders the chat template the same."""
    monkeypatch.setenv("KOJUDGE_CACHE_DIR", str(tmp_path / "cache"))
    for name, path in tokenizer_dirs(model_dirs, tmp_path).items():
        assert Tokenizer(path).from_cache is False, name  # nothing cached yet
        ours, theirs = Tokenizer(path), AutoTokenizer.from_pretrained(path)
        assert ours.from_cache, name
        assert ours.eos_token_id == theirs.eos_token_id, name
        for text in TEXTS:
            for special in (True, False):
                ids = ours.encode(text, add_special_tokens=special)
                assert ids == theirs.encode(text, add_special_tokens=special), (name, text)
            ids = theirs.encode(text)
            assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True), (name, text)
        for messages in CONVERSATIONS:
            text = theirs.apply_chat_template(messages, add_generation_prompt=True,
                                              tokenize=False)
            expected = theirs.encode(text, add_special_tokens=False)
            assert ours.apply_chat_template(messages) == expected, name


def test_changed_tokenizer_files_are_a_new_cache_entry(model_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("KOJUDGE_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "model"
    shutil.copytree(model_dirs["qwen2-tied"], path)
    Tokenizer(path)
    (path / "chat_template.jinja").write_text("{{ messages[0]['content'] }}!")
    Tokenizer(path)
    changed = Tokenizer(path)
    assert changed.from_cache
    assert changed.apply_chat_template([{"role": "user", "content": "hi"}]) == changed.encode(
        "hi!", add_special_tokens=False)


def test_damaged_cache_entry_is_rebuilt(model_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("KOJUDGE_CACHE_DIR", str(tmp_path / "cache"))
    path = model_dirs["qwen2-tied"]
    Tokenizer(path)
    entry = Tokenizer(path)._cache_path()
    entry.write_text(entry.read_text()[:100])
    assert Tokenizer(path).from_cache is False  # through transformers, and cached again
    assert Tokenizer(path).from_cache


def test_first_engine_does_not_import_transformers(model_dirs, tmp_path):
    """With the tokenizer cached by an earlier process, a process that builds an Engine,
    generates from text and from a chat never imports transformers."""
    code = ("import sys, kojudge; engine = kojudge.Engine(sys.argv[1]); "
            "params = kojudge.SamplingParams(max_tokens=2); "
            "engine.generate(['hello'], params); "
            "engine.chat([[{'role': 'user', 'content': 'hi'}]], params); "
            "print('transformers' in sys.modules)")
    env = {**os.environ, "KOJUDGE_CACHE_DIR": str(tmp_path / "cache")}
    command = [sys.executable, "-c", code, str(model_dirs["qwen2-tied"])]
    runs = [subprocess.run(command, capture_output=True, text=True, env=env, check=True)
            for _ in range(2)]
    assert [run.stdout.strip() for run in runs] == ["True", "False"], runs[1].stderr
