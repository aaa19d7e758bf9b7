"""Supervised fine-tuning on (prompt, completion) token pairs; loss on the completion only."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from selftrain import progress
from selftrain.models import Student
from selftrain.training.loop import batches, collate, scorer_of, token_logps
from selftrain.training.trainer import Trainer

log = logging.getLogger(__name__)


@dataclass
class SFTResult:
    steps: int  # optimizer steps taken
    best_step: int  # step whose weights the student holds at the end
    history: list[dict] = field(default_factory=list)


def train_sft(
    student: Student,
    data: Sequence[tuple[list[int], list[int]]],
    *,
    lr: float,
    batch_size: int,
    epochs: int = 1,
    max_steps: int | None = None,
    micro_batch_size: int | None = None,
    weight_decay: float = 0.0,
    warmup_ratio: float = 0.0,
    grad_clip: float = 1.0,
    seed: int = 0,
    validate: Callable[[], dict] | None = None,
    eval_every: int = 50,
    patience: int = 2,
    label: str = "sft",
) -> SFTResult:
    """Train on ``data`` for ``epochs`` (or exactly ``max_steps`` steps, cycling the data),
    ``batch_size`` examples per optimizer step over all processes, in micro-batches of
    ``micro_batch_size`` (see :mod:`selftrain.training.trainer`). The loss is the mean
    negative log-likelihood per completion token of the batch.

    With ``validate`` (returning a dict with ``accuracy`` and optionally ``loss``), it is called
    every ``eval_every`` steps and at the end; training stops once ``patience`` checks in a row
    bring no gain in accuracy, and the student is left with its best checked weights.
    """
    if not data:
        raise ValueError(f"{label}: no training examples")
    rng = random.Random(seed)
    lengths = [len(p) + len(c) for p, c in data]
    per_epoch = math.ceil(len(data) / batch_size)
    total = max_steps if max_steps is not None else epochs * per_epoch
    trainer = Trainer(
        student,
        lr=lr,
        weight_decay=weight_decay,
        total=total,
        warmup_ratio=warmup_ratio,
        grad_clip=grad_clip,
        micro_batch_size=micro_batch_size,
    )

    device = student.runtime.device

    def loss_of(module, items: list[int]):
        ids, mask, labels = collate([data[i] for i in items], student.pad_id, device)
        logp, _ = token_logps(module, ids, mask, labels)
        nll = -logp.sum()
        return nll, {"nll": nll}

    result = SFTResult(steps=0, best_step=0)
    best: tuple[float, float] | None = None
    best_state: dict[str, torch.Tensor] | None = None
    stale = 0
    plan: list[list[int]] = []
    main = student.runtime.is_main
    with progress.bar(label, total, enabled=main) as bar:
        while result.steps < total:
            if not plan:
                plan = batches(len(data), batch_size, rng, lengths)
            idx = plan.pop(0)
            tokens = sum(len(data[i][1]) for i in idx)
            loss = trainer.step(idx, loss_of, norm=tokens)["nll"] / tokens
            result.steps += 1
            bar.advance()
            bar.note(f"loss {loss:.3f}")
            at_check = result.steps % eval_every == 0 or result.steps == total
            if validate is None or not at_check:
                continue
            with trainer.student_in_sync():
                metrics = validate()
                snapshot = student.snapshot() if _better(metrics, best) else None
            entry = {"step": result.steps, "train_loss": round(loss, 4), **metrics}
            result.history.append(entry)
            if main:
                log.info("%s step %d: %s", label, result.steps, entry)
            if snapshot is not None:
                best, best_state, result.best_step, stale = (
                    _score(metrics),
                    snapshot,
                    result.steps,
                    0,
                )
            else:
                stale += 1
                if stale >= patience:
                    if main:
                        log.info("%s: validation accuracy stopped rising; stopping", label)
                    break
    trainer.finish()
    if best_state is not None:
        student.restore(best_state)
    else:
        result.best_step = result.steps
    return result


def _score(metrics: dict) -> tuple[float, float]:
    return (metrics["accuracy"], -metrics.get("loss", 0.0))


def _better(metrics: dict, best: tuple[float, float] | None) -> bool:
    return best is None or _score(metrics) > best


@torch.no_grad()
def validation_loss(
    student: Student, data: Sequence[tuple[list[int], list[int]]], batch_size: int = 16
) -> float:
    """Mean per-token loss of ``data``'s completions."""
    total, count = 0.0, 0
    scorer = scorer_of(student)
    for i in range(0, len(data), batch_size):
        ids, mask, labels = collate(data[i : i + batch_size], student.pad_id, student.device)
        logp, n = token_logps(scorer, ids, mask, labels)
        total += -logp.sum().item()
        count += n.sum().item()
    return total / max(1, count)
