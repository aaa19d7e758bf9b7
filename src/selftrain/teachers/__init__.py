"""Teachers: who writes the demonstrations, and the demos stage that asks them.

``build_teacher(cfg, task)`` makes one from a recipe's ``teacher`` section:
- ``api``: :class:`ApiTeacher`, any OpenAI-compatible chat-completions server (cached);
- ``hf``: :class:`HFTeacher`, a local transformers model;
- ``gold``: :class:`GoldTeacher`, the dataset's gold rationales;
- ``solver``: :class:`SolverTeacher`, the generated task's solver.
``run_demos`` asks it for n demonstrations per question and verifies each (``demos.py``);
``teacher_demos`` does both for a recipe's ``teacher`` section.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selftrain.tasks.base import Example, Task
from selftrain.tasks.benchmark import BenchmarkTask
from selftrain.teachers.base import (
    Completion,
    FatalTeacherError,
    Request,
    Teacher,
    TeacherError,
)
from selftrain.teachers.demos import (
    Prices,
    kept_demos,
    run_demos,
    run_line,
    summarize,
    summary_table,
)
from selftrain.teachers.local import GoldTeacher, HFTeacher, SolverTeacher

if TYPE_CHECKING:
    from selftrain.config import TeacherConfig

__all__ = [
    "Completion",
    "FatalTeacherError",
    "GoldTeacher",
    "HFTeacher",
    "Prices",
    "Request",
    "SolverTeacher",
    "Teacher",
    "TeacherError",
    "build_teacher",
    "kept_demos",
    "prices_of",
    "run_demos",
    "run_line",
    "summarize",
    "summary_table",
    "teacher_demos",
]


def build_teacher(cfg: TeacherConfig, task: Task, seed: int = 0) -> Teacher:
    """The teacher a recipe's ``teacher`` section describes."""
    if cfg.kind == "solver":
        teacher: Teacher = SolverTeacher(task)
    elif cfg.kind == "gold":
        teacher = GoldTeacher()
    elif cfg.kind == "hf":
        # the line the CoT prompt asks to end with
        teacher = HFTeacher(cfg, seed=seed, stop=BenchmarkTask.stop_regex)
    else:
        from selftrain.teachers.api import ApiTeacher  # httpx only where it is needed

        teacher = ApiTeacher(cfg)
    teacher.family = cfg.family
    return teacher


def prices_of(cfg: TeacherConfig) -> Prices:
    """The prices of ``cfg``'s tokens (for the cost statistic)."""
    return Prices(cfg.price_per_million_input, cfg.price_per_million_output)


def teacher_demos(
    cfg: TeacherConfig,
    task: Task,
    examples: Sequence[Example],
    out: str | Path,
    *,
    seed: int = 0,
    progress: bool = True,
) -> tuple[Teacher, dict[str, Any]]:
    """The teacher ``cfg`` describes and its :func:`run_demos` statistics on ``examples``
    (``cfg.n_per_question`` each, with its system prompt, cache and prices)."""
    teacher = build_teacher(cfg, task, seed)
    stats = run_demos(
        teacher,
        task,
        examples,
        out,
        n_per_question=cfg.n_per_question,
        system_prompt=cfg.system_prompt,
        cache_dir=cfg.cache_dir,
        prices=prices_of(cfg),
        progress=progress,
    )
    return teacher, stats
