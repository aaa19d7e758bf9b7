"""A loopback HTTP/1.1 proxy that forwards to a target server and injects faults, for tests.

Faults (by a seeded schedule, a function of the request's question and its attempt number, so
the same run gets the same faults whatever the order of arrival):
- ``drop``: read the request, close the connection without a response;
- ``delay``: forward it, then hold the answer past the client's timeout and close;
- ``429``: answer 429 with a Retry-After header (not forwarded);
- ``500``: answer 500 (not forwarded);
- ``truncate``: forward it, then send the first half of the JSON body (a valid HTTP response
  whose body does not parse).

Per question (the chat's last message, plus the seed when there is one) it counts the
attempts it saw, the requests it forwarded to the target, the good answers it delivered to a
client still waiting for them, and the answers abandoned (the client had given up: timed out,
or was killed), so a test can assert that every question was answered exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus

import httpx

FAULTS = ("drop", "delay", "429", "500", "truncate")


@dataclass
class FaultSchedule:
    """``rates``: fault -> probability per attempt; at most ``max_faults_per_key`` faults for
    one question (its later attempts go through)."""

    seed: int = 0
    rates: dict[str, float] = field(default_factory=dict)
    max_faults_per_key: int = 3
    delay_s: float = 3.0
    retry_after: str = "1"

    def pick(self, key: str, attempt: int) -> str | None:
        if attempt >= self.max_faults_per_key:
            return None
        x = random.Random(f"{self.seed}/{key}/{attempt}").random()
        acc = 0.0
        for name in FAULTS:
            acc += self.rates.get(name, 0.0)
            if x < acc:
                return name
        return None


def chat_key(body: bytes) -> str | None:
    """A chat-completion request's question: its last message (and seed)."""
    try:
        data = json.loads(body)
        key = data["messages"][-1]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return key if data.get("seed") is None else f"{key}|seed={data['seed']}"


class FaultProxy:
    """``with FaultProxy("http://127.0.0.1:8080", schedule) as proxy:`` then send requests to
    ``proxy.url`` (``/v1/...`` paths are forwarded as they are)."""

    def __init__(
        self,
        target: str,
        schedule: FaultSchedule | None = None,
        key: Callable[[bytes], str | None] = chat_key,
    ):
        self.target = target.rstrip("/")
        self.schedule = schedule or FaultSchedule()
        self.key = key
        self.url = ""
        self.attempts: Counter[str] = Counter()
        self.forwarded: Counter[str] = Counter()
        self.delivered: Counter[str] = Counter()
        self.abandoned: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.inflight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._client: httpx.AsyncClient | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            self._client = httpx.AsyncClient(base_url=self.target, timeout=600, trust_env=False)
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0)
            )
            port = self._server.sockets[0].getsockname()[1]
            self.url = f"http://127.0.0.1:{port}"
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._client.aclose())
            loop.close()

        self._thread = threading.Thread(target=main, name="faultproxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fault proxy did not start")
        return self

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        async def shutdown() -> None:
            server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
            loop.stop()

        loop.call_soon_threadsafe(lambda: loop.create_task(shutdown()))
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset_counts(self) -> None:
        for c in (self.attempts, self.forwarded, self.delivered, self.abandoned, self.faults):
            c.clear()

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until no request is being served (a killed client's last ones included)."""
        end = time.monotonic() + timeout
        while self.inflight and time.monotonic() < end:
            time.sleep(0.05)

    # ---- serving -----------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                self.inflight += 1
                try:
                    keep = await self._serve(*request, reader, writer)
                finally:
                    self.inflight -= 1
                if not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _serve(
        self, method: str, path: str, headers: dict[str, str], body: bytes, reader, writer
    ) -> bool:
        """Answer one request; False closes the connection."""
        key = self.key(body) if method == "POST" else None
        fault = None
        if key is not None:
            fault = self.schedule.pick(key, self.attempts[key])
            self.attempts[key] += 1
            if fault:
                self.faults[fault] += 1
        if fault == "drop":
            return False
        if fault in ("429", "500"):
            status = int(fault)
            extra = {"Retry-After": self.schedule.retry_after} if status == 429 else {}
            await _respond(writer, status, b'{"error": {"message": "injected"}}', extra)
            return True
        if key is not None:
            self.forwarded[key] += 1
        upstream = await self._client.request(
            method,
            path,
            content=body,
            headers={"content-type": headers.get("content-type", "application/json")},
        )
        content = upstream.content
        if fault == "delay":
            await asyncio.sleep(self.schedule.delay_s)
            return False
        if fault == "truncate":
            await _respond(writer, upstream.status_code, content[: len(content) // 2])
            return True
        if reader.at_eof():  # the client closed the connection while it waited
            if key is not None:
                self.abandoned[key] += 1
            return False
        await _respond(writer, upstream.status_code, content)
        if key is not None and upstream.status_code == 200:
            self.delivered[key] += 1
        return True


async def _read_request(reader: asyncio.StreamReader):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return method, path, headers, body


async def _respond(writer, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
    head = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    head += [f"{k}: {v}" for k, v in (extra or {}).items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()
