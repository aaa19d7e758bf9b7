"""Self-refine instruction-tuning (Ranaldi & Freitas, 2024), end to end, as its stages:

  data -> eval base -> demos -> sft (+ eval) -> samples -> pairs -> rft -> dpo (+ eval of the
  last) -> sft_more control (+ eval) -> paired comparisons.

Stage 1 tunes the student on verified teacher demonstrations; stage 2 has it answer training
questions itself and rewards its paths by the ground truth; RFT (``rft.enabled``) trains the
stage-1 model on its correct paths, and DPO runs on (correct, wrong) pairs against the model
it starts from. Every stage is resumable from the run directory (selftrain/stages/). The run
ends with report.md and its plots (selftrain/pipeline/srit_report.py).

Each training-data stage is also a command of its own (``selftrain sft``, ``sample``,
``pairs``, ``rft``, ``dpo``: cli_stages.py), which runs the same :class:`Stages` method on the
same run directory, reading what the stages before it wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from selftrain import tasks, tracking
from selftrain.config import SRITRecipe as Recipe
from selftrain.eval.generative import accuracy_table
from selftrain.io import read_json
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
from selftrain.stages.sft import sft_stage, steps_of, validator
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
    runtime, task, loaded, student = _load(recipe)
    # locked: one run at a time; log.txt gets the log from here on
    with RunDir(run_dir, recipe, runtime) as rd:
        return _run(rd, recipe, runtime, task, srit_data(rd, loaded), student)


def run_stage(recipe: Recipe, run_dir: str | Path, command: str) -> Path:
    """Run one stage of the recipe in ``run_dir`` (``command``: a key of :data:`STAGES`), as
    :func:`run` would, from the files the stages before it wrote; returns its output. A stage
    already done is left as it is; one whose inputs are missing is a :class:`MissingInput`."""
    _check_inputs(run_dir, recipe, command, _done_before_open(run_dir))  # before the model loads
    runtime, task, loaded, student = _load(recipe)
    with RunDir(run_dir, recipe, runtime) as rd:
        _check_inputs(run_dir, recipe, command, rd.state["done"])  # after the files are checked
        splits = srit_data(rd, loaded)
        engine = make_engine(recipe.sampling.engine, recipe.sampling.vllm, runtime, rd / "vllm")
        if rd.done(STAGES[command].stage):
            log.info("stage %s is done (state.json): left as it is", STAGES[command].stage)
        try:
            getattr(Stages(rd, recipe, task, splits, student, engine), command)()
        finally:
            engine.close()
        return rd / STAGES[command].file


def _load(recipe: Recipe) -> tuple[Runtime, Task, dict[str, list[Example]], Student]:
    """What a run needs before its run directory opens: the runtime, the task, its data and
    the student (an error in any of them leaves nothing behind, and fixing it is not "a
    different recipe")."""
    runtime = Runtime.start(recipe.student.device)
    setup_logging(quiet=not runtime.is_main)  # the console until the run directory is open
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    task = tasks.get(recipe.task.name, **recipe.task.args)
    loaded = srit_splits(task, recipe)
    tracking.backends(recipe.report_to)  # a missing tracker package: before the model loads
    return runtime, task, loaded, Student.load(recipe.student, runtime)


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
        _stages(Stages(rd, recipe, task, splits, student, engine))
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


def _stages(s: Stages) -> None:
    """The recipe's stages in order; each is skipped when the run directory marks it done."""
    c, rd = s.recipe, s.rd
    if c.eval.evaluate_base:
        s.evaluate("base", None, c.eval.base_n)
    s.sft()  # stage 1: SFT on the teacher's verified demonstrations, to its validation plateau
    s.evaluate("sft", rd / "sft" / "model")
    s.sample()  # stage 2: the student samples its own paths; the ground truth judges them
    s.pairs()
    rft_steps, dpo_steps = s.rft(), s.dpo()
    if dpo_steps is None and rft_steps is None:
        return
    final = "rft" if dpo_steps is None else "dpo"
    s.evaluate(final, rd / final / "model")

    # the control: SFT on the same demonstrations for as many more steps as stage 2 took
    if c.sft_more:
        sft_stage(
            rd, "sft_more_train", "sft_more_training", s.student, s.taught(), s.prompts, c.sft,
            start=rd / "sft" / "model", out=rd / "sft_more" / "model", seed=c.seed + 1,
            label="sft_more", max_steps=(rft_steps or 0) + (dpo_steps or 0),
        )  # fmt: skip
        s.evaluate("sft_more", rd / "sft_more" / "model", c.eval.control_n)
    compare_stage(rd, final, c.eval.splits)


@dataclass(frozen=True)
class Output:
    """What a stage writes (relative to the run directory), its name in state.json and the
    command of its own that runs it (``selftrain sft`` ...)."""

    stage: str
    file: str
    command: str


DEMOS = Output("demos", "demos.jsonl", "sft")  # run by `selftrain sft` when not done yet
SFT = Output("sft", "sft/model", "sft")
SAMPLES = Output("samples", "samples.jsonl", "sample")
PAIRS = Output("pairs", "pairs.jsonl", "pairs")
RFT = Output("rft", "rft/model", "rft")
DPO = Output("dpo", "dpo/model", "dpo")
# the per-stage commands, in the pipeline's order, by command name
STAGES = {o.command: o for o in (SFT, SAMPLES, PAIRS, RFT, DPO)}


class MissingInput(ValueError):
    """A stage command run before the stage that writes its input."""


def inputs(recipe: Recipe, command: str) -> list[Output]:
    """What ``command``'s stage reads, made by the stages before it."""
    return {
        "sft": [],
        "sample": [SFT],
        "pairs": [DEMOS, SAMPLES],  # the demonstrations are the fallback chosen answers
        "rft": [SFT, SAMPLES] + ([DEMOS] if recipe.rft.with_demos else []),
        "dpo": [SFT, PAIRS] + ([RFT] if recipe.rft.enabled else []),
    }[command]


def _check_inputs(run_dir: str | Path, recipe: Recipe, command: str, done: list[str]) -> None:
    """A :class:`MissingInput` naming the first input of ``command`` not made yet and the
    command that makes it (a ValueError when the recipe turns the stage off)."""
    section = {"rft": recipe.rft, "dpo": recipe.dpo}.get(command)
    if section is not None and not section.enabled:
        raise ValueError(
            f"'selftrain {command}': this recipe has {command}.enabled: false; set it true "
            f"(--set {command}.enabled=true on every command of the run)"
        )
    for needed in inputs(recipe, command):
        if needed.stage not in done:
            raise MissingInput(
                f"{Path(run_dir) / needed.file} is missing (stage {needed.stage} is not done): "
                f"'selftrain {command}' reads it; make it first with 'selftrain "
                f"{needed.command}' and the same recipe and --run-dir"
            )


def _done_before_open(run_dir: str | Path) -> list[str]:
    """The stages state.json marks done (none when it is absent or unreadable: opening the
    run directory says what is wrong with it)."""
    try:
        return list(read_json(Path(run_dir) / "state.json")["done"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


class Stages:
    """One run's SRIT stages, a method each, shared by :func:`run` (every stage in order) and
    the per-stage commands (one). A stage the run directory marks done is not redone: its
    method returns what it returned then, read from the files it wrote."""

    def __init__(
        self,
        rd: RunDir,
        recipe: Recipe,
        task: Task,
        splits: dict[str, list[Example]],
        student: Student,
        engine: Engine,
    ):
        self.rd, self.recipe, self.task, self.student = rd, recipe, task, student
        self.splits, self.engine, self.train = splits, engine, splits["train"]
        self.prompts = Prompts(student, task)
        evals = eval_sets(task, splits, recipe.eval.splits)
        self.evaluator = Evaluator(rd, student, engine, evals, recipe.eval, recipe.calculator)

    def evaluate(self, name: str, weights: Path | None, n: int | None = None) -> None:
        self.evaluator(f"eval_{name}", name, name, weights, n)

    def demos(self) -> dict[str, list[str]]:
        """Question id -> the teacher's kept demonstrations (demos.jsonl)."""
        return demos(self.rd, self.task, self.train, self.recipe)

    def taught(self) -> list[tuple[Example, str]]:
        return demo_examples(self.train, self.demos())

    def sft(self) -> int | None:
        """Stage 1 (sft/model): SFT on the kept demonstrations, to its validation plateau."""
        c, rd = self.recipe, self.rd
        val = self.splits["validation"][: c.sft.val_questions]
        return sft_stage(
            rd, "sft", "sft_training", self.student, self.taught(), self.prompts, c.sft,
            start=None, out=rd / "sft" / "model", seed=c.seed, label="sft",
            epochs=c.sft.max_epochs,
            validate=validator(self.student, self.task, val, c, self.engine),
            eval_every=c.sft.eval_every, patience=c.sft.patience,
        )  # fmt: skip

    def sample(self) -> None:
        """samples.jsonl: the SFT model's judged paths to the sampled training questions."""
        s, rd = self.recipe.sampling, self.rd
        questions = self.train[s.offset : s.offset + s.n_questions]
        sampler = Sampler(rd, self.student, self.engine, self.task)
        sampler(
            "samples", questions, _styles(self.recipe, self.prompts), rd / "samples.jsonl",
            weights=rd / "sft" / "model", key="samples", label="sample",
        )  # fmt: skip

    def pairs(self) -> list[dict]:
        """pairs.jsonl: preference pairs of the judged samples."""
        samples = self.rd / "samples.jsonl"
        cot, direct = read_samples(samples, "cot"), read_samples(samples, "direct")
        first_demo = {qid: texts[0] for qid, texts in self.demos().items()}
        c, by_id = self.recipe, {e.id: e for e in self.train}
        return srit_pairs_stage(
            self.rd, cot, direct, first_demo, c.pairs, c.seed,
            lambda q: self.prompts.messages(by_id[q]),
        )  # fmt: skip

    def rft(self) -> int | None:
        """rft/model (``rft.enabled``): SFT from stage 1 on the student's correct paths; its
        steps, None when off or skipped for want of data."""
        c, rd = self.recipe, self.rd
        if not c.rft.enabled:
            return None
        paths = rft_stage(rd, read_samples(rd / "samples.jsonl", "cot"), c.rft, c.seed)
        by_id = {e.id: e for e in self.train}
        data = [(by_id[r["id"]], r["text"]) for r in paths]
        data += self.taught() if c.rft.with_demos else []
        return sft_stage(
            rd, "rft", "rft_training", self.student, data, self.prompts, c.rft,
            start=rd / "sft" / "model", out=rd / "rft" / "model", seed=c.seed + 2, label="rft",
            epochs=c.rft.epochs, info=_rft_info(paths), if_empty=NO_RFT_DATA,
        )  # fmt: skip

    def dpo(self) -> int | None:
        """dpo/model (``dpo.enabled``): DPO on the pairs from the RFT model when RFT trained,
        else from stage 1's; its steps, None when off or without pairs."""
        c, rd = self.recipe, self.rd
        pairs = self.pairs()
        if not (c.dpo.enabled and has_pairs(rd, pairs, "dpo")):
            return None
        rft_trained = c.rft.enabled and steps_of(rd, "rft", "rft_training") is not None
        start = rd / ("rft" if rft_trained else "sft") / "model"
        return dpo_stage(
            rd, "dpo", "dpo_training", self.student, pairs, {e.id: e for e in self.train},
            self.prompts, c.dpo, start=start, out=rd / "dpo" / "model", seed=c.seed,
            label="dpo",
        )  # fmt: skip


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
