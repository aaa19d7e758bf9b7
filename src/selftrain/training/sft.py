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
from selftrain.training.loop import batches, collate, optimizer_and_schedule, token_logps

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
    weight_decay: float = 0.0,
    warmup_ratio: float = 0.0,
    grad_clip: float = 1.0,
    seed: int = 0,
    validate: Callable[[], dict] | None = None,
    eval_every: int = 50,
    patience: int = 2,
    label: str = "sft",
) -> SFTResult:
    """Train on ``data`` for ``epochs`` (or exactly ``max_steps`` steps, cycling the data).

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
    opt, sched = optimizer_and_schedule(
        student.trainable_parameters(), lr, weight_decay, total, warmup_ratio
    )
    result = SFTResult(steps=0, best_step=0)
    best: tuple[float, float] | None = None
    best_state: dict[str, torch.Tensor] | None = None
    stale = 0
    plan: list[list[int]] = []
    student.model.train()
    with progress.bar(label, total) as bar:
        while result.steps < total:
            if not plan:
                plan = batches(len(data), batch_size, rng, lengths)
            idx = plan.pop(0)
            ids, mask, labels = collate([data[i] for i in idx], student.pad_id, student.device)
            logp, count = token_logps(student, ids, mask, labels)
            loss = -logp.sum() / count.sum()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.trainable_parameters(), grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            result.steps += 1
            bar.advance()
            bar.note(f"loss {loss.item():.3f}")
            at_check = result.steps % eval_every == 0 or result.steps == total
            if validate is None or not at_check:
                continue
            student.model.eval()
            metrics = validate()
            student.model.train()
            entry = {"step": result.steps, "train_loss": round(loss.item(), 4), **metrics}
            result.history.append(entry)
            log.info("%s step %d: %s", label, result.steps, entry)
            score = (metrics["accuracy"], -metrics.get("loss", 0.0))
            if best is None or score > best:
                best, best_state, result.best_step, stale = (
                    score,
                    student.snapshot(),
                    result.steps,
                    0,
                )
            else:
                stale += 1
                if stale >= patience:
                    log.info("%s: validation accuracy stopped rising; stopping", label)
                    break
    student.model.eval()
    if best_state is not None:
        student.restore(best_state)
    else:
        result.best_step = result.steps
    return result


@torch.no_grad()
def validation_loss(
    student: Student, data: Sequence[tuple[list[int], list[int]]], batch_size: int = 16
) -> float:
    """Mean per-token loss of ``data``'s completions."""
    total, count = 0.0, 0
    for i in range(0, len(data), batch_size):
        ids, mask, labels = collate(data[i : i + batch_size], student.pad_id, student.device)
        logp, n = token_logps(student, ids, mask, labels)
        total += -logp.sum().item()
        count += n.sum().item()
    return total / max(1, count)
