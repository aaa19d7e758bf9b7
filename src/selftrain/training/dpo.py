"""DPO on preference pairs, the loss chosen by config (sigmoid or IPO), optional NLL on chosen.

The reference model is the policy as it stands when training starts (the stage-1 model): its
log-probabilities of every chosen and rejected answer are computed once, before the first step,
so no second copy of the model is kept or run.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from selftrain import progress, tracking
from selftrain.config import DPOConfig
from selftrain.models import Student
from selftrain.training.checkpoints import StepCheckpoints, fingerprint, resume_plan
from selftrain.training.frozen import FrozenStates
from selftrain.training.loop import (
    batch_plan,
    can_pack_pairs,
    frozen_rows,
    pair_logps,
    pair_states,
    scorer_of,
)
from selftrain.training.trainer import Trainer

log = logging.getLogger(__name__)

Pair = tuple[list[int], list[int], list[int]]  # prompt, chosen, rejected token ids


@dataclass
class DPOResult:
    steps: int
    history: list[dict] = field(default_factory=list)


def preference_loss(
    pi_chosen: torch.Tensor,
    pi_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    kind: str = "sigmoid",
    dpop_lambda: float = 50.0,
) -> torch.Tensor:
    """Per-pair DPO loss from summed log-probs, h being the policy's log-ratio margin over the
    reference's. sigmoid: -log sigmoid(beta*h); IPO: (h - 1/(2*beta))^2; DPOP (DPO-Positive,
    Pal et al. 2024): sigmoid with h lowered by lambda * max(0, ref_chosen - pi_chosen), so a
    pair of near-identical paths cannot be separated by lowering the chosen one too."""
    h = (pi_chosen - ref_chosen) - (pi_rejected - ref_rejected)
    if kind == "sigmoid":
        return -F.logsigmoid(beta * h)
    if kind == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    if kind == "dpop":
        return -F.logsigmoid(beta * (h - dpop_lambda * (ref_chosen - pi_chosen).clamp(min=0)))
    raise ValueError(f"unknown DPO loss '{kind}' (sigmoid, ipo, dpop)")


@torch.no_grad()
def reference_logps(
    student: Student,
    pairs: Sequence[Pair],
    batch_size: int = 16,
    frozen: FrozenStates | None = None,
) -> torch.Tensor:
    """[n_pairs, 2] summed log-probs of (chosen, rejected) under the current weights. Pairs
    go in batches of similar length; with several processes each computes every
    ``world``-th batch and all of them get every result. ``frozen``: the packed pairs'
    cached states below the trainable layers (:func:`~selftrain.training.loop.pair_states`)."""
    student.model.eval()
    runtime = student.runtime
    scorer, pack = scorer_of(student), can_pack_pairs(student.model)
    order = sorted(range(len(pairs)), key=lambda i: sum(map(len, pairs[i])))  # little padding
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    mine: dict[int, torch.Tensor] = {}
    for chunk in runtime.shard(chunks):
        chunk_pairs = [pairs[j] for j in chunk]
        logp, _ = pair_logps(scorer, chunk_pairs, student.pad_id, pack, frozen_rows(frozen, chunk))
        both = torch.stack([logp[: len(chunk)], logp[len(chunk) :]], dim=1).float().cpu()
        mine.update(zip(chunk, both, strict=True))
    ref = torch.zeros((len(pairs), 2))
    for part in runtime.all_gather(mine):
        for j, row in part.items():
            ref[j] = row
    return ref


def train_dpo(
    student: Student,
    pairs: Sequence[Pair],
    cfg: DPOConfig,
    *,
    seed: int = 0,
    ref: torch.Tensor | None = None,
    label: str = "dpo",
    checkpoints: Path | None = None,
) -> DPOResult:
    """Train the student on ``pairs``; ``ref`` are precomputed reference log-probs.
    ``cfg.batch_size`` pairs per optimizer step over all processes, in micro-batches of
    ``cfg.micro_batch_size`` (see :mod:`selftrain.training.trainer`). With ``checkpoints``
    (a folder) and ``cfg.save_every``, a checkpoint is saved there every ``save_every`` steps,
    and training resumes from the newest (:mod:`.checkpoints`)."""
    if not pairs:
        raise ValueError(f"{label}: no preference pairs")
    # the frozen bottom layers' states, once for the reference pass and every step
    frozen = pair_states(student, pairs, spill=checkpoints)
    if ref is None:
        ref = reference_logps(student, pairs, frozen=frozen)
    rng = random.Random(seed)
    lengths = [len(p) + max(len(c), len(r)) for p, c, r in pairs]
    per_epoch = math.ceil(len(pairs) / cfg.batch_size)
    total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * per_epoch
    settings = cfg.model_dump(exclude={"save_every", "keep_last"})
    digest = fingerprint(student, "dpo", pairs, ref, settings, total, seed)
    saves = StepCheckpoints(checkpoints, cfg, student, digest)
    saves.load_weights()
    trainer = Trainer(student, cfg, total)
    pack = can_pack_pairs(student.model)

    def loss_of(module, items: list[int]):
        chunk = [pairs[i] for i in items]
        rows = frozen_rows(frozen, items)
        logp, count = pair_logps(module, chunk, student.pad_id, pack, rows)  # chosen, rejected
        n = len(chunk)
        pi_c, pi_r = logp[:n], logp[n:]
        ref_c, ref_r = ref[items, 0].to(logp.device), ref[items, 1].to(logp.device)
        loss = preference_loss(pi_c, pi_r, ref_c, ref_r, cfg.beta, cfg.loss, cfg.dpop_lambda).sum()
        if cfg.nll_weight > 0:
            loss = loss + cfg.nll_weight * (-(pi_c / count[:n])).sum()
        with torch.no_grad():
            margin = (pi_c - ref_c) - (pi_r - ref_r)
            stats = {
                "loss": loss,
                "correct": (margin > 0).sum(),
                "margin": margin.sum(),
                "chosen": (pi_c - ref_c).sum(),
                "rejected": (pi_r - ref_r).sum(),
            }
        return loss, stats

    result = DPOResult(steps=0)
    loop = saves.resume(trainer)
    if loop:
        result = DPOResult(**loop["result"])
    with progress.bar(label, total, enabled=student.runtime.is_main) as bar:
        bar.advance(result.steps)
        plan = batch_plan(len(pairs), cfg.batch_size, rng, lengths, total)
        for idx in resume_plan(plan, result.steps):
            sums = trainer.step(idx, loss_of, norm=len(idx))
            result.steps += 1
            entry = _entry(result.steps, sums, len(idx), cfg.beta)
            result.history.append(entry)
            scalars = {k: v for k, v in entry.items() if k != "step"}
            tracking.log(
                {**scalars, "lr": sums["lr"], "grad_norm": sums["grad_norm"]}, entry["step"]
            )
            bar.advance()
            bar.note(f"loss {entry['loss']:.3f} acc {entry['reward_accuracy']:.2f}")
            saves.after_step(trainer, result.steps, total, lambda: {"result": asdict(result)})
    trainer.finish()
    if frozen is not None:
        frozen.close()
    if student.runtime.is_main:
        _log_summary(label, result)
    return result


def _entry(step: int, sums: dict[str, float], n: int, beta: float) -> dict:
    """One step's history entry from the summed statistics of its ``n`` pairs."""
    return {
        "step": step,
        "loss": round(sums["loss"] / n, 4),
        "reward_accuracy": round(sums["correct"] / n, 3),
        "margin": round(beta * sums["margin"] / n, 4),
        # watch this: DPO can push the chosen answers' likelihood down too
        "chosen_logp_change": round(sums["chosen"] / n, 3),
        "rejected_logp_change": round(sums["rejected"] / n, 3),
    }


def _log_summary(label: str, result: DPOResult) -> None:
    last = result.history[-min(10, len(result.history)) :]
    log.info(
        "%s: %d steps; last steps: reward acc %.2f, chosen logp change %.2f, rejected %.2f",
        label,
        result.steps,
        sum(e["reward_accuracy"] for e in last) / len(last),
        sum(e["chosen_logp_change"] for e in last) / len(last),
        sum(e["rejected_logp_change"] for e in last) / len(last),
    )
