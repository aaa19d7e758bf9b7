"""Supervised fine-tuning on (prompt, completion) token pairs; loss on the completion only."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from selftrain import progress, tracking
from selftrain.config import OptimizerConfig
from selftrain.models import Student
from selftrain.training.checkpoints import StepCheckpoints, fingerprint, resume_plan
from selftrain.training.frozen import FrozenStates
from selftrain.training.loop import (
    batch_plan,
    collate,
    frozen_rows,
    scorer_of,
    sequence_states,
    token_logps,
)
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
    cfg: OptimizerConfig,
    *,
    epochs: int = 1,
    max_steps: int | None = None,
    seed: int = 0,
    validate: Callable[[], dict] | None = None,
    eval_every: int = 50,
    patience: int = 2,
    label: str = "sft",
    checkpoints: Path | None = None,
) -> SFTResult:
    """Train on ``data`` for ``epochs`` (or exactly ``max_steps`` steps, cycling the data),
    ``cfg.batch_size`` examples per optimizer step over all processes, in micro-batches of
    ``cfg.micro_batch_size`` (see :mod:`selftrain.training.trainer`). The loss is the mean
    negative log-likelihood per completion token of the batch.

    With ``validate`` (returning a dict with ``accuracy`` and optionally ``loss``), it is called
    every ``eval_every`` steps and at the end; training stops once ``patience`` checks in a row
    bring no gain in accuracy, and the student is left with its best checked weights.

    With ``checkpoints`` (a folder) and ``cfg.save_every``, a checkpoint is saved there every
    ``save_every`` steps, and training resumes from the newest (:mod:`.checkpoints`).
    """
    if not data:
        raise ValueError(f"{label}: no training examples")
    rng = random.Random(seed)
    lengths = [len(p) + len(c) for p, c in data]
    total = max_steps if max_steps is not None else epochs * math.ceil(len(data) / cfg.batch_size)
    settings = cfg.model_dump(exclude={"save_every", "keep_last"})
    digest = fingerprint(student, "sft", data, settings, total, seed, eval_every, patience)
    saves = StepCheckpoints(checkpoints, cfg, student, digest)
    saves.load_weights()
    # the frozen bottom layers' states, once for every epoch (selftrain.training.frozen); a
    # stage that sees each example once (RFT's one epoch) has nothing to save by them
    several = total * cfg.batch_size > 1.5 * len(data)
    frozen = sequence_states(student, data, spill=checkpoints) if several else None
    trainer = Trainer(student, cfg, total)
    device = student.runtime.device

    def loss_of(module, items: list[int]):
        ids, mask, labels = collate([data[i] for i in items], student.pad_id, device)
        logp, _ = token_logps(module, ids, mask, labels, frozen_rows(frozen, items))
        nll = -logp.sum()
        return nll, {"nll": nll}

    result = SFTResult(steps=0, best_step=0)
    best = _Best(student, patience, label)
    loop = saves.resume(trainer)
    if loop:
        result = SFTResult(**loop["result"])
        best.load_state_dict(loop["best"])
    with progress.bar(label, total, enabled=student.runtime.is_main) as bar:
        bar.advance(result.steps)
        plan = batch_plan(len(data), cfg.batch_size, rng, lengths, total)
        for idx in resume_plan(plan, result.steps):
            tokens = sum(len(data[i][1]) for i in idx)
            sums = trainer.step(idx, loss_of, norm=tokens)
            loss = sums["nll"] / tokens
            result.steps += 1
            tracking.log(
                {"loss": loss, "lr": sums["lr"], "grad_norm": sums["grad_norm"]}, result.steps
            )
            bar.advance()
            bar.note(f"loss {loss:.3f}")
            at_check = result.steps % eval_every == 0 or result.steps == total
            if validate is not None and at_check:
                with trainer.student_in_sync():
                    metrics = validate()
                    stop = best.check(result, metrics, loss)
                if stop:
                    break
            saves.after_step(
                trainer,
                result.steps,
                total,
                lambda: {"result": asdict(result), "best": best.state_dict()},
            )
    trainer.finish()
    if frozen is not None:
        frozen.close()
    best.restore(result)
    return result


class _Best:
    """Early stopping on validation accuracy (ties: lower loss), keeping the best weights."""

    def __init__(self, student: Student, patience: int, label: str):
        self.student, self.patience, self.label = student, patience, label
        self.score: tuple[float, float] | None = None
        self.state: dict[str, torch.Tensor] | None = None
        self.stale = 0

    def check(self, result: SFTResult, metrics: dict, loss: float) -> bool:
        """Record a check at ``result.steps``; True when training should stop."""
        main = self.student.runtime.is_main
        entry = {"step": result.steps, "train_loss": round(loss, 4), **metrics}
        result.history.append(entry)
        if main:
            log.info("%s step %d: %s", self.label, result.steps, entry)
        score = (metrics["accuracy"], -metrics.get("loss", 0.0))
        if self.score is None or score > self.score:
            self.score, self.state, self.stale = score, self.student.snapshot(), 0
            result.best_step = result.steps
            return False
        self.stale += 1
        if self.stale >= self.patience and main:
            log.info("%s: validation accuracy stopped rising; stopping", self.label)
        return self.stale >= self.patience

    def state_dict(self) -> dict:
        return {"score": self.score, "state": self.state, "stale": self.stale}

    def load_state_dict(self, saved: dict) -> None:
        self.score = tuple(saved["score"]) if saved["score"] is not None else None
        self.state, self.stale = saved["state"], saved["stale"]

    def restore(self, result: SFTResult) -> None:
        """Leave the student with the best checked weights (the last ones when never checked)."""
        if self.state is not None:
            self.student.restore(self.state)
        else:
            result.best_step = result.steps


@torch.no_grad()
def validation_loss(
    student: Student,
    data: Sequence[tuple[list[int], list[int]]],
    batch_size: int = 16,
    frozen: FrozenStates | None = None,
) -> float:
    """Mean per-token loss of ``data``'s completions (``frozen``: their cached states below
    the trainable layers, :func:`~selftrain.training.loop.sequence_states`)."""
    total, count = 0.0, 0
    scorer = scorer_of(student)
    for i in range(0, len(data), batch_size):
        ids, mask, labels = collate(data[i : i + batch_size], student.pad_id, student.device)
        items = range(i, min(i + batch_size, len(data)))
        logp, n = token_logps(scorer, ids, mask, labels, frozen_rows(frozen, items))
        total += -logp.sum().item()
        count += n.sum().item()
    return total / max(1, count)
