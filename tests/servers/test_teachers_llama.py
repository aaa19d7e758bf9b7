"""The API teacher against a real OpenAI-compatible server: llama-cpp-python's server on
loopback, serving the embedded SmolLM2-135M GGUF, behind the fault-injecting proxy.

- 200 questions through dropped connections, delays past the timeout, 429 with Retry-After,
  500 and truncated JSON: every question is answered exactly once (demos file and server side).
- ``selftrain demos`` killed with SIGKILL half-way and run again: the set is completed with no
  duplicate and no missing question, and no request is made for a question already answered.

The server (session scope) is started and always stopped here; the tests are skipped only when
llama-cpp-python (with its [server] extra) is not installed (``make install`` installs it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from faultproxy import FaultProxy, FaultSchedule

from selftrain.config import TeacherConfig
from selftrain.io import read_jsonl
from selftrain.tasks import ArithmeticTask
from selftrain.teachers import Request, run_demos
from selftrain.teachers.api import ApiTeacher
from selftrain.teachers.cache import TeacherCache, cache_key
from selftrain.teachers.prompts import cot_prompt, messages

_MISSING = [m for m in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context")
            if importlib.util.find_spec(m) is None]  # fmt: skip
pytestmark = [
    pytest.mark.llama_server,
    pytest.mark.skipif(
        bool(_MISSING),
        reason=f"llama-cpp-python[server] is not installed (missing {', '.join(_MISSING)}); "
        "install it with: pip install 'llama-cpp-python[server]' (make install does)",
    ),
]

# The server answers one request at a time (~0.3 s on two idle cores, ~1.2 s when other jobs
# share them): two in flight keep it busy, and the client's timeout stays well above the wait.
TIMEOUT_S = 10.0  # the client's; the proxy's delay fault holds an answer longer than this
MAX_TOKENS = 24
CONCURRENCY = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """``python -m llama_cpp.server`` on 127.0.0.1 with the SmolLM2 GGUF; its base URL."""
    from selftrain.models import smollm2_gguf

    port = _free_port()
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(smollm2_gguf()),
        "--host", "127.0.0.1", "--port", str(port),
        "--n_threads", "2", "--n_ctx", "1024", "--verbose", "False",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 180
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"llama server exited ({proc.returncode}):\n{_tail(log_path)}")
                try:
                    if httpx.get(f"{url}/v1/models", timeout=2, trust_env=False).is_success:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"llama server did not answer in 180 s:\n{_tail(log_path)}")
                time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:]


def _report(name: str, data: dict) -> None:
    """Measurements, shown with ``pytest -s``."""
    print(f"\n[{name}] {json.dumps(data, sort_keys=True)}", file=sys.stderr)


def test_200_questions_through_injected_faults_are_each_answered_once(llama_server, tmp_path):
    task = ArithmeticTask(n_train=200)
    examples = task.load("train", 200)
    schedule = FaultSchedule(
        seed=11,
        rates={"drop": 0.05, "delay": 0.015, "429": 0.05, "500": 0.05, "truncate": 0.05},
        max_faults_per_key=3,
        delay_s=TIMEOUT_S + 1,
        retry_after="1",
    )
    with FaultProxy(llama_server, schedule) as proxy:
        teacher = ApiTeacher(
            TeacherConfig(
                kind="api",
                model="smollm2-135m-instruct",
                base_url=f"{proxy.url}/v1",
                api_key_env=None,
                max_tokens=MAX_TOKENS,
                concurrency=CONCURRENCY,
                timeout_s=TIMEOUT_S,
                max_retries=6,
                backoff_base_s=0.2,
                backoff_max_s=2.0,
            )
        )
        start = time.monotonic()
        stats = run_demos(
            teacher, task, examples, tmp_path / "d.jsonl", cache_dir=tmp_path / "c", progress=False
        )
        seconds = time.monotonic() - start
        proxy.wait_idle(TIMEOUT_S + 5)
    rows = read_jsonl(tmp_path / "d.jsonl")
    assert sorted(r["id"] for r in rows) == sorted(e.id for e in examples)  # once each
    assert all(r["status"] == "ok" for r in rows) and stats["failed"] == 0
    assert all(r["completion_tokens"] > 0 and r["text"] for r in rows)
    prompts = {cot_prompt(task, e) for e in examples}
    # each answer reached the waiting client once (an answer a client gave up on is abandoned)
    assert set(proxy.delivered) == prompts and set(proxy.delivered.values()) == {1}
    assert set(proxy.faults) == {"drop", "delay", "429", "500", "truncate"}
    errors, faults = stats["run"]["errors"], proxy.faults
    assert errors["timeout"] >= faults["delay"]  # more if the server itself was too slow
    assert errors["connection"] == faults["drop"] and errors["http_429"] == faults["429"]
    assert errors["http_500"] == faults["500"] and errors["invalid_response"] == faults["truncate"]
    assert stats["run"]["retries"] == sum(errors.values())
    _report(
        "200 through faults",
        {
            "seconds": round(seconds, 1),
            "questions_per_s": round(200 / seconds, 2),
            "http_requests": stats["run"]["requests"],
            "faults": dict(proxy.faults),
            "forwarded": sum(proxy.forwarded.values()),
            "abandoned_by_client_timeouts": sum(proxy.abandoned.values()),
            "kept": stats["kept"],
            "errors_seen": stats["run"]["errors"],
        },
    )


def test_sigkill_half_way_then_rerun_completes_the_set_asking_nothing_twice(llama_server, tmp_path):
    n = 40
    task = ArithmeticTask()
    examples = task.load("train", n)
    out, cache_dir = tmp_path / "demos.jsonl", tmp_path / "cache"
    model = "smollm2-135m-instruct"
    by_prompt = {cot_prompt(task, e): e.id for e in examples}
    signer = ApiTeacher(
        TeacherConfig(
            kind="api",
            model=model,
            base_url="http://unused/v1",
            api_key_env=None,
            max_tokens=MAX_TOKENS,
        )
    )
    key_of = {
        e.id: cache_key(signer.signature(Request(e.id, 0, messages(task, e), e))) for e in examples
    }
    env = {**os.environ, "SELFTRAIN_CACHE_DIR": str(tmp_path / "unused")}
    with FaultProxy(llama_server) as proxy:  # no faults: it counts
        cmd = [
            sys.executable, "-m", "selftrain.cli", "demos",
            "--task", "arithmetic", "--teacher", "api", "--model", model,
            "--base-url", f"{proxy.url}/v1", "--api-key-env", "NO_KEY_FOR_LOCAL",
            "--limit", str(n), "--max-tokens", str(MAX_TOKENS), "--concurrency", str(CONCURRENCY),
            "--out", str(out), "--cache-dir", str(cache_dir), "--no-progress",
        ]  # fmt: skip
        first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 300
        while _cached(cache_dir) < n // 2:
            assert first.poll() is None, first.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
        first.stderr.close()
        proxy.wait_idle()  # the killed client's last requests are through the proxy too
        cache = TeacherCache(cache_dir, f"api:{model}")
        answered = {qid for qid, key in key_of.items() if key in cache}
        written = [r["id"] for r in read_jsonl(out)]
        assert n // 2 <= len(answered) < n and len(written) <= len(answered)
        forwarded_before = {by_prompt[p] for p in proxy.forwarded}
        lost = forwarded_before - answered
        assert len(lost) <= CONCURRENCY  # a kill loses at most the requests in flight

        proxy.reset_counts()
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert second.returncode == 0, second.stderr[-3000:]
        asked = {by_prompt[p] for p in proxy.forwarded}
    rows = read_jsonl(out)
    ids = [r["id"] for r in rows if r["status"] == "ok"]
    assert sorted(ids) == sorted(e.id for e in examples)  # no duplicate, none missing
    assert not asked & answered  # nothing already answered was asked again
    assert asked == {e.id for e in examples} - answered and set(proxy.forwarded.values()) == {1}
    from_cache = sum(r.get("cached", False) for r in rows)
    assert from_cache == len(answered) - len(written)  # answered but not yet written: free
    _report(
        "sigkill",
        {
            "questions": n,
            "answered_before_kill": len(answered),
            "written_before_kill": len(written),
            "in_flight_lost": len(lost),
            "asked_by_rerun": len(asked),
            "rerun_from_cache": from_cache,
        },
    )


def _cached(folder: Path) -> int:
    if not folder.exists():
        return 0
    return sum(p.read_bytes().count(b"\n") for p in folder.glob("*.jsonl"))
