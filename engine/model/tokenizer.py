"""Tokenizer and chat template of a model directory.

transformers' AutoTokenizer decides what a directory's tokenizer is (it may rebuild the pipeline
from the vocabulary for the model's class). What it built is kept in a cache, keyed by the
directory's tokenizer files and the library versions; a later process loads it with the
tokenizers library and renders chat templates over plain text messages with jinja2 as
transformers sets it up, without importing transformers (0.7 s, most of a first Engine()).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

# The files AutoTokenizer reads; config.json names the model's tokenizer class.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "config.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "added_tokens.json")

CACHED_FIELDS = ("eos_token_id", "chat_template", "special_tokens")


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get("KOJUDGE_CACHE_DIR") or Path(root) / "kojudge") / "tokenizers"


class Tokenizer:
    def __init__(self, model_dir: str | Path):
        self.model_dir = Path(model_dir)
        self._hf = None
        self._backend = None
        entry = self._cache_path()  # hashes the tokenizer files: once
        self.from_cache = entry is not None and self._load_cached(entry)
        if not self.from_cache:
            self.eos_token_id = self.hf.eos_token_id
            self.chat_template = self.hf.chat_template
            named = self.hf.special_tokens_map  # the chat template's variables
            self.special_tokens = {k: v for k, v in named.items() if isinstance(v, str)}
            if entry is not None:
                self._store(entry)

    @property
    def hf(self) -> Any:
        """transformers' tokenizer of the same directory (training renders its masks with it)."""
        if self._hf is None:
            from transformers import AutoTokenizer

            try:
                self._hf = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True,
                                                         trust_remote_code=False)
            except (OSError, ValueError) as exc:
                raise FileNotFoundError(f"{self.model_dir}: cannot load a tokenizer from this "
                                        f"directory: {exc}") from exc
        return self._hf

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if self._backend is None:
            return self.hf.encode(text, add_special_tokens=add_special_tokens)
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, token_ids: list[int]) -> str:
        if self._backend is None:
            return self.hf.decode(token_ids, skip_special_tokens=True)
        return self._backend.decode(token_ids, skip_special_tokens=True)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> list[int]:
        if not self.chat_template:
            raise ValueError("this model's tokenizer has no chat template; pass plain prompts to "
                             "generate()")
        template = None
        if self._backend is not None and all(_plain(m) for m in messages):
            template = compiled_template(self.chat_template)
        if template is None:  # or it needs transformers' own tags ({% generation %})
            text = self.hf.apply_chat_template(messages, add_generation_prompt=True,
                                               tokenize=False)
        else:
            text = template.render(messages=messages, tools=None, documents=None,
                                   add_generation_prompt=True, **self.special_tokens)
        # The template already carries any BOS it wants.
        return self.encode(text, add_special_tokens=False)

    # ---- the cache ----------------------------------------------------------------------------
    def _cache_path(self) -> Path | None:
        digest = hashlib.sha256()
        try:  # what built the entry and what reads it
            for package in ("transformers", "tokenizers"):
                digest.update(f"{package} {metadata.version(package)}\0".encode())
        except metadata.PackageNotFoundError:
            return None
        present = [name for name in TOKENIZER_FILES if (self.model_dir / name).is_file()]
        if set(present) <= {"config.json"}:
            return None  # no tokenizer here: transformers says so
        for name in present:
            digest.update(f"\0{name}\0".encode() + (self.model_dir / name).read_bytes())
        return cache_dir() / f"{digest.hexdigest()}.json"

    def _load_cached(self, path: Path) -> bool:
        if not path.is_file():
            return False
        try:
            entry = json.loads(path.read_text())
            from tokenizers import Tokenizer as Backend

            backend = Backend.from_str(entry["backend"])
            fields = {name: entry[name] for name in CACHED_FIELDS}
        except Exception:  # a damaged entry, whatever it raises: rebuilt
            return False
        self._backend = backend
        for name, value in fields.items():
            setattr(self, name, value)
        return True

    def _store(self, path: Path) -> None:
        """Cache what transformers built, where the tokenizers library alone reproduces it: a
        fast tokenizer that does not clean up decoded spaces, with one chat template at most."""
        hf = self.hf
        simple = (getattr(hf, "is_fast", False)
                  and not getattr(hf, "clean_up_tokenization_spaces", False)
                  and (self.chat_template is None or isinstance(self.chat_template, str)))
        if not simple:
            return
        entry = {"backend": hf.backend_tokenizer.to_str(),
                 **{name: getattr(self, name) for name in CACHED_FIELDS}}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(json.dumps(entry))
            partial.replace(path)  # atomic: a concurrent reader sees all of it or nothing
        except OSError:
            pass  # a read-only home: every process loads through transformers


def _plain(message: dict[str, Any]) -> bool:
    """A message transformers passes to the template unchanged: text role and content only
    (it rewrites reasoning fields, content blocks and None values)."""
    return set(message) <= {"role", "content"} and all(isinstance(v, str)
                                                        for v in message.values())


def _raise_exception(message: str) -> None:
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


@functools.cache
def compiled_template(template: str) -> Any:
    """A chat template in the environment transformers renders it in (sandboxed, blocks trimmed,
    loop controls, its tojson / raise_exception / strftime_now), or None where it uses a tag
    only transformers defines."""
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except TemplateSyntaxError:
        return None
