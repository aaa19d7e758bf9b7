"""DPO-augmented self-training (Wang, Li & Lu, ACL 2024) and the self-training (RFT) baseline,
as their stages (selftrain/stages/), each named in state.json so a stopped run resumes at the
round and stage where it stopped:

  data -> warmup.sft (gold rationales, from the base model) -> warmup.eval
  per arm, per round r:
    dpo_st:         ARM.rR.dpo_samples (the SFT model, k paths/question) -> ARM.rR.pairs
                    -> ARM.rR.dpo (reference: that SFT model) -> ARM.rR.sft_samples (the DPO
                    model) -> ARM.rR.sft_data -> ARM.rR.sft (from the base) -> ARM.rR.eval
    self_training:  ARM.rR.sft_samples (the SFT model itself) -> ARM.rR.sft_data -> ARM.rR.sft
                    -> ARM.rR.eval
  calculator.MODEL (the warm-up and each arm's final model decoded with the calculator
  switched the other way) -> report.md, accuracy_by_round.png.

Every arm starts from the same warm-up checkpoint, which is trained once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from selftrain import tasks, tracking
from selftrain.config import DPOSTConfig, DPOSTRecipe
from selftrain.models import Student
from selftrain.pipeline.dpo_st_report import arms, print_tables
from selftrain.pipeline.report import rebuild
from selftrain.progress import log, setup_logging
from selftrain.rundir import RunDir
from selftrain.runtime import Runtime
from selftrain.sampling import Engine, make_engine
from selftrain.stages.data import EvalSet, Prompts, dpo_st_data, dpo_st_splits, gold_rationale
from selftrain.stages.dpo import dpo_stage
from selftrain.stages.evaluate import Evaluator
from selftrain.stages.pairs import TokenSets, dpo_st_pairs_stage
from selftrain.stages.pseudo_labels import dpo_st_sft_data_stage
from selftrain.stages.sample import Sampler, Style, sampling_params
from selftrain.stages.sft import sft_stage
from selftrain.tasks.base import Example, Task

WARMUP = "warmup"


@dataclass
class _Run:
    """What every stage of the run reads."""

    rd: RunDir
    recipe: DPOSTRecipe
    cfg: DPOSTConfig
    student: Student
    engine: Engine  # decodes every sampling and evaluation stage
    base: dict[str, torch.Tensor]  # the base model's trainable weights (on the CPU)
    train: list[Example]
    evals: list[EvalSet]
    gold: dict[str, str]  # question id -> gold rationale (the first gold_questions)
    prompts: Prompts
    tokens: TokenSets  # the paper's similarity tokens: the student tokenizer's
    evaluate: Evaluator
    sample: Sampler


def run(recipe: DPOSTRecipe, run_dir: str | Path) -> dict:
    """Run (or resume) DPO-ST / self-training in ``run_dir``; return metrics.json's content."""
    if not isinstance(recipe, DPOSTRecipe):
        raise ValueError("dpo_st.run needs a recipe with method dpo_st or self_training")
    runtime = Runtime.start(recipe.student.device)
    setup_logging(quiet=not runtime.is_main)  # the console until the run directory is open
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    # the task, its data and the student load before the run directory is made: an error in
    # any of them leaves nothing behind, and fixing it is not "a different recipe"
    task = tasks.get(recipe.task.name, **recipe.task.args)
    loaded = dpo_st_splits(task, recipe)
    tracking.backends(recipe.report_to)  # a missing tracker package: before the model loads
    student = Student.load(recipe.student, runtime)  # after the seed: LoRA's initial weights
    # locked: one run at a time; log.txt gets the log from here on
    with RunDir(run_dir, recipe, runtime) as rd:
        train, evals = dpo_st_data(rd, task, loaded, recipe)
        return _run(rd, recipe, runtime, task, student, train, evals)


def _run(
    rd: RunDir,
    recipe: DPOSTRecipe,
    runtime: Runtime,
    task: Task,
    student: Student,
    train: list[Example],
    evals: list[EvalSet],
) -> dict:
    gold = {e.id: gold_rationale(task, e) for e in train[: recipe.dpo_st.gold_questions]}
    engine = make_engine(recipe.sampling.engine, recipe.sampling.vllm, runtime, rd / "vllm")
    run = _Run(
        rd=rd,
        recipe=recipe,
        cfg=recipe.dpo_st,
        student=student,
        engine=engine,
        base=student.snapshot(),
        train=train,
        evals=evals,
        gold=gold,
        prompts=Prompts(student, task),
        tokens=TokenSets(student.tokenizer),
        evaluate=Evaluator(rd, student, engine, evals, recipe.eval, recipe.calculator),
        sample=Sampler(rd, student, engine, task),
    )
    if runtime.is_main:
        log.info(
            "DPO-ST: arms %s, %d rounds, %d training questions (%d with a gold rationale); "
            "%s; decoding with %s",
            arms(recipe),
            run.cfg.rounds,
            len(train),
            len(gold),
            runtime.describe(),
            run.engine.name,
        )
    try:
        _stages(run)
    finally:
        run.engine.close()
    if runtime.is_main:
        rebuild(rd.path)  # report.md and its plot, from the run directory's files
        print_tables(rd, recipe)
    return rd.metrics


def _stages(run: _Run) -> None:
    """The warm-up, every arm's rounds and the calculator ablation, in order."""
    rd, cfg = run.rd, run.cfg
    warm = rd / WARMUP / "model"
    by_id = {e.id: e for e in run.train}
    sft_stage(
        rd, "warmup.sft", (WARMUP, "training"), run.student,
        [(by_id[q], t) for q, t in run.gold.items()], run.prompts, cfg.sft,
        start=run.base, out=warm, seed=run.recipe.seed, label="warm-up sft",
        epochs=cfg.sft.warmup_epochs or cfg.sft.epochs,
        max_steps=_max_steps(cfg, len(run.gold), cfg.sft.warmup_epochs or cfg.sft.epochs),
        info={"from": "base"},
    )  # fmt: skip
    run.evaluate("warmup.eval", (WARMUP, "eval"), WARMUP, warm)

    for arm in arms(run.recipe):
        sft_model = warm
        for r in range(1, cfg.rounds + 1):
            sft_model = _round(run, arm, r, sft_model)

    if cfg.calculator_ablation:
        finals = {WARMUP: warm}
        finals |= {
            f"{arm}.r{cfg.rounds}": _round_dir(rd, arm, cfg.rounds) / "sft" / "model"
            for arm in arms(run.recipe)
        }
        for name, weights in finals.items():
            run.evaluate.calculator_effect(name, weights, cfg.calculator_ablation_n)


def _round(run: _Run, arm: str, r: int, sft_model: Path) -> Path:
    """Round ``r`` of ``arm`` starting from ``sft_model``; returns the round's SFT model."""
    rd, cfg, seed = run.rd, run.cfg, run.recipe.seed
    folder, prefix, mkey = _round_dir(rd, arm, r), f"{arm}.r{r}", (arm, "rounds", str(r))
    by_id = {e.id: e for e in run.train}
    sampler = sft_model  # self-training: the SFT model writes its own pseudo-labels
    if arm == "dpo_st":
        path = folder / "dpo_samples.jsonl"
        style = _style(run, run.recipe.sampling.k, _seed(seed, arm, r, 1))
        run.sample(f"{prefix}.dpo_samples", run.train, [style], path, weights=sft_model,
                   key=(*mkey, "dpo_samples"), label=prefix)  # fmt: skip
        pairs = dpo_st_pairs_stage(
            rd, f"{prefix}.pairs", (*mkey, "pairs"), folder / "pairs.jsonl",
            _rounds(rd, arm, r, "dpo_samples.jsonl"), run.gold, cfg, run.tokens, seed + r,
            lambda q: run.prompts.messages(by_id[q]),
        )  # fmt: skip
        dpo_model = folder / "dpo" / "model"
        steps = dpo_stage(
            rd, f"{prefix}.dpo", (*mkey, "dpo_training"), run.student, pairs, by_id,
            run.prompts, cfg.dpo, start=sft_model, out=dpo_model, seed=seed,
            label=f"{prefix} dpo", if_empty="no preference pairs",
        )  # fmt: skip
        if steps is not None:
            sampler = dpo_model
            if cfg.eval_dpo_model:
                run.evaluate(f"{prefix}.eval_dpo", (*mkey, "eval_dpo"), f"{prefix}.dpo", dpo_model)
    style = _style(run, cfg.sft_k, _seed(seed, arm, r, 2))
    run.sample(f"{prefix}.sft_samples", run.train, [style], folder / "sft_samples.jsonl",
               weights=sampler, key=(*mkey, "sft_samples"), label=prefix)  # fmt: skip
    data = dpo_st_sft_data_stage(
        rd, f"{prefix}.sft_data", (*mkey, "pseudo_labels"), folder / "sft_data.jsonl",
        _rounds(rd, arm, r, "sft_samples.jsonl"), run.gold, cfg, run.tokens,
    )  # fmt: skip
    new_sft = folder / "sft" / "model"
    previous = cfg.sft_init == "previous"
    sft_stage(
        rd, f"{prefix}.sft", (*mkey, "sft_training"), run.student,
        [(by_id[x["id"]], x["text"]) for x in data], run.prompts, cfg.sft,
        start=sft_model if previous else run.base, out=new_sft, seed=seed, label=f"{prefix} sft",
        epochs=cfg.sft.epochs, max_steps=_max_steps(cfg, len(data), cfg.sft.epochs),
        info={"from": "previous" if previous else "base"},
    )  # fmt: skip
    run.evaluate(f"{prefix}.eval", (*mkey, "eval"), prefix, new_sft)
    return new_sft


def _style(run: _Run, k: int, seed: int) -> Style:
    """``k`` paths per question as the recipe's ``sampling`` section says."""
    params = sampling_params(run.recipe.sampling, k=k, seed=seed, calculator=run.recipe.calculator)
    return Style(None, params, run.prompts)


def _max_steps(cfg: DPOSTConfig, n: int, epochs: int) -> int | None:
    """``dpo_st.sft.max_steps`` as a cap on ``epochs`` passes over ``n`` examples."""
    c = cfg.sft
    return min(c.max_steps, epochs * -(-n // c.batch_size)) if c.max_steps else None


def _round_dir(rd: RunDir, arm: str, r: int) -> Path:
    return rd / arm / f"r{r}"


def _rounds(rd: RunDir, arm: str, r: int, name: str) -> list[Path]:
    """The file ``name`` of rounds 1 to ``r``."""
    return [_round_dir(rd, arm, i) / name for i in range(1, r + 1)]


def _seed(seed: int, arm: str, r: int, which: int) -> int:
    return seed * 10_000 + (0 if arm == "dpo_st" else 5_000) + 10 * r + which
