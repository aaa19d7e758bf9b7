"""Stage ``evaluate``: greedy accuracy of saved weights on every evaluation set, each answer
written as it comes (``eval/<model>/<set>.jsonl``, resumable per question); the paired
comparisons of two models on the same questions; the calculator's effect."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from selftrain.config import EvalConfig
from selftrain.eval.generative import correct_by_id, evaluate
from selftrain.io import read_jsonl
from selftrain.models import Student
from selftrain.progress import log
from selftrain.rundir import RunDir
from selftrain.sampling import Engine
from selftrain.stages.data import EvalSet
from selftrain.stats import compare


def evaluate_stage(
    rd: RunDir,
    stage: str,
    key: str | tuple[str, ...],
    name: str,
    student: Student,
    engine: Engine,
    evals: Sequence[EvalSet],
    cfg: EvalConfig,
    *,
    calculator: bool,
    weights: Path | None = None,
    n: int | None = None,
) -> dict:
    """Accuracy of ``weights`` (None: the weights the student holds) on the first ``n``
    questions (None: all) of every set, as model ``name``, unless ``stage`` is done;
    metrics.json's ``key`` gets the result, which is returned."""
    if rd.done(stage):
        return rd.get(key)
    with rd.stage(stage):
        if weights is not None:
            student.load_weights(weights)
        result = {}
        for s in evals:
            result[s.label] = evaluate(
                student,
                s.task,
                s.examples[:n] if n else s.examples,
                max_new_tokens=cfg.max_new_tokens,
                batch_size=cfg.batch_size,
                out=rd / "eval" / name / f"{s.label}.jsonl",
                label=f"eval {name} {s.label}",
                calculator=calculator,
                engine=engine,
            )
            if rd.runtime.is_main:
                log.info("%s %s: %s", name, s.label, result[s.label])
        rd.put(key, result)
    return result


def compare_stage(rd: RunDir, final: str, splits: Sequence[str]) -> None:
    """Paired comparisons of the self-refined student ``final`` with sft and sft_more (and of
    sft_more with sft) on the questions both answered: metrics.json's ``compare``."""
    out = {}
    models = [m for m in ("sft", "sft_more") if rd.done(f"eval_{m}")]
    versus = [(final, m) for m in models] + ([("sft_more", "sft")] if len(models) == 2 else [])
    for a, b in versus:
        out[f"{a}_vs_{b}"] = {
            split: compare(
                correct_by_id(rd / "eval" / a / f"{split}.jsonl"),
                correct_by_id(rd / "eval" / b / f"{split}.jsonl"),
            )
            for split in splits
        }
    rd.set_metric("compare", out)


def calculator_stage(
    rd: RunDir,
    name: str,
    student: Student,
    engine: Engine,
    evals: Sequence[EvalSet],
    cfg: EvalConfig,
    *,
    calculator: bool,
    weights: Path,
    n: int | None,
) -> None:
    """``weights`` decoded with the calculator switched the other way from the recipe's
    ``calculator``, beside what the recipe's own setting gave on the same questions
    (metrics.json's ``calculator``)."""
    other = not calculator
    suffix = "with_calculator" if other else "no_calculator"
    result = evaluate_stage(
        rd,
        f"calculator.{name}",
        ("calculator_evals", name),
        f"{name}.{suffix}",
        student,
        engine,
        evals,
        cfg,
        calculator=other,
        weights=weights,
        n=n,
    )
    table = {}
    for s in evals:
        rows = {r["id"]: r for r in read_jsonl(rd / "eval" / name / f"{s.label}.jsonl")}
        ids = [e.id for e in (s.examples[:n] if n else s.examples)]
        same = sum(rows[i]["correct"] for i in ids if i in rows) / max(1, len(ids))
        on, off = (result[s.label]["accuracy"], round(same, 4))
        if calculator:
            on, off = off, on
        table[s.label] = {"with": on, "without": off, "n": len(ids)}
    rd.put(("calculator", name), table)
