"""Greedy accuracy of a student on task examples, written per example and resumable."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

from rich.table import Table

from selftrain.io import read_jsonl
from selftrain.models import Student
from selftrain.sampling import Engine, SamplingParams, generate
from selftrain.tasks.base import Example, Task


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return (0.0, 0.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def evaluate(
    student: Student,
    task: Task,
    examples: Sequence[Example],
    *,
    max_new_tokens: int = 96,
    batch_size: int = 64,
    out: str | Path | None = None,
    label: str = "eval",
    calculator: bool = False,
    stop: str | None = None,
    engine: Engine | None = None,
) -> dict:
    """Greedy-decode every example and judge it. With ``out`` (a JSONL file), each answer is
    appended as it is made and a rerun only decodes the examples not yet in the file. With
    several processes, each decodes and judges every ``world``-th example left, every process
    gets every record, and rank 0 writes them."""
    by_id = {e.id: e for e in examples}

    def judged(batch) -> list[dict]:
        return [
            {
                "id": qid,
                "completion": texts[0],
                "extracted": task.extract(texts[0]),
                "gold": by_id[qid].answer,
                "correct": task.is_correct(texts[0], by_id[qid]),
                "tokens": lengths[0],
            }
            for qid, texts, lengths in batch
        ]

    def decoded(mine: list[Example]) -> Iterator[list[dict]]:
        params = SamplingParams(
            k=1,
            greedy=True,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            calculator=calculator,
            stop=stop,
        )
        items = [(e.id, student.prompt_ids(task.prompt(e))) for e in mine]
        return (judged(b) for b in generate(student, items, params, engine))

    rows = student.runtime.resume(examples, Path(out) if out else None, label, decoded)
    tokens = sum(r["tokens"] for r in rows)
    return {**accuracy_summary(rows), "mean_tokens": round(tokens / max(1, len(rows)), 1)}


def accuracy_summary(rows: Sequence[dict]) -> dict:
    """Accuracy, n and 95% interval of judged records (each with ``correct``)."""
    correct = sum(r["correct"] for r in rows)
    lo, hi = wilson_interval(correct, len(rows))
    return {
        "accuracy": round(correct / max(1, len(rows)), 4),
        "n": len(rows),
        "ci95": [round(lo, 4), round(hi, 4)],
    }


def correct_by_id(path: str | Path) -> dict[str, bool]:
    """Question id -> whether the answer was right, from an evaluation's JSONL file."""
    rows = read_jsonl(path)
    bad = next((i for i, r in enumerate(rows, 1) if "id" not in r or "correct" not in r), None)
    if bad is not None:
        raise ValueError(f"{path}, record {bad}: no 'id' or 'correct' field (not an eval output)")
    return {str(r["id"]): bool(r["correct"]) for r in rows}


def accuracy_table(metrics: dict, models: Sequence[str], splits: Sequence[str]) -> Table:
    """A rich table: one row per model, accuracy (and n) per split."""
    table = Table(title="accuracy (greedy)")
    table.add_column("model")
    for s in splits:
        table.add_column(s, justify="right")
    for m in models:
        if m not in metrics or not isinstance(metrics[m], dict):
            continue
        cells = []
        for s in splits:
            r = metrics[m].get(s)
            cells.append(f"{100 * r['accuracy']:.1f} (n={r['n']})" if r else "-")
        table.add_row(m, *cells)
    return table
