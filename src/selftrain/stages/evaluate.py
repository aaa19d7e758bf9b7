"""Stage ``evaluate``: greedy accuracy of saved weights on every evaluation set, each answer
written as it comes (``eval/<model>/<set>.jsonl``, resumable per question); the paired
comparisons of two models on the same questions; the calculator's effect."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from selftrain import tracking
from selftrain.config import EvalConfig
from selftrain.eval.generative import correct_by_id, evaluate
from selftrain.io import read_jsonl
from selftrain.models import Student
from selftrain.progress import log
from selftrain.rundir import RunDir
from selftrain.sampling import Engine
from selftrain.stages.data import EvalSet
from selftrain.stats import compare


@dataclass
class Evaluator:
    """How a run evaluates: its student, decoding engine, evaluation sets and settings, and
    the recipe's ``calculator`` setting."""

    rd: RunDir
    student: Student
    engine: Engine
    evals: Sequence[EvalSet]
    cfg: EvalConfig
    calculator: bool

    def __call__(
        self,
        stage: str,
        key: str | tuple[str, ...],
        name: str,
        weights: Path | None = None,
        n: int | None = None,
        calculator: bool | None = None,
    ) -> dict:
        """Accuracy of ``weights`` (None: the weights the student holds) on the first ``n``
        questions (None: all) of every set, as model ``name``, unless ``stage`` is done;
        metrics.json's ``key`` gets the result, which is returned."""
        rd = self.rd
        if rd.done(stage):
            return rd.get(key)
        with rd.stage(stage):
            if weights is not None:
                self.student.load_weights(weights)
            result = {}
            for s in self.evals:
                result[s.label] = evaluate(
                    self.student,
                    s.task,
                    s.examples[:n] if n else s.examples,
                    max_new_tokens=self.cfg.max_new_tokens,
                    batch_size=self.cfg.batch_size,
                    out=rd / "eval" / name / f"{s.label}.jsonl",
                    label=f"eval {name} {s.label}",
                    calculator=self.calculator if calculator is None else calculator,
                    engine=self.engine,
                )
                if rd.runtime.is_main:
                    log.info("%s %s: %s", name, s.label, result[s.label])
                tracking.log(tracking.interval(result[s.label]), prefix=f"eval/{name}/{s.label}")
            rd.put(key, result)
        return result

    def calculator_effect(self, name: str, weights: Path, n: int | None) -> None:
        """``weights`` decoded with the calculator switched the other way, beside what the
        recipe's own setting gave on the same questions (metrics.json's ``calculator``)."""
        other = not self.calculator
        suffix = "with_calculator" if other else "no_calculator"
        key = ("calculator_evals", name)
        result = self(f"calculator.{name}", key, f"{name}.{suffix}", weights, n, other)
        table = {}
        for s in self.evals:
            rows = {r["id"]: r for r in read_jsonl(self.rd / "eval" / name / f"{s.label}.jsonl")}
            ids = [e.id for e in (s.examples[:n] if n else s.examples)]
            same = sum(rows[i]["correct"] for i in ids if i in rows) / max(1, len(ids))
            on, off = (result[s.label]["accuracy"], round(same, 4))
            if self.calculator:
                on, off = off, on
            table[s.label] = {"with": on, "without": off, "n": len(ids)}
        self.rd.put(("calculator", name), table)


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
