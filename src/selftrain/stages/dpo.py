"""Stage ``dpo``: DPO on preference pairs from given weights, which are also the reference
(their log-probabilities of every pair are computed once, before the first step)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from selftrain.chat import completion_text
from selftrain.config import DPOConfig
from selftrain.models import Student
from selftrain.progress import log
from selftrain.rundir import RunDir
from selftrain.stages.data import Prompts
from selftrain.stages.sft import steps_of
from selftrain.tasks.base import Example
from selftrain.training.checkpoints import remove_checkpoints
from selftrain.training.dpo import Pair, train_dpo


def dpo_stage(
    rd: RunDir,
    stage: str,
    key: str | tuple[str, ...],
    student: Student,
    pairs: Sequence[dict],
    questions: Mapping[str, Example],
    prompts: Prompts,
    cfg: DPOConfig,
    *,
    start: Path,
    out: Path,
    seed: int,
    label: str,
    if_empty: str | None = None,
) -> int | None:
    """DPO from ``start`` on ``pairs`` (``questions`` by id), saved to ``out`` with its
    history beside it, unless ``stage`` is done; metrics.json's ``key`` gets the steps, the
    pairs and the last step's statistics. Returns the optimizer steps taken. With no pairs
    and an ``if_empty`` reason, the stage is skipped (the reason recorded) and returns None."""
    if rd.done(stage):
        return steps_of(rd, stage, key)
    with rd.stage(stage) as result:
        result["steps"] = None
        if not pairs and if_empty:
            log.warning("%s: %s; DPO is skipped", label, if_empty)
            rd.put(key, {"skipped": if_empty})
            return None
        student.load_weights(start)
        tokens = tokenize_pairs(student, pairs, questions, prompts)
        saves = out.parent / "checkpoints"
        # the reference log-probs: computed by train_dpo with the frozen-layer cache
        res = train_dpo(student, tokens, cfg, seed=seed, label=label, checkpoints=saves)
        student.save(out)
        remove_checkpoints(student, saves)
        rd.write_json(out.parent.relative_to(rd.path) / "history.json", res.history)
        rd.put(key, {"steps": res.steps, "pairs": len(pairs), "last": res.history[-1]})
        result["steps"] = res.steps
    return res.steps


def has_pairs(rd: RunDir, pairs: Sequence[dict], key: str) -> bool:
    """Whether there are pairs to train on; else the reason is logged and recorded at
    ``key``, and DPO is skipped."""
    if pairs:
        return True
    msg = (
        "no preference pairs: every sampled path was right, or every one wrong with no "
        "teacher fallback; DPO is skipped"
    )
    log.warning(msg)
    rd.put(key, {"skipped": msg})
    return False


def tokenize_pairs(
    student: Student, pairs: Sequence[dict], questions: Mapping[str, Example], prompts: Prompts
) -> list[Pair]:
    """(prompt, chosen, rejected) token ids; a rejected path cut short (``rejected_truncated``)
    gets no EOS, since its writer did not stop there."""
    return [
        (
            prompts(questions[p["id"]]),
            student.completion_ids(completion_text(p["chosen"])),
            student.completion_ids(
                completion_text(p["rejected"]), eos=not p.get("rejected_truncated", False)
            ),
        )
        for p in pairs
    ]
