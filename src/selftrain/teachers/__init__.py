"""Teachers: who writes the demonstrations, and the demos stage that asks them.

``build_teacher(cfg, task)`` makes one from a recipe's ``teacher`` section:
- ``api``: :class:`ApiTeacher`, any OpenAI-compatible chat-completions server (cached);
- ``hf``: :class:`HFTeacher`, a local transformers model;
- ``gold``: :class:`GoldTeacher`, the dataset's gold rationales;
- ``solver``: :class:`SolverTeacher`, the generated task's solver.
``run_demos`` asks it for n demonstrations per question and verifies each (``demos.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from selftrain.tasks.base import Task
from selftrain.tasks.benchmark import BenchmarkTask
from selftrain.teachers.base import (
    Completion,
    FatalTeacherError,
    Request,
    Teacher,
    TeacherError,
)
from selftrain.teachers.demos import Prices, kept_demos, run_demos, summarize
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
    "summarize",
]


def build_teacher(cfg: TeacherConfig, task: Task, seed: int = 0) -> Teacher:
    """The teacher a recipe's ``teacher`` section describes."""
    if cfg.kind == "solver":
        teacher: Teacher = SolverTeacher(task)
    elif cfg.kind == "gold":
        teacher = GoldTeacher()
    elif cfg.kind == "hf":
        teacher = HFTeacher(
            cfg.model or "",
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_tokens=cfg.max_tokens or 512,
            batch_size=cfg.batch_size,
            seed=cfg.seed if cfg.seed is not None else seed,
            stop=BenchmarkTask.stop_regex,  # the line the CoT prompt asks to end with
        )
    else:
        from selftrain.teachers.api import ApiTeacher  # httpx only where it is needed

        teacher = ApiTeacher(
            cfg.model or "",
            base_url=cfg.base_url,
            api_key_env=cfg.api_key_env,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_tokens=cfg.max_tokens,
            seed=cfg.seed,
            extra_body=cfg.extra_body,
            concurrency=cfg.concurrency,
            timeout_s=cfg.timeout_s,
            max_retries=cfg.max_retries,
            backoff_base_s=cfg.backoff_base_s,
            backoff_max_s=cfg.backoff_max_s,
        )
    teacher.family = cfg.family
    return teacher


def prices_of(cfg: TeacherConfig) -> Prices:
    return Prices(cfg.price_per_million_input, cfg.price_per_million_output)
