"""A small client for any OpenAI-compatible ``/chat/completions`` endpoint (vLLM, llama.cpp's
server, Ollama, hosted APIs), with a concurrency limit, retries and a usage count.

Requests in flight never exceed ``concurrency`` (one semaphore for the whole run). A request that
times out, cannot connect, or gets 408/409/429/5xx is retried up to ``retries`` times with
exponential backoff and jitter (``Retry-After`` is honoured when the server sends it); any other
4xx is a :class:`LLMError` at once, since retrying the same request cannot help.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import random
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

T = TypeVar("T")

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class LLMError(RuntimeError):
    """A request failed for good (after its retries, or at once for a client error)."""


@dataclass
class Usage:
    """What a run cost: requests, retries, tokens (as the server reports them) and time."""

    requests: int = 0
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    started: float = field(default_factory=time.perf_counter)

    def report(self) -> str:
        seconds = time.perf_counter() - self.started
        total = self.prompt_tokens + self.completion_tokens
        return (
            f"{self.requests} requests ({self.retries} retries, {self.failures} failed), "
            f"{self.prompt_tokens:,} prompt + {self.completion_tokens:,} completion = "
            f"{total:,} tokens, {seconds:.1f} s"
        )


@dataclass(frozen=True)
class LLMConfig:
    """Where and how to ask.

    Args:
        url: the API base, e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8080/v1``.
        model: the model name the endpoint expects.
        api_key_env: the environment variable holding the key (none needed when unset).
        concurrency: requests in flight at most.
        retries: retries of a failed request.
        timeout_s: per request.
        backoff_s: first backoff; it doubles on each retry, capped at ``max_backoff_s``.
        max_tokens: the reply's limit.
        temperature: sampling temperature (0: Delphi's scorers' default).
        system_role: send system messages; ``False`` folds them into the first user message,
            as Gemma's own chat template does (llama.cpp's ``gemma`` format drops them).
    """

    url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 4
    retries: int = 5
    timeout_s: float = 120.0
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    max_tokens: int = 200
    temperature: float = 0.0
    system_role: bool = True

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"--llm-url must start with http:// or https://, not {self.url!r}")
        if not self.model.strip():
            raise ValueError("--llm-model must not be empty")
        if self.concurrency < 1 or self.retries < 0 or self.timeout_s <= 0:
            raise ValueError("--concurrency must be >= 1, --retries >= 0 and --timeout > 0")


class ChatClient:
    """Chat completions with retries: ``async with ChatClient(cfg) as c: await c.chat(m)``."""

    def __init__(self, cfg: LLMConfig, usage: Usage | None = None) -> None:
        self.cfg = cfg
        self.usage = usage or Usage()
        self.endpoint = cfg.url.rstrip("/") + "/chat/completions"
        self._limit = asyncio.Semaphore(cfg.concurrency)
        self.in_flight = 0
        self.max_in_flight = 0
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(cfg.timeout_s))

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    def _wait(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            after = response.headers.get("retry-after", "")
            try:
                return min(float(after), self.cfg.max_backoff_s)
            except ValueError:
                pass
        base = min(self.cfg.backoff_s * 2**attempt, self.cfg.max_backoff_s)
        return base * (0.5 + random.random() / 2)

    async def chat(self, messages: list[dict[str, str]], max_tokens: int | None = None) -> str:
        """The reply's text; :class:`LLMError` when the request fails for good."""
        if not self.cfg.system_role:
            messages = fold_system(messages)
        body: dict[str, Any] = {
            "model": self.cfg.model,
            "messages": messages,
            "max_tokens": max_tokens or self.cfg.max_tokens,
            "temperature": self.cfg.temperature,
        }
        last = ""
        for attempt in range(self.cfg.retries + 1):
            response: httpx.Response | None = None
            async with self._limit:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                self.usage.requests += 1
                try:
                    response = await self._http.post(self.endpoint, json=body)
                except (httpx.TimeoutException, httpx.TransportError) as e:
                    last = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                finally:
                    self.in_flight -= 1
            if response is not None:
                if response.status_code == 200:
                    return self._text(response)
                last = f"HTTP {response.status_code}: {response.text[:200]}"
                if response.status_code not in RETRY_STATUS:
                    self.usage.failures += 1
                    raise LLMError(f"{self.endpoint}: {last}")
            if attempt < self.cfg.retries:
                self.usage.retries += 1
                await asyncio.sleep(self._wait(attempt, response))
        self.usage.failures += 1
        raise LLMError(f"{self.endpoint}: gave up after {self.cfg.retries + 1} tries ({last})")

    def _text(self, response: httpx.Response) -> str:
        try:
            data = response.json()
            text = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            self.usage.failures += 1
            raise LLMError(
                f"{self.endpoint}: not a chat completion: {response.text[:200]!r}"
            ) from None
        usage = data.get("usage") or {}
        self.usage.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        self.usage.completion_tokens += int(usage.get("completion_tokens") or 0)
        return str(text or "")


def fold_system(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The system messages' text put at the start of the first user message."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if system:
        first = next((m for m in rest if m["role"] == "user"), None)
        if first is None:
            rest.insert(0, {"role": "user", "content": system})
        else:
            first["content"] = f"{system}\n\n{first['content']}"
    return rest


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from synchronous code, also where this thread already runs
    an event loop (a notebook, Playwright's sync API, a Gradio handler): then on a thread of its
    own, since :func:`asyncio.run` refuses to nest."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()
