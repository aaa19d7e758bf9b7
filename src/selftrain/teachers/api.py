"""A teacher behind any OpenAI-compatible chat-completions API (OpenAI, vLLM, llama.cpp's
server, Ollama, ...), asynchronous, with manners.

- At most ``concurrency`` requests in flight (an asyncio semaphore, and as many connections).
- Retries with exponential backoff and full jitter (``uniform(0, min(max, base * 2^attempt))``)
  on timeouts, connection errors, 408/409/425/429, 5xx and a body that is not the JSON of a
  chat completion (cut short, or not JSON at all). ``Retry-After`` (seconds or an HTTP date) is
  honoured instead of the backoff, and a 429 or 503 that carries it pauses every request.
- 401, 403 and 404 stop the run (a wrong key, URL or model would fail every request); any
  other 4xx fails its request at once. A request that still fails after its retries comes back
  as a completion with ``error`` set, for the caller to record and ask again next run.
- The key is read from the environment variable named by ``api_key_env`` and kept in a
  :class:`Secret`: it is sent in the Authorization header and nowhere else (not in reprs,
  errors, the cache or the run directory). Without a key no Authorization header is sent,
  which is what local servers expect.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from selftrain.teachers.base import (
    Completion,
    FatalTeacherError,
    Request,
    Teacher,
    TeacherError,
)

if TYPE_CHECKING:
    from selftrain.config import TeacherConfig

__all__ = ["DEFAULT_BASE_URL", "ApiTeacher", "Secret", "backoff_delay", "parse_retry_after"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUS = frozenset({408, 409, 425, 429})  # and every 5xx
FATAL_STATUS = frozenset({401, 403, 404})
PAUSE_STATUS = frozenset({429, 503})  # their Retry-After holds back every request
MAX_RETRY_AFTER_S = 300.0  # a longer Retry-After is cut to this


class Secret:
    """A string that never shows itself in a repr, str or format."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP date; None if
    absent or unreadable."""
    if not value or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    return rng.uniform(0.0, min(cap, base * 2.0 ** min(attempt, 32)))


class ApiTeacher(Teacher):
    """Chat completions from ``base_url`` (everything before ``/chat/completions``)."""

    cacheable = True

    def __init__(
        self,
        cfg: TeacherConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ):
        """The server, model, sampling parameters and manners come from ``cfg`` (a recipe's
        ``teacher`` section); ``transport``, ``sleep``, ``clock`` and ``rng`` are replaceable in
        tests."""
        super().__init__()
        if cfg.concurrency < 1 or cfg.max_retries < 0 or cfg.timeout_s <= 0:
            raise ValueError("need concurrency >= 1, max_retries >= 0 and timeout_s > 0")
        self.cfg = cfg
        self.model = cfg.model or ""
        self.identity = f"api:{self.model}"
        self.family = cfg.family
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self._key = Secret(os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else "")
        if not self._key and urlsplit(self.url).hostname == "api.openai.com":
            raise TeacherError(
                f"no API key for {self.url}: set the environment variable "
                f"{cfg.api_key_env or 'OPENAI_API_KEY'} (teacher.api_key_env / --api-key-env)"
            )
        self._transport = transport
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
        self._pause_until = 0.0

    # ---- what is asked ---------------------------------------------------------------------
    def params(self, sample: int) -> dict[str, Any]:
        """Sampling parameters of sample ``sample`` (sent, and part of the cache key)."""
        cfg = self.cfg
        p: dict[str, Any] = {"temperature": cfg.temperature}
        if cfg.top_p is not None:
            p["top_p"] = cfg.top_p
        if cfg.max_tokens is not None:
            p["max_tokens"] = cfg.max_tokens
        if cfg.seed is not None:
            p["seed"] = cfg.seed + sample
        p.update(cfg.extra_body)
        return p

    def signature(self, request: Request) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": request.messages,
            "params": self.params(request.sample),
            "sample": request.sample,
        }

    def _headers(self) -> dict[str, str]:
        if not self._key:
            return {}
        return {"Authorization": f"Bearer {self._key.reveal()}"}

    def redact(self, text: str) -> str:
        """``text`` with the key (should a server echo it) replaced by ***."""
        key = self._key.reveal()
        return text.replace(key, "***") if key else text

    # ---- asking ------------------------------------------------------------------------------
    async def complete(self, requests: Sequence[Request]) -> AsyncIterator[Completion]:
        if not requests:
            return
        limits = httpx.Limits(
            max_connections=self.cfg.concurrency, max_keepalive_connections=self.cfg.concurrency
        )
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(self.cfg.timeout_s), limits=limits, transport=self._transport
        ) as client:
            slots = asyncio.Semaphore(self.cfg.concurrency)
            tasks = [asyncio.create_task(self._one(client, slots, r)) for r in requests]
            try:
                for next_done in asyncio.as_completed(tasks):
                    yield await next_done
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(
        self, client: httpx.AsyncClient, slots: asyncio.Semaphore, request: Request
    ) -> Completion:
        body = {"model": self.model, "messages": request.messages, **self.params(request.sample)}
        error, attempt = "", 0
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                self.transport.retries += 1
            retry_after = None
            async with slots:
                pause = self._pause_until - self._clock()  # a 429's Retry-After holds all back
                if pause > 0:
                    await self._sleep(pause)
                self.transport.requests += 1
                try:
                    resp = await client.post(self.url, json=body, headers=self._headers())
                except httpx.TimeoutException as e:
                    kind = "timeout"
                    error = f"timeout after {self.cfg.timeout_s:g}s ({type(e).__name__})"
                except httpx.TransportError as e:  # refused, reset, dropped, body cut short
                    kind = "connection"
                    error = f"connection error ({type(e).__name__}: {self.redact(str(e))})"
                else:
                    status = resp.status_code
                    if status == 200:
                        try:
                            return self._parse(request, resp.content, attempt + 1)
                        except ValueError as e:
                            kind, error = "invalid_response", f"invalid response: {e}"
                    else:
                        kind, error = f"http_{status}", f"HTTP {status}: {self._snippet(resp)}"
                        if status in FATAL_STATUS:
                            self.transport.count_error(kind)
                            raise FatalTeacherError(self._fatal(status, resp)) from None
                        if status not in RETRY_STATUS and status < 500:
                            self.transport.count_error(kind)
                            return Completion(request, error=error, attempts=attempt + 1)
                        retry_after = parse_retry_after(resp.headers.get("retry-after"))
                        if retry_after is not None:
                            retry_after = min(retry_after, MAX_RETRY_AFTER_S)
                            if status in PAUSE_STATUS:  # everyone waits, this one included
                                until = self._clock() + retry_after
                                self._pause_until = max(self._pause_until, until)
                                retry_after = 0.0
            self.transport.count_error(kind)
            if attempt == self.cfg.max_retries:
                break
            if retry_after is None:
                retry_after = backoff_delay(
                    attempt, self.cfg.backoff_base_s, self.cfg.backoff_max_s, self._rng
                )
            if retry_after > 0:
                await self._sleep(retry_after)
        return Completion(
            request, error=f"{error}; gave up after {attempt + 1} attempts", attempts=attempt + 1
        )

    def _parse(self, request: Request, content: bytes, attempts: int) -> Completion:
        try:
            data = json.loads(content)
        except ValueError as e:
            raise ValueError(f"not JSON ({len(content)} bytes: {e})") from None
        try:
            choice = data["choices"][0]
            text = choice["message"].get("content")
            usage = data.get("usage") or {}
            prompt_tokens = int(usage.get("prompt_tokens") or 0)
            completion_tokens = int(usage.get("completion_tokens") or 0)
        except (KeyError, IndexError, TypeError, AttributeError, ValueError):
            raise ValueError("no choices[0].message in the JSON") from None
        if text is not None and not isinstance(text, str):
            raise ValueError("choices[0].message.content is not a string")
        return Completion(
            request,
            text=text or "",
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reason=choice.get("finish_reason"),
            attempts=attempts,
        )

    def _snippet(self, resp: httpx.Response, limit: int = 300) -> str:
        try:
            text = resp.text
        except (UnicodeDecodeError, httpx.HTTPError):
            text = "<unreadable body>"
        return self.redact(" ".join(text.split()))[:limit]

    def _fatal(self, status: int, resp: httpx.Response) -> str:
        where = f"{self.url} (model {self.model!r})"
        if status == 404:
            hint = "check the base URL and the model name (teacher.base_url, teacher.model)"
        else:
            state = "set" if self._key else "not set"
            hint = f"check the API key in ${self.cfg.api_key_env} ({state})"
        return f"HTTP {status} from {where}: {hint}; the server said: {self._snippet(resp)}"

    def __repr__(self) -> str:
        return f"ApiTeacher(model={self.model!r}, url={self.url!r})"
