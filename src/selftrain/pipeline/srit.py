"""Self-refine instruction-tuning (Ranaldi & Freitas, 2024), end to end, as its stages:

  data -> eval base -> demos -> sft (+ eval) -> samples -> pairs -> rft -> dpo (+ eval of the
  last) -> sft_more control (+ eval) -> paired comparisons.

Stage 1 tunes the student on verified teacher demonstrations; stage 2 has it answer training
questions itself and rewards its paths by the ground truth; RFT (``rft.enabled``) trains the
stage-1 model on its correct paths, and DPO runs on (correct, wrong) pairs against the model
it starts from. Every stage is resumable from the run directory (selftrain/stages/). The run
ends with report.md and its plots (selftrain/pipeline/srit_report.py).
"""

from __future__ import annotations

from pathlib import Path

import torch

from selftrain import tasks
from selftrain.config import SRITRecipe as Recipe
from selftrain.eval.generative import accuracy_table
from selftrain.models import Student
from selftrain.pipeline.report import rebuild
from selftrain.progress import console, log, setup_logging
from selftrain.rundir import RunDir
from selftrain.runtime import Runtime
from selftrain.sampling import Engine, make_engine
from selftrain.stages.data import Prompts, eval_sets, srit_data, srit_splits
from selftrain.stages.demos import demo_examples, demos
from selftrain.stages.dpo import dpo_stage, has_pairs
from selftrain.stages.evaluate import Evaluator, compare_stage
from selftrain.stages.pairs import srit_pairs_stage
from selftrain.stages.pseudo_labels import rft_stage
from selftrain.stages.sample import Sampler, Style, read_samples, sampling_params
from selftrain.stages.sft import sft_stage, validator
from selftrain.stats import describe
from selftrain.tasks.base import Example, Task

MODELS = ("base", "sft", "sft_more", "rft", "dpo")
NO_RFT_DATA = (
    "no RFT data: the student answered no sampled question correctly (raise sampling.k or "
    "sampling.n_questions, or set rft.with_demos: true); RFT is skipped"
)


def run(recipe: Recipe, run_dir: str | Path) -> dict:
    """Run (or resume) the SRIT recipe in ``run_dir``; return metrics.json's content. Under
    ``accelerate launch`` every process runs this, and rank 0 writes the run directory."""
    runtime = Runtime.start(recipe.student.device)
    setup_logging(quiet=not runtime.is_main)  # the console until the run directory is open
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    # the task, its data and the student load before the run directory is made: an error in
    # any of them leaves nothing behind, and fixing it is not "a different recipe"
    task = tasks.get(recipe.task.name, **recipe.task.args)
    loaded = srit_splits(task, recipe)
    student = Student.load(recipe.student, runtime)
    # locked: one run at a time; log.txt gets the log from here on
    with RunDir(run_dir, recipe, runtime) as rd:
        return _run(rd, recipe, runtime, task, srit_data(rd, loaded), student)


def _run(
    rd: RunDir,
    recipe: Recipe,
    runtime: Runtime,
    task: Task,
    splits: dict[str, list[Example]],
    student: Student,
) -> dict:
    main = runtime.is_main
    engine = make_engine(recipe.sampling.engine, recipe.sampling.vllm, runtime, rd / "vllm")
    if main:
        log.info(
            "student %s: %.1fM parameters, %.2fM trainable; %s; decoding with %s",
            recipe.student.model,
            sum(p.numel() for p in student.model.parameters()) / 1e6,
            sum(p.numel() for p in student.trainable_parameters()) / 1e6,
            runtime.describe(),
            engine.name,
        )
    try:
        _stages(rd, recipe, task, splits, student, engine)
    finally:
        engine.close()
    if main:
        console.print(accuracy_table(rd.metrics, MODELS, recipe.eval.splits))
        for name, by_split in rd.metrics.get("compare", {}).items():
            cells = "; ".join(f"{s} {describe(c)}" for s, c in by_split.items())
            console.print(f"{name}: {cells}")
        console.print(f"stage seconds: {rd.state['seconds']}")
        rebuild(rd.path)  # report.md and its plots, from the run directory's files
        console.print(f"metrics: {rd / 'metrics.json'}; report: {rd / 'report.md'}")
    return rd.metrics


def _stages(rd: RunDir, recipe: Recipe, task, splits: dict, student: Student, engine: Engine):
    """The recipe's stages in order; each is skipped when the run directory marks it done."""
    c, seed, train = recipe, recipe.seed, splits["train"]
    by_id = {e.id: e for e in train}
    evals = eval_sets(task, splits, recipe.eval.splits)
    prompts = Prompts(student, task)
    evaluator = Evaluator(rd, student, engine, evals, c.eval, c.calculator)
    sample = Sampler(rd, student, engine, task)

    def evaluate(name: str, weights: Path | None, n: int | None = None) -> None:
        evaluator(f"eval_{name}", name, name, weights, n)

    if c.eval.evaluate_base:
        evaluate("base", None, c.eval.base_n)

    # stage 1: SFT on the teacher's verified demonstrations, to its validation plateau
    kept = demos(rd, task, train, recipe)
    taught = demo_examples(train, kept)
    sft = rd / "sft" / "model"
    val = splits["validation"][: c.sft.val_questions]
    sft_stage(
        rd, "sft", "sft_training", student, taught, prompts, c.sft,
        start=None, out=sft, seed=seed, label="sft", epochs=c.sft.max_epochs,
        validate=validator(student, task, val, recipe, engine),
        eval_every=c.sft.eval_every, patience=c.sft.patience,
    )  # fmt: skip
    evaluate("sft", sft)

    # stage 2: the student samples its own paths; the ground truth judges them
    questions = train[c.sampling.offset : c.sampling.offset + c.sampling.n_questions]
    samples = rd / "samples.jsonl"
    sample(
        "samples", questions, _styles(recipe, prompts), samples,
        weights=sft, key="samples", label="sample",
    )  # fmt: skip
    cot, direct = read_samples(samples, "cot"), read_samples(samples, "direct")
    first_demo = {qid: texts[0] for qid, texts in kept.items()}
    pairs = srit_pairs_stage(rd, cot, direct, first_demo, c.pairs, seed)

    start, steps, final = sft, 0, None  # stage 2's next start, its steps so far, its model
    if c.rft.enabled:
        paths = rft_stage(rd, cot, c.rft, seed)
        data = [(by_id[r["id"]], r["text"]) for r in paths]
        data += taught if c.rft.with_demos else []
        rft_steps = sft_stage(
            rd, "rft", "rft_training", student, data, prompts, c.rft,
            start=sft, out=rd / "rft" / "model", seed=seed + 2, label="rft",
            epochs=c.rft.epochs, info=_rft_info(paths), if_empty=NO_RFT_DATA,
        )  # fmt: skip
        if rft_steps is not None:
            steps, start, final = rft_steps, rd / "rft" / "model", "rft"
    if c.dpo.enabled and has_pairs(rd, pairs, "dpo"):
        steps += dpo_stage(
            rd, "dpo", "dpo_training", student, pairs, by_id, prompts, c.dpo,
            start=start, out=rd / "dpo" / "model", seed=seed, label="dpo",
        )  # fmt: skip
        final = "dpo"
    if final is None:
        return
    evaluate(final, rd / final / "model")

    # the control: SFT on the same demonstrations for as many more steps as stage 2 took
    if c.sft_more:
        sft_stage(
            rd, "sft_more_train", "sft_more_training", student, taught, prompts, c.sft,
            start=sft, out=rd / "sft_more" / "model", seed=seed + 1, label="sft_more",
            max_steps=steps,
        )  # fmt: skip
        evaluate("sft_more", rd / "sft_more" / "model", c.eval.control_n)
    compare_stage(rd, final, c.eval.splits)


def _styles(recipe: Recipe, prompts: Prompts) -> list[Style]:
    """CoT paths (k per question); for ``cot_vs_direct`` pairs also one direct answer, asked
    for by the prompt's added instruction."""
    s, seed, calc = recipe.sampling, recipe.seed, recipe.calculator
    styles = [Style("cot", sampling_params(s, k=s.k, seed=seed, calculator=calc), prompts)]
    if recipe.pairs.policy == "cot_vs_direct":
        instruction = recipe.pairs.direct_instruction

        def direct(e) -> list[int]:
            return prompts.student.prompt_ids(f"{prompts.task.prompt(e)}\n{instruction}")

        styles.append(
            Style("direct", sampling_params(s, k=1, seed=seed + 1, calculator=calc), direct)
        )
    return styles


def _rft_info(paths: list[dict]) -> dict:
    return {
        "self_paths": len(paths),
        "questions": len({r["id"] for r in paths}),
        "easy_questions": len({r["id"] for r in paths if r["easy"]}),
    }
