"""Log-likelihood scoring of multiple-choice and yes/no questions, as evaluation harnesses do:
the option whose text the model finds most likely after the question is its answer."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from selftrain.eval.generative import accuracy_summary
from selftrain.models import Student
from selftrain.tasks.base import Example
from selftrain.tasks.benchmark import BenchmarkTask
from selftrain.training.loop import TokenScorer, collate, scorer_of, token_logps

__all__ = ["evaluate_loglik"]


@torch.no_grad()
def evaluate_loglik(
    student: Student,
    task: BenchmarkTask,
    examples: Sequence[Example],
    *,
    batch_size: int = 32,
    out: str | Path | None = None,
    label: str = "eval",
) -> dict:
    """Pick the option whose text is most likely after the question (cloze style: the
    options are not listed), with log-probabilities divided by the option's length in
    characters (``acc_norm`` of evaluation harnesses; the raw sum is recorded too). With
    ``out`` (a JSONL file) each record is appended as it is made and a rerun scores only the
    questions not yet in it. With several processes each scores every ``world``-th question
    and rank 0 writes."""
    scorer = scorer_of(student)
    per_batch = max(1, batch_size // 4)

    def scored(mine: list[Example]) -> Iterator[list[dict]]:
        for i in range(0, len(mine), per_batch):
            yield _score(student, scorer, task, mine[i : i + per_batch], batch_size)

    was_training = student.model.training
    student.model.eval()
    try:
        rows = student.runtime.resume(examples, Path(out) if out else None, label, scored)
    finally:
        student.model.train(was_training)
    unnormalised = sum(r["correct_unnormalised"] for r in rows) / max(1, len(rows))
    return {**accuracy_summary(rows), "accuracy_unnormalised": round(unnormalised, 4)}


def _score(
    student: Student,
    scorer: TokenScorer,
    task: BenchmarkTask,
    chunk: list[Example],
    batch_size: int,
) -> list[dict]:
    """The records of ``chunk``: every option of every question scored, ``batch_size``
    (question, option) sequences per forward pass."""
    seqs, owners = [], []
    for e in chunk:
        context = student.prompt_ids(e.question)
        for i, text in enumerate(task.choice_continuations(e)):
            seqs.append((context, student.completion_ids(text.strip(), eos=False)))
            owners.append((e.id, i, len(text.strip())))
    logps: list[float] = []
    for b in range(0, len(seqs), batch_size):
        ids, mask, labels = collate(seqs[b : b + batch_size], student.pad_id, student.device)
        lp, _ = token_logps(scorer, ids, mask, labels)
        logps.extend(lp.tolist())
    records = []
    for e in chunk:
        scores = [
            (logps[j], logps[j] / max(1, n)) for j, (qid, _, n) in enumerate(owners) if qid == e.id
        ]
        answers = task.choice_answers(e)
        best = max(range(len(scores)), key=lambda i: scores[i][1])
        raw = max(range(len(scores)), key=lambda i: scores[i][0])
        records.append(
            {
                "id": e.id,
                "logp": [round(s[0], 4) for s in scores],
                "extracted": answers[best],
                "gold": e.answer,
                "correct": answers[best] == e.answer,
                "correct_unnormalised": answers[raw] == e.answer,
            }
        )
    return records
