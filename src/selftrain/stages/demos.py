"""Stage ``demos``: the teacher's demonstrations, each judged against the ground truth and kept
when right (``demos.jsonl``, appended as answers arrive; a rerun asks only what is missing)."""

from __future__ import annotations

from selftrain.config import SRITRecipe
from selftrain.io import read_jsonl
from selftrain.rundir import RunDir
from selftrain.tasks.base import Example, Task
from selftrain.teachers import TeacherError, build_teacher, kept_demos, prices_of, run_demos


def demos(rd: RunDir, task: Task, train: list[Example], recipe: SRITRecipe) -> dict[str, list[str]]:
    """Teacher demonstrations for the first ``teacher.n_questions`` training questions
    (``teacher.n_per_question`` each), kept when verified; question id -> kept texts. A
    request that failed after its retries leaves the stage undone, so the next run asks for it
    again. The teacher asks once (rank 0); the other ranks read its answers."""
    path = rd / "demos.jsonl"
    if not rd.done("demos"):
        with rd.stage("demos"):
            if rd.runtime.is_main:
                t = recipe.teacher
                stats = run_demos(
                    build_teacher(t, task, seed=recipe.seed),
                    task,
                    train[: t.n_questions],
                    path,
                    n_per_question=t.n_per_question,
                    system_prompt=t.system_prompt,
                    cache_dir=t.cache_dir,
                    prices=prices_of(t),
                )
                if stats["failed"]:
                    raise TeacherError(
                        f"{stats['failed']} teacher requests failed after their retries (see "
                        f"{path}); run the same command again to ask for them"
                    )
                rd.set_metric("demos", stats)
    return kept_demos(read_jsonl(path))


def demo_examples(train: list[Example], kept: dict[str, list[str]]) -> list[tuple[Example, str]]:
    """One SFT example (question, demonstration) per kept demonstration."""
    return [(e, text) for e in train for text in kept.get(e.id, [])]
