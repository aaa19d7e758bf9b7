"""The demos stage: n demonstrations per question from a teacher, each verified against the
ground truth and written down as it arrives.

A demonstration is kept when the task judges its answer right and it was not cut off by the
token limit (``finish_reason: length``). Every (teacher, question, sample) is answered once.
The demos file is appended one fsynced record at a time; a rerun skips every (teacher, question,
sample) it already holds, takes the answers the cache holds for free, and asks the teacher for
the rest only. A request that failed after its retries is written as ``status: failed`` with its
error and asked again on the next run; it is never dropped in silence.

A record: ``id, sample, teacher, family, status (ok | failed), text, kept, extracted,
prompt_tokens, completion_tokens, cost, cached, attempts, finish_reason`` (``error`` when
failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.table import Table

from selftrain.io import JsonlWriter, read_jsonl
from selftrain.progress import Bar, bar, log
from selftrain.tasks.base import Example, Task
from selftrain.teachers.base import Completion, Request, Teacher
from selftrain.teachers.cache import TeacherCache, cache_key
from selftrain.teachers.prompts import messages

__all__ = [
    "Prices",
    "answered_rows",
    "demo_key",
    "kept_demos",
    "run_demos",
    "run_line",
    "summarize",
    "summary_table",
]


@dataclass(frozen=True)
class Prices:
    """US dollars per million prompt (input) and completion (output) tokens."""

    input: float | None = None
    output: float | None = None

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        if self.input is None and self.output is None:
            return None
        total = prompt_tokens * (self.input or 0.0) + completion_tokens * (self.output or 0.0)
        return round(total / 1e6, 8)


def demo_key(row: dict[str, Any]) -> tuple[str, str, int]:
    """(teacher, question id, sample index): what is answered exactly once."""
    return str(row.get("teacher")), str(row["id"]), int(row.get("sample", 0))


def _ok(row: dict[str, Any]) -> bool:
    return row.get("status", "ok") == "ok"


def answered_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The answered records, one per (teacher, question, sample) (the first one)."""
    seen: set[tuple[str, str, int]] = set()
    out = []
    for r in rows:
        key = demo_key(r)
        if _ok(r) and key not in seen:
            seen.add(key)
            out.append(r)
    return out


def unresolved_failures(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, str, int], str]:
    """(teacher, question, sample) -> last error, for requests that failed and were never
    answered since."""
    rows = list(rows)
    done = {demo_key(r) for r in rows if _ok(r)}
    return {demo_key(r): r.get("error", "") for r in rows if not _ok(r) and demo_key(r) not in done}


def kept_demos(rows: Iterable[dict[str, Any]]) -> dict[str, list[str]]:
    """Question id -> the texts of its kept demonstrations, in sample order."""
    out: dict[str, list[tuple[int, str]]] = {}
    for r in answered_rows(rows):
        if r.get("kept") and r.get("text") is not None:
            out.setdefault(str(r["id"]), []).append((int(r.get("sample", 0)), r["text"]))
    return {qid: [t for _, t in sorted(v)] for qid, v in out.items()}


def summarize(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Statistics per teacher: questions, demonstrations, kept (and %), questions with a kept
    demonstration, tokens, cost (where priced), unresolved failures."""
    rows = list(rows)
    failures = unresolved_failures(rows)
    by_teacher: dict[str, list[dict[str, Any]]] = {}
    for r in answered_rows(rows):
        by_teacher.setdefault(str(r.get("teacher")), []).append(r)
    for teacher, _, _ in failures:
        by_teacher.setdefault(teacher, [])
    out = []
    for teacher, rs in by_teacher.items():
        kept = [r for r in rs if r.get("kept")]
        costs = [r["cost"] for r in rs if r.get("cost") is not None]
        family = next((r.get("family") for r in rs if r.get("family")), None)
        out.append(
            {
                "teacher": teacher,
                "family": family,
                "questions": len({r["id"] for r in rs}),
                "demos": len(rs),
                "kept": len(kept),
                "kept_fraction": round(len(kept) / max(1, len(rs)), 4),
                "questions_with_kept": len({r["id"] for r in kept}),
                "prompt_tokens": sum(int(r.get("prompt_tokens") or 0) for r in rs),
                "completion_tokens": sum(int(r.get("completion_tokens") or 0) for r in rs),
                "cost": round(sum(costs), 6) if costs else None,
                "failed": sum(1 for k in failures if k[0] == teacher),
            }
        )
    return out


def run_demos(
    teacher: Teacher,
    task: Task,
    examples: Sequence[Example],
    out: str | Path,
    *,
    n_per_question: int = 1,
    system_prompt: str | None = None,
    cache_dir: str | Path | None = None,
    prices: Prices | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Ask ``teacher`` for ``n_per_question`` demonstrations of each example (one for a
    deterministic teacher), verify each with ``task.is_correct``, append them to ``out``.

    Returns the statistics of this teacher on these questions (see :func:`summarize`) with
    ``requested`` and ``run``: what this call did (to do, from cache, asked, answered, failed,
    requests, retries, errors by kind, seconds, cost of the answers paid for now). Resumable:
    see the module docstring."""
    out = Path(out)
    prices = prices or Prices()
    n = 1 if teacher.deterministic else n_per_question
    examples = list({e.id: e for e in examples}.values())
    wanted = {(teacher.identity, e.id, i) for e in examples for i in range(n)}
    with JsonlWriter(out) as writer:  # opening it first cuts a torn last line
        done = {demo_key(r) for r in read_jsonl(out) if _ok(r)}
        todo = [
            Request(e.id, i, messages(task, e, system_prompt), e)
            for e in examples
            for i in range(n)
            if (teacher.identity, e.id, i) not in done
        ]
        start = time.monotonic()
        cache = TeacherCache(cache_dir, teacher.identity) if teacher.cacheable else None
        with contextlib.ExitStack() as stack:
            if cache is not None:
                stack.enter_context(cache)
            b = stack.enter_context(bar(f"demos {teacher.identity}", len(todo), enabled=progress))
            recorder = _Recorder(teacher, task, examples, prices, writer, cache, b, len(todo))
            recorder.ask(*recorder.answer_from_cache(todo))
        rows = [r for r in read_jsonl(out) if demo_key(r) in wanted]
    return _run_stats(recorder, rows, len(wanted), time.monotonic() - start)


class _Recorder:
    """Writes down each completion of one :func:`run_demos` call as it comes (the cache first,
    for a paid answer) and counts what the call did."""

    def __init__(
        self,
        teacher: Teacher,
        task: Task,
        examples: Sequence[Example],
        prices: Prices,
        writer: JsonlWriter,
        cache: TeacherCache | None,
        progress: Bar,
        to_do: int,
    ):
        self.teacher, self.task, self.prices = teacher, task, prices
        self.by_id = {e.id: e for e in examples}
        self.writer, self.cache, self.progress = writer, cache, progress
        self.run = {"to_do": to_do, "from_cache": 0, "asked": 0, "answered": 0, "failed": 0}
        self.kept = 0
        self.paid = 0.0

    def record(self, c: Completion, key: str | None) -> None:
        cache, run = self.cache, self.run
        if c.answered and cache is not None and key is not None and not c.cached:
            cache.put(key, _cache_record(self.teacher, c))  # paid once: on disk first
        row = _row(self.teacher, self.task, self.by_id[c.request.qid], c, self.prices)
        self.writer.write_many([row])
        if c.answered:
            run["answered"] += 1
            self.kept += bool(row["kept"])
            if not c.cached and row["cost"] is not None:
                self.paid += row["cost"]
        else:
            run["failed"] += 1
            log.warning("request failed (asked again next run): %s", c.error)
        self.progress.advance(1)
        self.progress.note(f"kept {self.kept}/{run['answered']}, failed {run['failed']}")

    def answer_from_cache(
        self, todo: list[Request]
    ) -> tuple[list[Request], dict[tuple[str, int], str]]:
        """Record the requests the cache answers; the others, and their cache keys."""
        cache = self.cache
        keys: dict[tuple[str, int], str] = {}
        misses = []
        for r in todo:
            key = cache_key(self.teacher.signature(r)) if cache is not None else None
            hit = cache.get(key) if cache is not None and key is not None else None
            if hit is not None:
                self.run["from_cache"] += 1
                self.record(_from_cache(r, hit), key)
            else:
                if key is not None:
                    keys[r.qid, r.sample] = key
                misses.append(r)
        self.run["asked"] = len(misses)
        return misses, keys

    def ask(self, misses: list[Request], keys: dict[tuple[str, int], str]) -> None:
        """Ask the teacher for ``misses``, recording each completion as it arrives."""

        async def ask() -> None:
            async with contextlib.aclosing(self.teacher.complete(misses)) as stream:
                async for c in stream:
                    self.record(c, keys.get((c.request.qid, c.request.sample)))

        if misses:
            asyncio.run(ask())


def _run_stats(
    recorder: _Recorder, rows: list[dict[str, Any]], requested: int, seconds: float
) -> dict[str, Any]:
    """:func:`run_demos`'s result: the teacher's statistics on ``rows`` and what the run did."""
    teacher = recorder.teacher
    stats = summarize(rows)
    mine = next((s for s in stats if s["teacher"] == teacher.identity), None) or _empty(teacher)
    run = recorder.run
    run.update(teacher.transport.as_dict())
    run["seconds"] = round(seconds, 2)
    run["cost_paid"] = round(recorder.paid, 6) if recorder.prices.cost(0, 0) is not None else None
    mine["requested"] = requested
    mine["run"] = run
    log.info(
        "demos %s: %d/%d answered, %d kept, %d failed (%d from cache, %d asked, %.1fs)",
        teacher.identity,
        mine["demos"],
        requested,
        mine["kept"],
        mine["failed"],
        run["from_cache"],
        run["asked"],
        seconds,
    )
    return mine


def summary_table(stats: list[dict[str, Any]], out: Path) -> Table:
    """:func:`summarize`'s statistics of the demos file ``out`` as a rich table."""
    table = Table(
        "teacher",
        "family",
        "questions",
        "demos",
        "kept",
        "kept %",
        "q. with kept",
        "tokens in",
        "tokens out",
        "cost $",
        "failed",
        title=str(out),
    )
    for s in stats:
        table.add_row(
            s["teacher"],
            s["family"] or "-",
            str(s["questions"]),
            str(s["demos"]),
            str(s["kept"]),
            f"{100 * s['kept_fraction']:.1f}",
            str(s["questions_with_kept"]),
            f"{s['prompt_tokens']:,}",
            f"{s['completion_tokens']:,}",
            "-" if s["cost"] is None else f"{s['cost']:.4f}",
            str(s["failed"]),
        )
    return table


def run_line(identity: str, run: dict[str, Any]) -> str:
    """One line on what a :func:`run_demos` call did (its statistics' ``run``)."""
    error_counts = ", ".join(f"{k} {v}" for k, v in sorted(run["errors"].items())) or "none"
    paid = f", paid now ${run['cost_paid']:.4f}" if run["cost_paid"] is not None else ""
    return (
        f"this run ({identity}): {run['to_do']} to do, {run['from_cache']} from the cache, "
        f"{run['asked']} asked, {run['requests']} HTTP requests, {run['retries']} retries "
        f"(errors: {error_counts}), {run['seconds']:.1f}s{paid}"
    )


def _empty(teacher: Teacher) -> dict[str, Any]:
    return {
        "teacher": teacher.identity,
        "family": teacher.family,
        "questions": 0,
        "demos": 0,
        "kept": 0,
        "kept_fraction": 0.0,
        "questions_with_kept": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cost": None,
        "failed": 0,
    }


def _row(
    teacher: Teacher, task: Task, example: Example, c: Completion, prices: Prices
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": example.id,
        "sample": c.request.sample,
        "teacher": teacher.identity,
        "family": teacher.family,
    }
    if not c.answered:
        return {
            **row,
            "status": "failed",
            "text": None,
            "kept": False,
            "error": c.error,
            "attempts": c.attempts,
        }
    # a demonstration cut off by the token limit is rejected even where its last number is right
    ok = c.text is not None and c.finish_reason != "length" and task.is_correct(c.text, example)
    return {
        **row,
        "status": "ok",
        "text": c.text,
        "kept": bool(ok),
        "extracted": task.extract(c.text) if c.text else None,
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "cost": prices.cost(c.prompt_tokens, c.completion_tokens),
        "cached": c.cached,
        "attempts": c.attempts,
        "finish_reason": c.finish_reason,
    }


def _cache_record(teacher: Teacher, c: Completion) -> dict[str, Any]:
    return {
        "teacher": teacher.identity,
        "sample": c.request.sample,
        "text": c.text,
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "finish_reason": c.finish_reason,
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _from_cache(request: Request, record: dict[str, Any]) -> Completion:
    return Completion(
        request,
        text=record.get("text"),
        prompt_tokens=int(record.get("prompt_tokens") or 0),
        completion_tokens=int(record.get("completion_tokens") or 0),
        finish_reason=record.get("finish_reason"),
        attempts=0,
        cached=True,
    )
