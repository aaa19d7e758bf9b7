"""Stage ``sft``: supervised fine-tuning on (question, rationale) examples, from given weights,
saved as a model of the run. Every method's SFT-like step is this stage: SRIT's stage 1 (with
validation-accuracy early stopping), its RFT step and its ``sft_more`` control, DPO-ST's
warm-up and each round's SFT step."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from selftrain import tracking
from selftrain.config import OptimizerConfig, SRITRecipe
from selftrain.eval.generative import evaluate
from selftrain.models import Student
from selftrain.progress import log
from selftrain.rundir import RunDir
from selftrain.sampling import Engine
from selftrain.stages.data import Prompts
from selftrain.tasks.base import Example, Task
from selftrain.training.checkpoints import remove_checkpoints
from selftrain.training.loop import sequence_states
from selftrain.training.sft import train_sft, validation_loss

# where a stage's training starts: saved weights, a snapshot of the trainable weights (DPO-ST's
# base model), or None: the weights the student holds (SRIT's stage 1, after loading)
Start = Path | dict[str, torch.Tensor] | None


def sft_stage(
    rd: RunDir,
    stage: str,
    key: str | tuple[str, ...],
    student: Student,
    examples: Sequence[tuple[Example, str]],
    prompts: Prompts,
    cfg: OptimizerConfig,
    *,
    start: Start,
    out: Path,
    seed: int,
    label: str,
    epochs: int = 1,
    max_steps: int | None = None,
    validate: Callable[[], dict] | None = None,
    eval_every: int = 50,
    patience: int = 2,
    info: dict | None = None,
    if_empty: str | None = None,
) -> int | None:
    """Train from ``start`` on ``examples`` and save to ``out`` unless ``stage`` is done;
    metrics.json's ``key`` gets the examples, steps (and the best step with ``validate``,
    and ``info``). Returns the optimizer steps taken. With no examples and an ``if_empty``
    reason, the stage is skipped (the reason logged and recorded) and returns None."""
    if rd.done(stage):
        return steps_of(rd, stage, key)
    with rd.stage(stage) as result:
        result["steps"] = None
        if not examples and if_empty:
            log.warning(if_empty)
            rd.put(key, {"skipped": if_empty})
            return None
        if isinstance(start, Path):
            student.load_weights(start)
        elif start is not None:
            student.restore(start)
        data = [(prompts(e), student.completion_ids(text)) for e, text in examples]
        res = train_sft(
            student,
            data,
            cfg,
            epochs=epochs,
            max_steps=max_steps,
            seed=seed,
            validate=validate,
            eval_every=eval_every,
            patience=patience,
            label=label,
            checkpoints=out.parent / "checkpoints",
        )
        student.save(out)
        remove_checkpoints(student, out.parent / "checkpoints")
        record = {"steps": res.steps, "examples": len(data)}
        if validate is not None:
            rd.write_json(out.parent.relative_to(rd.path) / "history.json", res.history)
            record["best_step"] = res.best_step
        rd.put(key, {**record, **(info or {})})
        result["steps"] = res.steps
    return res.steps


def steps_of(rd: RunDir, stage: str, key: str | tuple[str, ...]) -> int | None:
    """The optimizer steps a done training stage took, from its stage record (metrics.json's
    ``key`` for a run directory older than stage records)."""
    result = rd.result(stage)
    return result["steps"] if "steps" in result else rd.get(key).get("steps")


def validator(
    student: Student, task: Task, val: list[Example], recipe: SRITRecipe, engine: Engine
) -> Callable[[], dict]:
    """SRIT stage 1's validation: greedy accuracy on ``val`` (and the loss of their gold
    rationales, where they have one)."""
    val_data = [
        (student.prompt_ids(task.prompt(e)), student.completion_ids(e.rationale))
        for e in val
        if e.rationale
    ]

    frozen: list = []  # the validation sequences' frozen-layer states, made at the first check

    def validate() -> dict:
        acc = evaluate(
            student,
            task,
            val,
            max_new_tokens=recipe.sft.max_new_tokens,
            batch_size=recipe.eval.batch_size,
            label="sft validation",
            calculator=recipe.calculator,
            engine=engine,
        )
        out = {"accuracy": acc["accuracy"]}
        if val_data:
            if not frozen:
                frozen.append(sequence_states(student, val_data))
            out["loss"] = round(validation_loss(student, val_data, frozen=frozen[0]), 4)
        tracking.log({f"validation/{k}": v for k, v in {**tracking.interval(acc), **out}.items()})
        return out

    return validate
