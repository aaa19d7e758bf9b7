"""Teachers: the OpenAI-compatible client's retries and manners (httpx.MockTransport), the
answer cache, the demos runner's resume and failure records, the key never leaking, the local
teachers, the SRIT stage and the CLI (against an in-process fake server)."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import ClassVar

import httpx
import pytest
from fakeopenai import FakeOpenAI
from faultproxy import FaultProxy, FaultSchedule

from selftrain.config import TeacherConfig, load_recipe, parse_recipe
from selftrain.io import read_jsonl
from selftrain.tasks import ArithmeticTask
from selftrain.tasks.base import Example
from selftrain.tasks.benchmark import COT_TRIGGER, BenchmarkTask
from selftrain.teachers import (
    FatalTeacherError,
    GoldTeacher,
    HFTeacher,
    Prices,
    Request,
    SolverTeacher,
    TeacherError,
    build_teacher,
    kept_demos,
    run_demos,
    summarize,
)
from selftrain.teachers.api import ApiTeacher, backoff_delay, parse_retry_after
from selftrain.teachers.cache import TeacherCache, cache_key
from selftrain.teachers.prompts import cot_prompt, messages

SECRET = "sk-test-DO-NOT-LEAK-0123456789abcdef"


@pytest.fixture(autouse=True)
def _no_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFTRAIN_CACHE_DIR", str(tmp_path / "default-cache"))


def _task(n: int = 12) -> ArithmeticTask:
    return ArithmeticTask(n_train=max(n, 1), n_validation=2, n_test=2)


def _ok(text: str = "The answer is 4.", prompt_tokens: int = 10, completion_tokens: int = 5):
    return httpx.Response(
        200,
        json={
            "choices": [
                {"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
        },
    )


def _requests(task, n=1, k=1):
    return [Request(e.id, i, messages(task, e), e) for e in task.load("train", n) for i in range(k)]


def _collect(teacher, requests):
    async def go():
        return [c async for c in teacher.complete(requests)]

    return asyncio.run(go())


def _recorder():
    """A sleep that records and returns at once, and the clock it moves on."""
    sleeps: list[float] = []
    now = [0.0]

    async def sleep(s: float) -> None:
        sleeps.append(s)
        now[0] += s

    return sleeps, sleep, lambda: now[0]


def _api(handler, sleep=asyncio.sleep, clock=time.monotonic, **kw):
    """An API teacher of model "m" (``kw``: its TeacherConfig fields) behind ``handler``."""
    kw.setdefault("api_key_env", None)
    kw.setdefault("base_url", "http://teacher.test/v1")
    cfg = _api_cfg("m", **kw)
    return ApiTeacher(cfg, transport=httpx.MockTransport(handler), sleep=sleep, clock=clock)


def _api_cfg(model: str, **kw) -> TeacherConfig:
    return TeacherConfig(kind="api", model=model, **kw)


def _answer_of(task):
    """The right answer for every question of ``task``'s train split, by prompt."""
    return {cot_prompt(task, e): e.answer for e in task.load("train")}


# ---- Retry-After and backoff ------------------------------------------------------------
def test_retry_after_reads_seconds_and_http_dates():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 27 <= parse_retry_after(later) <= 31
    earlier = format_datetime(datetime.now(timezone.utc) - timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(earlier) == 0.0


def test_backoff_is_exponential_with_full_jitter():
    rng = random.Random(0)
    for attempt in range(12):
        cap = min(8.0, 0.5 * 2**attempt)
        draws = [backoff_delay(attempt, 0.5, 8.0, rng) for _ in range(200)]
        assert all(0 <= d <= cap for d in draws)
        assert max(draws) > 0.8 * cap and min(draws) < 0.2 * cap  # spread over [0, cap]


# ---- the client's retries --------------------------------------------------------------
def test_every_transient_fault_is_retried_and_retry_after_honoured():
    script = [
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.Response(500, text="boom"),
        httpx.Response(429, headers={"Retry-After": "7"}, text="slow down"),
        httpx.Response(502),
        httpx.Response(200, content=_ok().content[:25]),  # JSON cut short
        httpx.Response(200, json={"unexpected": True}),
        _ok("The answer is 4."),
    ]
    seen = []

    def handler(request):
        seen.append(json.loads(request.content))
        step = script[len(seen) - 1]
        if isinstance(step, Exception):
            raise step
        return step

    sleeps, sleep, clock = _recorder()
    teacher = _api(
        handler, max_retries=7, backoff_base_s=0.5, backoff_max_s=4, sleep=sleep, clock=clock
    )
    [c] = _collect(teacher, _requests(_task()))
    assert c.answered and c.text == "The answer is 4." and c.attempts == 8
    assert (c.prompt_tokens, c.completion_tokens, c.finish_reason) == (10, 5, "stop")
    assert len(seen) == 8 and all(b == seen[0] for b in seen)  # the same request each time
    # Retry-After instead of the backoff (waited out as a pause before the next attempt)
    assert len(sleeps) == 7 and sleeps[3] == pytest.approx(7.0, abs=1e-9)  # clock sums floats
    assert all(0 <= s <= 4 for s in sleeps[:3] + sleeps[4:])
    assert teacher.transport.requests == 8 and teacher.transport.retries == 7
    assert teacher.transport.errors == {
        "connection": 1,
        "timeout": 1,
        "http_500": 1,
        "http_429": 1,
        "http_502": 1,
        "invalid_response": 2,
    }


def test_a_request_that_keeps_failing_comes_back_with_its_error():
    sleep = _recorder()[1]
    teacher = _api(lambda r: httpx.Response(503, text="overloaded"), max_retries=2, sleep=sleep)
    [c] = _collect(teacher, _requests(_task()))
    assert not c.answered and c.attempts == 3
    assert "HTTP 503" in c.error and "gave up after 3 attempts" in c.error
    assert teacher.transport.requests == 3


def test_other_4xx_fail_at_once_without_retries():
    calls = []

    def handler(request):
        calls.append(1)
        return httpx.Response(400, json={"error": {"message": "context too long"}})

    [c] = _collect(_api(handler, sleep=_recorder()[1]), _requests(_task()))
    assert calls == [1] and "HTTP 400" in c.error and "context too long" in c.error


@pytest.mark.parametrize("status", [401, 403, 404])
def test_a_wrong_key_url_or_model_stops_the_run(status, monkeypatch):
    monkeypatch.setenv("MY_TEACHER_KEY", SECRET)

    def handler(request):  # a careless server that echoes the key
        return httpx.Response(status, text=f"bad request with {request.headers['authorization']}")

    teacher = _api(handler, api_key_env="MY_TEACHER_KEY")
    with pytest.raises(FatalTeacherError) as err:
        _collect(teacher, _requests(_task(), n=5))
    text = str(err.value)
    assert SECRET not in text and SECRET not in repr(err.value) and "***" in text
    assert ("MY_TEACHER_KEY" in text) == (status != 404)
    assert teacher.transport.requests <= 5


def test_openai_without_a_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(TeacherError, match="OPENAI_API_KEY"):
        ApiTeacher(_api_cfg("gpt-4o-mini"))


def test_a_local_server_needs_no_key():
    headers = []

    def handler(request):
        headers.append(dict(request.headers))
        return _ok()

    _collect(_api(handler), _requests(_task()))
    assert "authorization" not in headers[0]


def test_concurrency_is_limited():
    live, peak = 0, 0

    async def handler(request):
        nonlocal live, peak
        live += 1
        peak = max(peak, live)
        await asyncio.sleep(0.02)
        live -= 1
        return _ok()

    out = _collect(_api(handler, concurrency=3), _requests(_task(20), n=20))
    assert len(out) == 20 and peak == 3


def test_a_429_with_retry_after_holds_back_every_request():
    starts: list[float] = []
    first_429: list[float] = []

    async def handler(request):
        now = time.monotonic()
        starts.append(now)
        if not first_429:
            first_429.append(now)
            return httpx.Response(429, headers={"Retry-After": "0.5"})
        await asyncio.sleep(0.01)
        return _ok()

    out = _collect(_api(handler, concurrency=2), _requests(_task(8), n=8))
    assert all(c.answered for c in out) and len(starts) == 9
    t0 = first_429[0]
    # besides the one in flight with the 429, nothing is sent during the pause
    assert all(t < t0 + 0.15 or t >= t0 + 0.48 for t in starts)
    assert sum(1 for t in starts if t >= t0 + 0.48) >= 7


# ---- the cache --------------------------------------------------------------------------
def test_cache_key_is_model_messages_params_and_sample_not_the_url(monkeypatch):
    task = _task()
    [r] = _requests(task)
    a = ApiTeacher(_api_cfg("m", base_url="http://one/v1", api_key_env=None))
    b = ApiTeacher(_api_cfg("m", base_url="http://two/v1", api_key_env=None))
    assert cache_key(a.signature(r)) == cache_key(b.signature(r))
    hotter = ApiTeacher(_api_cfg("m", base_url="http://one/v1", api_key_env=None, temperature=0.7))
    assert cache_key(hotter.signature(r)) != cache_key(a.signature(r))
    other = Request(r.qid, 1, r.messages, r.example)
    assert cache_key(a.signature(other)) != cache_key(a.signature(r))
    monkeypatch.setenv("K", SECRET)
    keyed = ApiTeacher(_api_cfg("m", base_url="http://one/v1", api_key_env="K"))
    assert keyed.signature(r) == a.signature(r) and SECRET not in json.dumps(keyed.signature(r))


def test_cache_skips_a_torn_line_and_appends_after_it(tmp_path):
    with TeacherCache(tmp_path, "api:m") as cache:
        cache.put("k1", {"text": "one"})
        cache.put("k2", {"text": "two"})
    with open(cache.path, "ab") as f:
        f.write(b'{"key": "k3", "te')  # a kill in the middle of a write
    again = TeacherCache(tmp_path, "api:m")
    assert len(again) == 2 and again.skipped_lines == 1
    again.put("k4", {"text": "four"})
    again.close()
    last = TeacherCache(tmp_path, "api:m")
    assert sorted(last._records) == ["k1", "k2", "k4"] and last.get("k4")["text"] == "four"


def test_default_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFTRAIN_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert TeacherCache(None, "api:m").folder == tmp_path / "elsewhere"


# ---- the demos runner -------------------------------------------------------------------
def _right_or_wrong(task, wrong: set[str] = frozenset()):
    answers = {cot_prompt(task, e): (e.id, e.answer) for e in task.load("train")}

    def answer(chat) -> str:
        qid, gold = answers[chat[-1]["content"]]
        return f"Step one.\nThe answer is {int(gold) + 1 if qid in wrong else gold}."

    return answer


def _mock_server(task, wrong=frozenset(), fail=frozenset()):
    answer = _right_or_wrong(task, wrong)
    ids = {cot_prompt(task, e): e.id for e in task.load("train")}
    calls: list[str] = []

    def handler(request):
        chat = json.loads(request.content)["messages"]
        calls.append(ids[chat[-1]["content"]])
        if calls[-1] in fail:
            return httpx.Response(503, text="overloaded")
        return _ok(answer(chat), prompt_tokens=100, completion_tokens=20)

    return handler, calls


def test_demos_are_verified_and_carry_the_teacher(tmp_path):
    task = _task(6)
    examples = task.load("train", 6)
    wrong = {examples[1].id, examples[4].id}
    handler, calls = _mock_server(task, wrong)
    teacher = _api(handler, family="out-family")
    stats = run_demos(
        teacher, task, examples, tmp_path / "d.jsonl", prices=Prices(0.5, 2.0), progress=False
    )
    rows = read_jsonl(tmp_path / "d.jsonl")
    assert [r["kept"] for r in rows if r["id"] in wrong] == [False, False]
    assert {r["teacher"] for r in rows} == {"api:m"} and {r["family"] for r in rows} == {
        "out-family"
    }
    assert stats["demos"] == 6 and stats["kept"] == 4 and stats["kept_fraction"] == 0.6667
    assert stats["prompt_tokens"] == 600 and stats["completion_tokens"] == 120
    assert stats["cost"] == pytest.approx(6 * (100 * 0.5 + 20 * 2.0) / 1e6)
    assert stats["run"]["cost_paid"] == pytest.approx(stats["cost"])
    assert stats["failed"] == 0 and sorted(calls) == sorted(e.id for e in examples)
    assert set(kept_demos(rows)) == {e.id for e in examples} - wrong


def test_a_demo_cut_off_by_the_token_limit_is_rejected(tmp_path):
    task = _task(1)
    [e] = task.load("train", 1)

    def handler(request):
        return httpx.Response(
            200,
            json={
                "choices": [
                    {"message": {"content": f"So far {e.answer}"}, "finish_reason": "length"}
                ]
            },
        )

    stats = run_demos(_api(handler), task, [e], tmp_path / "d.jsonl", progress=False)
    [row] = read_jsonl(tmp_path / "d.jsonl")
    assert row["extracted"] == e.answer and not row["kept"] and row["finish_reason"] == "length"
    assert stats["kept"] == 0 and row["prompt_tokens"] == 0  # no usage given: zero


def test_a_failed_request_is_recorded_and_asked_again_next_run(tmp_path):
    task = _task(5)
    examples = task.load("train", 5)
    out = tmp_path / "d.jsonl"
    handler, calls = _mock_server(task, fail={examples[2].id})
    teacher = _api(handler, max_retries=1, sleep=_recorder()[1])
    stats = run_demos(teacher, task, examples, out, cache_dir=tmp_path / "c", progress=False)
    assert stats["failed"] == 1 and stats["demos"] == 4 and stats["run"]["failed"] == 1
    [failed] = [r for r in read_jsonl(out) if r["status"] == "failed"]
    assert failed["id"] == examples[2].id and "HTTP 503" in failed["error"]

    handler, calls = _mock_server(task)  # the server is back
    again = run_demos(_api(handler), task, examples, out, cache_dir=tmp_path / "c", progress=False)
    assert calls == [examples[2].id]  # only the failed one is asked again
    assert again["failed"] == 0 and again["demos"] == 5
    answered = [(r["id"], r["sample"]) for r in read_jsonl(out) if r["status"] == "ok"]
    assert sorted(answered) == sorted((e.id, 0) for e in examples)  # each exactly once


def test_a_rerun_takes_every_cached_answer_for_free(tmp_path):
    task = _task(8)
    examples = task.load("train", 8)
    handler, calls = _mock_server(task)
    first = run_demos(
        _api(handler), task, examples, tmp_path / "a.jsonl", cache_dir=tmp_path / "c",
        prices=Prices(1.0, 1.0), progress=False,
    )  # fmt: skip
    assert len(calls) == 8 and first["run"]["asked"] == 8
    # same run again: nothing to do; another output file: everything from the cache
    same = run_demos(_api(handler), task, examples, tmp_path / "a.jsonl", progress=False,
                     cache_dir=tmp_path / "c")  # fmt: skip
    assert same["run"]["to_do"] == 0
    other = run_demos(
        _api(handler), task, examples, tmp_path / "b.jsonl", cache_dir=tmp_path / "c",
        prices=Prices(1.0, 1.0), progress=False,
    )  # fmt: skip
    assert len(calls) == 8 and other["run"]["from_cache"] == 8 and other["run"]["requests"] == 0
    assert other["run"]["cost_paid"] == 0 and other["cost"] == first["cost"]
    rows = read_jsonl(tmp_path / "b.jsonl")
    assert all(r["cached"] for r in rows)
    a = {r["id"]: r["text"] for r in read_jsonl(tmp_path / "a.jsonl")}
    assert {r["id"]: r["text"] for r in rows} == a


def test_a_torn_demos_line_is_cut_and_its_question_asked_again(tmp_path):
    task = _task(4)
    examples = task.load("train", 4)
    out = tmp_path / "d.jsonl"
    handler, calls = _mock_server(task)
    run_demos(_api(handler), task, examples[:3], out, progress=False)
    data = out.read_bytes()
    out.write_bytes(data[: data.rfind(b"\n", 0, len(data) - 1) + 1] + b'{"id": "arith-tr')
    calls.clear()
    stats = run_demos(_api(handler), task, examples, out, progress=False)
    assert calls == [examples[3].id]  # the torn record's answer was in the cache already
    assert stats["run"]["from_cache"] == 1
    ids = [r["id"] for r in read_jsonl(out)]
    assert sorted(ids) == sorted(e.id for e in examples) and stats["demos"] == 4


def test_n_per_question_asks_each_sample_with_its_own_seed(tmp_path):
    task = _task(3)
    bodies = []

    def handler(request):
        bodies.append(json.loads(request.content))
        return _ok(f"The answer is {len(bodies)}.")

    stats = run_demos(
        _api(handler, seed=10, temperature=0.8),
        task,
        task.load("train", 3),
        tmp_path / "d.jsonl",
        n_per_question=3,
        progress=False,
    )
    assert len(bodies) == 9 and sorted({b["seed"] for b in bodies}) == [10, 11, 12]
    assert {b["temperature"] for b in bodies} == {0.8}
    rows = read_jsonl(tmp_path / "d.jsonl")
    assert sorted((r["id"], r["sample"]) for r in rows) == sorted(
        (e.id, i) for e in task.load("train", 3) for i in range(3)
    )
    assert stats["demos"] == 9 and stats["requested"] == 9


def test_the_key_never_reaches_the_cache_the_demos_the_log_or_an_error(tmp_path, monkeypatch):
    from selftrain.progress import setup_logging

    monkeypatch.setenv("TEACHER_KEY", SECRET)
    task = _task(4)
    examples = task.load("train", 4)
    attempts: dict[str, int] = {}
    answer = _right_or_wrong(task)

    def handler(request):
        assert request.headers["authorization"] == f"Bearer {SECRET}"
        chat = json.loads(request.content)["messages"]
        q = chat[-1]["content"]
        attempts[q] = attempts.get(q, 0) + 1
        if q == cot_prompt(task, examples[0]):  # always fails, echoing the key
            return httpx.Response(500, text=f"denied for key {SECRET}")
        if attempts[q] == 1:
            raise httpx.ConnectError(f"reset while sending Bearer {SECRET}")
        return _ok(answer(chat))

    log_file = tmp_path / "log.txt"
    setup_logging(log_file)
    try:
        teacher = _api(handler, api_key_env="TEACHER_KEY", max_retries=1, sleep=_recorder()[1])
        stats = run_demos(
            teacher, task, examples, tmp_path / "d.jsonl", cache_dir=tmp_path / "c", progress=False
        )
    finally:
        logging.getLogger("selftrain").handlers.clear()
    assert stats["failed"] == 1 and stats["demos"] == 3
    places = {
        "demos": (tmp_path / "d.jsonl").read_text(),
        "log": log_file.read_text(),
        "cache": "".join(p.read_text() for p in (tmp_path / "c").iterdir()),
        "stats": json.dumps(stats),
        "repr": repr(teacher) + repr(vars(teacher)) + str(teacher._key),
        "config": TeacherConfig(kind="api", model="m", api_key_env="TEACHER_KEY").model_dump_json(),
    }
    for name, text in places.items():
        assert SECRET not in text, name
    assert "***" in places["demos"] and "***" in places["log"]


# ---- local teachers and prompts ---------------------------------------------------------
def test_solver_and_gold_give_one_demo_per_question(tmp_path):
    task = _task(5)
    examples = task.load("train", 5)
    stats = run_demos(
        SolverTeacher(task), task, examples, tmp_path / "s.jsonl", n_per_question=3, progress=False
    )
    assert stats["demos"] == 5 and stats["kept"] == 5  # deterministic: one each
    bare = [Example("q1", "What is 2+2?", "4"), examples[0]]
    stats = run_demos(GoldTeacher(), task, bare, tmp_path / "g.jsonl", progress=False)
    rows = {r["id"]: r for r in read_jsonl(tmp_path / "g.jsonl")}
    assert rows["q1"]["text"] is None and not rows["q1"]["kept"] and rows[examples[0].id]["kept"]
    assert rows["q1"]["teacher"] == "gold" and stats["kept"] == 1


def test_a_task_without_a_solver_is_refused():
    class NoSolver(_Choice):
        pass

    with pytest.raises(TeacherError, match=r"teacher\.kind: gold"):
        SolverTeacher(NoSolver())


def test_hf_teacher_samples_n_per_question_with_the_local_sampler(tiny_dir, tmp_path):
    task = _task(3)
    cfg = TeacherConfig(kind="hf", model=str(tiny_dir), temperature=1.0, max_tokens=6, seed=1)
    teacher = HFTeacher(cfg)
    stats = run_demos(
        teacher,
        task,
        task.load("train", 3),
        tmp_path / "h.jsonl",
        n_per_question=2,
        system_prompt="Be brief.",
        progress=False,
    )
    rows = read_jsonl(tmp_path / "h.jsonl")
    assert len(rows) == 6 and {r["teacher"] for r in rows} == {f"hf:{tiny_dir}"}
    assert all(0 < r["completion_tokens"] <= 6 and r["prompt_tokens"] > 0 for r in rows)
    assert {r["finish_reason"] for r in rows} <= {"length", "stop"}
    assert stats["demos"] == 6 and sorted({r["sample"] for r in rows}) == [0, 1]


class _Choice(BenchmarkTask):
    name = "mini_choice"
    kind = "choice"
    files: ClassVar[dict[str, str]] = {"train": "none"}

    def read_split(self, split):
        return [Example("c1", "Which is red?", "B", meta={"choices": ["grass", "blood"]})]

    def extract(self, completion):
        return "B" if "B" in completion else None


def test_cot_prompts_follow_the_task_family():
    task = _task()
    e = task.load("train", 1)[0]
    prompt = cot_prompt(task, e)
    assert prompt.startswith(e.question) and prompt.endswith(COT_TRIGGER)
    assert "The answer is N." in prompt
    choice = _Choice(style="direct")  # the teacher is asked for CoT whatever the task's style
    c = choice.load("train")[0]
    p = cot_prompt(choice, c)
    assert "Answer Choices: (A) grass (B) blood" in p and "letter" in p and p.endswith(COT_TRIGGER)
    assert messages(task, e, "Be a tutor.")[0] == {"role": "system", "content": "Be a tutor."}


def test_summary_compares_teachers_in_one_file(tmp_path):
    task = _task(4)
    examples = task.load("train", 4)
    out = tmp_path / "d.jsonl"
    run_demos(SolverTeacher(task), task, examples, out, progress=False)
    handler, _ = _mock_server(task, wrong={examples[0].id})
    run_demos(_api(handler, family="out-family"), task, examples, out, progress=False)
    stats = {s["teacher"]: s for s in summarize(read_jsonl(out))}
    assert stats["solver"]["kept"] == 4 and stats["api:m"]["kept"] == 3
    assert stats["api:m"]["family"] == "out-family"


# ---- config, SRIT and the CLI ------------------------------------------------------------
def test_teacher_config_kinds():
    assert TeacherConfig().kind == "solver"
    with pytest.raises(ValueError, match=r"teacher\.model"):
        TeacherConfig(kind="api")
    cfg = TeacherConfig(kind="api", model="m", base_url="http://x/v1", api_key_env=None)
    assert isinstance(build_teacher(cfg, _task()), ApiTeacher)
    assert build_teacher(TeacherConfig(kind="hf", model="tiny"), _task()).identity == "hf:tiny"


def test_a_run_dir_saved_before_the_new_teacher_keys_still_resumes(tmp_path):
    import yaml

    from selftrain.rundir import RunDir

    recipe = load_recipe(None)
    saved = recipe.model_dump(mode="json")
    saved["teacher"] = {"kind": "solver", "n_questions": recipe.teacher.n_questions}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(saved))
    RunDir(tmp_path, recipe)  # no RunDirError
    other = parse_recipe({**saved, "teacher": {**saved["teacher"], "n_per_question": 2}})
    with pytest.raises(RuntimeError, match=r"teacher\.n_per_question"):
        RunDir(tmp_path, other)


def _stage_recipe(url: str, **teacher):
    return load_recipe(
        None,
        {
            "task": {"name": "arithmetic", "args": {"n_train": 6, "n_validation": 2, "n_test": 2}},
            "teacher": {
                "kind": "api",
                "model": "fake",
                "base_url": url,
                "api_key_env": None,
                "n_questions": 4,
                **teacher,
            },
            "sampling": {"offset": 0, "n_questions": 2},
        },
    )


def test_srit_demos_stage_asks_the_api_and_keeps_several_demos_per_question(tmp_path):
    from selftrain.rundir import RunDir
    from selftrain.stages import demos as stage

    task = ArithmeticTask(n_train=6, n_validation=2, n_test=2)
    train = task.load("train")
    wrong = {train[3].id}
    with FakeOpenAI(lambda chat, body: _right_or_wrong(task, wrong)(chat)) as server:
        recipe = _stage_recipe(
            f"{server.url}/v1",
            n_per_question=2,
            temperature=0.7,
            cache_dir=str(tmp_path / "c"),
            price_per_million_input=1.0,
        )
        rd = RunDir(tmp_path / "run", recipe)
        demos = stage.demos(rd, task, train, recipe)
        assert sum(server.requests.values()) == 8
    assert set(demos) == {e.id for e in train[:3]} and all(len(v) == 2 for v in demos.values())
    sft = stage.demo_examples(train, demos)
    assert len(sft) == 6 and [e.id for e, _ in sft][:2] == [train[0].id] * 2
    assert rd.metrics["demos"]["kept"] == 6 and rd.metrics["demos"]["cost"] > 0
    assert rd.done("demos")


def test_srit_demos_stage_stays_undone_while_a_request_failed(tmp_path):
    from selftrain.rundir import RunDir
    from selftrain.stages import demos as stage

    task = ArithmeticTask(n_train=6, n_validation=2, n_test=2)
    train = task.load("train")
    dead = "http://127.0.0.1:9/v1"  # the discard port: connection refused
    recipe = _stage_recipe(dead, max_retries=0, cache_dir=str(tmp_path / "c"))
    rd = RunDir(tmp_path / "run", recipe)
    with pytest.raises(TeacherError, match="4 teacher requests failed"):
        stage.demos(rd, task, train, recipe)
    assert not rd.done("demos")
    rows = read_jsonl(tmp_path / "run" / "demos.jsonl")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"failed"}


def test_cli_demos_prints_the_table_and_resumes(tmp_path):
    from typer.testing import CliRunner

    from selftrain.cli import app

    task = ArithmeticTask()
    out = tmp_path / "demos.jsonl"
    with FakeOpenAI(lambda chat, body: _right_or_wrong(task)(chat)) as server:

        def args(limit: int) -> list[str]:
            return [
                "demos", "--task", "arithmetic", "--teacher", "api", "--model", "fake",
                "--base-url", f"{server.url}/v1", "--api-key-env", "NO_SUCH_VAR_SET",
                "--limit", str(limit), "--out", str(out), "--cache-dir", str(tmp_path / "c"),
                "--family", "in-family", "--price-input", "1", "--no-progress",
            ]  # fmt: skip

        first = CliRunner().invoke(app, args(5))
        assert first.exit_code == 0, first.output
        assert "api:fake" in first.output and "in-family" in first.output
        assert "5 asked" in first.output
        again = CliRunner().invoke(app, args(7))
        assert again.exit_code == 0, again.output
        assert "2 to do, 0 from the cache, 2 asked" in again.output
        assert sum(server.requests.values()) == 7
    assert len(read_jsonl(out)) == 7


def test_cli_demos_exits_nonzero_while_requests_failed(tmp_path):
    from typer.testing import CliRunner

    from selftrain.cli import app

    args = [
        "demos", "--task", "arithmetic", "--teacher", "api", "--model", "fake",
        "--base-url", "http://127.0.0.1:9/v1", "--limit", "2", "--max-retries", "0",
        "--out", str(tmp_path / "d.jsonl"), "--cache-dir", str(tmp_path / "c"), "--no-progress",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "2 requests failed" in result.output


# ---- the fault proxy against the fake server (fast; the real server: test_teachers_llama) -
def test_every_question_is_answered_once_through_the_fault_proxy(tmp_path):
    task = ArithmeticTask(n_train=200)
    examples = task.load("train", 200)
    schedule = FaultSchedule(
        seed=3,
        rates={"drop": 0.08, "delay": 0.04, "429": 0.08, "500": 0.08, "truncate": 0.08},
        delay_s=2.5,
        retry_after="0.2",
    )
    with (
        FakeOpenAI(lambda chat, body: _right_or_wrong(task)(chat)) as server,
        FaultProxy(server.url, schedule) as proxy,
    ):
        teacher = ApiTeacher(
            _api_cfg(
                "fake",
                base_url=f"{proxy.url}/v1",
                api_key_env=None,
                concurrency=8,
                timeout_s=2.0,
                max_retries=5,
                backoff_base_s=0.02,
                backoff_max_s=0.2,
            )
        )
        stats = run_demos(
            teacher, task, examples, tmp_path / "d.jsonl", cache_dir=tmp_path / "c", progress=False
        )
        proxy.wait_idle()
    rows = read_jsonl(tmp_path / "d.jsonl")
    assert sorted(r["id"] for r in rows) == sorted(e.id for e in examples)
    assert all(r["status"] == "ok" and r["kept"] for r in rows)
    prompts = {cot_prompt(task, e) for e in examples}
    assert set(proxy.delivered) == prompts and set(proxy.delivered.values()) == {1}
    assert sum(proxy.faults.values()) >= 40 and set(proxy.faults) == {
        "drop",
        "delay",
        "429",
        "500",
        "truncate",
    }
    errors, faults = stats["run"]["errors"], proxy.faults
    assert errors["timeout"] >= faults["delay"]  # more only if this machine stalled for 2 s
    assert errors["connection"] == faults["drop"] and errors["http_429"] == faults["429"]
    assert errors["http_500"] == faults["500"] and errors["invalid_response"] == faults["truncate"]
    assert stats["run"]["retries"] == sum(errors.values())
