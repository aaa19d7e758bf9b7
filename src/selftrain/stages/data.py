"""Stage ``data``: the questions a run uses, written to ``data/`` once; every later stage and
every resume reads them from there, so a run never sees another draw of its task."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from selftrain import tasks
from selftrain.chat import Message, prompt_messages
from selftrain.config import DPOSTRecipe, SRITRecipe
from selftrain.io import read_jsonl, write_jsonl_atomic
from selftrain.models import Student
from selftrain.progress import log
from selftrain.rundir import RunDir
from selftrain.tasks.base import Example, Task


@dataclass
class EvalSet:
    """A column of the results: a label, the task that judges it and its questions."""

    label: str
    task: Task
    examples: list[Example]


class Prompts:
    """A question's prompt as the student's token ids, tokenized once per question."""

    def __init__(self, student: Student, task: Task):
        self.student, self.task = student, task
        self._ids: dict[str, list[int]] = {}

    def __call__(self, e: Example) -> list[int]:
        if e.id not in self._ids:
            self._ids[e.id] = self.student.prompt_ids(self.task.prompt(e))
        return self._ids[e.id]

    def messages(self, e: Example) -> list[Message]:
        """The same prompt as chat messages (TRL's conversational ``prompt``): the student's
        system prompt, then the question."""
        return prompt_messages(self.task.prompt(e), self.student.cfg.system_prompt)


def read_examples(path: Path) -> list[Example]:
    return [Example.from_dict(d) for d in read_jsonl(path)]


def _write(path: Path, examples: list[Example]) -> None:
    write_jsonl_atomic(path, (e.to_dict() for e in examples))


def srit_splits(task: Task, recipe: SRITRecipe) -> dict[str, list[Example]]:
    """SRIT's splits as the task gives them (loaded before the run directory is made, so a
    data error leaves nothing behind): train (the demonstrated questions, then the sampled
    ones), validation (SFT's early stopping) and every evaluation split."""
    needed = {"train", "validation", *recipe.eval.splits}
    missing = needed - set(task.splits())
    if missing:
        raise ValueError(
            f"task '{recipe.task.name}' has no split(s) {sorted(missing)}; "
            f"it has {task.splits()} (recipe key eval.splits)"
        )
    n_train = max(recipe.teacher.n_questions, recipe.sampling.offset + recipe.sampling.n_questions)
    out = {}
    for split in sorted(needed):
        n = {"train": n_train, "validation": recipe.sft.val_questions}.get(
            split, recipe.eval.n_per_split.get(split, recipe.eval.n)
        )
        examples = task.load(split, n)
        if not examples:
            raise ValueError(_empty_split(recipe.task.name, split))
        if len(examples) < n:
            log.warning(
                "split %s has %d questions, fewer than the %d asked for (recipe key eval.n, or "
                "the task's size, e.g. task.args.n_test)",
                split,
                len(examples),
                n,
            )
        out[split] = examples
    if len(out["train"]) <= recipe.sampling.offset:
        raise ValueError(
            f"no training questions to sample: the train split has {len(out['train'])} "
            f"and sampling.offset is {recipe.sampling.offset} (recipe key sampling.offset)"
        )
    return out


def srit_data(rd: RunDir, splits: dict[str, list[Example]]) -> dict[str, list[Example]]:
    """Stage ``data``: ``splits`` written to ``data/`` once; what a run and its resumes use is
    read back from there."""
    if not rd.done("data"):
        with rd.stage("data"):
            for split, examples in splits.items() if rd.runtime.is_main else []:
                _write(rd / "data" / f"{split}.jsonl", examples)
    return {s: read_examples(rd / "data" / f"{s}.jsonl") for s in splits}


def _empty_split(task: str, split: str) -> str:
    """The error of a split that loaded no questions, naming the recipe keys that size it."""
    key = {
        "train": "teacher.n_questions and sampling.n_questions",
        "validation": "sft.val_questions",
    }.get(split, f"eval.n_per_split.{split} (or eval.n)")
    return (
        f"task '{task}': split {split!r} loaded 0 questions; set recipe key {key} above 0, "
        "or the task's own size of that split (task.args, e.g. n_test)"
    )


def eval_sets(task: Task, splits: dict[str, list[Example]], names: list[str]) -> list[EvalSet]:
    return [EvalSet(name, task, splits[name]) for name in names]


def dpo_st_splits(task: Task, recipe: DPOSTRecipe) -> dict[str, list[Example]]:
    """DPO-ST's question sets by file name under ``data/`` (loaded before the run directory is
    made): ``train`` (less a ``dev`` hold-out), the task's evaluation splits and
    ``tasks/LABEL`` for each of ``dpo_st.eval_tasks``."""
    cfg = recipe.dpo_st
    have = set(task.splits())
    wanted = [s for s in recipe.eval.splits if s != "dev"]
    missing = sorted(set(wanted) - have) + (
        ["dev (dpo_st.dev_holdout is 0)"]
        if "dev" in recipe.eval.splits and cfg.dev_holdout == 0
        else []
    )
    if missing or "train" not in have:
        raise ValueError(
            f"task '{recipe.task.name}' has no split(s) {missing or ['train']}; it has "
            f"{sorted(have)} (recipe key eval.splits)"
        )
    labels = [t.label or t.name for t in cfg.eval_tasks]
    if len(set(labels) | set(recipe.eval.splits)) < len(labels) + len(recipe.eval.splits):
        raise ValueError(
            "dpo_st.eval_tasks: every label must differ from the others and from "
            "eval.splits (set 'label')"
        )
    out: dict[str, list[Example]] = {}
    if cfg.dev_holdout:
        pool = task.load("train")
        if len(pool) <= cfg.dev_holdout:
            raise ValueError(
                f"dpo_st.dev_holdout {cfg.dev_holdout} leaves no training questions "
                f"(train has {len(pool)})"
            )
        out["dev"] = pool[len(pool) - cfg.dev_holdout :][: cfg.limit]
        out["train"] = pool[: len(pool) - cfg.dev_holdout][: _cap(cfg.n_questions, cfg.limit)]
    else:
        out["train"] = task.load("train", _cap(cfg.n_questions, cfg.limit))
    for split in wanted:
        n = _cap(recipe.eval.n_per_split.get(split, recipe.eval.n), cfg.limit)
        out[split] = task.load(split, n)
    for t, label in zip(cfg.eval_tasks, labels, strict=True):
        other = tasks.get(t.name, **t.args)
        out[f"tasks/{label}"] = other.load(t.split, _cap(t.n, cfg.limit))
    for name, examples in out.items():
        if not examples:
            raise ValueError(
                f"task '{recipe.task.name}': {name} has no questions (check its data file, "
                "or the task's size in task.args)"
            )
    return out


def dpo_st_data(
    rd: RunDir, task: Task, splits: dict[str, list[Example]], recipe: DPOSTRecipe
) -> tuple[list[Example], list[EvalSet]]:
    """Stage ``data``: ``splits`` written to ``data/`` once; returns the training questions
    and every evaluation set, read back from there."""
    if not rd.done("data"):
        with rd.stage("data"):
            for name, examples in splits.items() if rd.runtime.is_main else []:
                _write(rd / "data" / f"{name}.jsonl", examples)
    data = rd / "data"
    train = read_examples(data / "train.jsonl")
    evals = []
    for split in recipe.eval.splits:
        examples = read_examples(data / f"{split}.jsonl")
        if split == "dev":
            examples = examples[: recipe.eval.n_per_split.get("dev", recipe.eval.n)]
        evals.append(EvalSet(split, task, examples))
    for t in recipe.dpo_st.eval_tasks:
        label = t.label or t.name
        other = tasks.get(t.name, **t.args)
        evals.append(EvalSet(label, other, read_examples(data / "tasks" / f"{label}.jsonl")))
    return train, evals


def _cap(n: int | None, limit: int | None) -> int | None:
    return n if limit is None else limit if n is None else min(n, limit)


def gold_rationale(task: Task, e: Example) -> str:
    """The gold rationale of a training question (the task's solver when it has none)."""
    if e.rationale:
        return e.rationale
    demonstrate = getattr(task, "demonstration", None)
    if demonstrate is None:
        raise ValueError(f"{e.id}: no gold rationale, and task '{task.name}' has no solver")
    return demonstrate(e)
