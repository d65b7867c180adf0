"""An OpenAI-compatible chat endpoint (vLLM, llama.cpp server, Ollama) over plain HTTP.

The key is read from the environment variable the params name, sent only in the Authorization
header and never logged, stored or put into an error message.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx


class OpenAIGenerator:
    """Chats in, completions out, from `POST {base_url}/chat/completions` with temperature 0."""

    def __init__(self, base_url: str, model: str, api_key_env: str | None, max_new_tokens: int,
                 timeout_s: float, concurrency: int):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = self.model_id = model
        self.api_key_env = api_key_env
        self.max_new_tokens = max_new_tokens
        self.timeout_s = timeout_s
        self.concurrency = concurrency

    def generate(self, chats: list[list[dict]], progress: Callable[[int], object] = lambda n: None) -> list[str]:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        with httpx.Client(headers=headers, timeout=self.timeout_s) as client:

            def one(chat: list[dict]) -> str:
                body = {"model": self.model, "messages": chat, "max_tokens": self.max_new_tokens,
                        "temperature": 0, "stream": False}
                response = client.post(self.url, json=body)
                if response.status_code != 200:
                    hint = f" (is ${self.api_key_env} set?)" if response.status_code in (401, 403) else ""
                    raise RuntimeError(f"{self.url} answered HTTP {response.status_code}{hint}")
                progress(1)
                return (response.json()["choices"][0]["message"]["content"] or "").strip()

            with ThreadPoolExecutor(self.concurrency) as pool:
                return list(pool.map(one, chats))
