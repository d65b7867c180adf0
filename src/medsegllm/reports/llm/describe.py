"""An LLM description backend: cached, batched generation, each sentence checked by the guard.

A report's description is one LLM sentence per grounded lesion (largest first), or one sentence for
a report without lesions. If any sentence fails `guard.check_sentence`, the whole description falls
back to the rules template and the row says so (backend `rules`); summary.json counts both outcomes.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from tqdm.auto import tqdm

from medsegllm.reports.backends import Description, RulesBackend, ordered_lesions
from medsegllm.reports.guard import check_sentence
from medsegllm.reports.llm.cache import TextCache, cache_key
from medsegllm.reports.llm.prompt import messages

log = logging.getLogger(__name__)


class Generator(Protocol):
    """Local (`local.TransformersGenerator`) or remote (`remote.OpenAIGenerator`) text generation."""

    model_id: str

    def generate(self, chats: list[list[dict]], progress: Callable[[int], object] = ...) -> list[str]: ...


class LLMBackend:
    """The `Backend` protocol of `backends.py` over any Generator."""

    def __init__(self, name: str, generator: Generator, prompt_version: str, max_new_tokens: int, cache_dir: Path | None):
        self.name = name
        self.model_id = generator.model_id
        self.generator = generator
        self.prompt_version = prompt_version
        self.max_new_tokens = max_new_tokens
        self.cache = TextCache(cache_dir)
        self.stats: dict = {}

    def describe(self, findings: list[dict]) -> list[Description]:
        per_report = [ordered_lesions(f) or [None] for f in findings]
        chats: dict[str, list[dict]] = {}
        keys = []
        for lesions in per_report:
            keys.append([])
            for lesion in lesions:
                chat = messages(lesion)
                key = cache_key(chat, self.name, self.model_id, self.prompt_version, self.max_new_tokens)
                chats.setdefault(key, chat)
                keys[-1].append(key)
        texts = self._texts(chats)
        rules = RulesBackend().describe(findings)
        out, reasons = [], Counter()
        for lesions, report_keys, fallback in zip(per_report, keys, rules, strict=True):
            failed = [r for r in (check_sentence(texts[k], lesion) for k, lesion in zip(report_keys, lesions)) if r]
            reasons.update(failed)
            out.append(fallback if failed else Description(" ".join(texts[k] for k in report_keys), self.name, self.model_id))
        rejected = sum(d.backend != self.name for d in out)
        self.stats.update(llm_accepted=len(out) - rejected, llm_rejected=rejected, llm_reject_reasons=dict(sorted(reasons.items())))
        if rejected:
            log.info("%s: %d of %d descriptions failed the guard (%s); rules descriptions used instead",
                     self.name, rejected, len(out), dict(reasons))
        return out

    def _texts(self, chats: dict[str, list[dict]]) -> dict[str, str]:
        """Cached text where present; the rest generated in one batched pass and cached."""
        texts = {key: self.cache.get(key) for key in chats}
        missing = [key for key, text in texts.items() if text is None]
        self.stats.update(llm_prompts=len(chats), llm_cache_hits=len(chats) - len(missing), llm_generated=len(missing))
        if missing:
            with tqdm(total=len(missing), desc=f"describe ({self.name})", unit="prompt", disable=None) as bar:
                generated = self.generator.generate([chats[key] for key in missing], progress=bar.update)
            meta = {"backend": self.name, "model_id": self.model_id, "prompt_version": self.prompt_version}
            for key, text in zip(missing, generated, strict=True):
                texts[key] = text
                self.cache.put(key, text, meta)
        return texts
