"""`selftrain export-data`: a run directory's data as the tables TRL trains on.

- ``pairs``: TRL's conversational preference format (``prompt``, ``chosen``, ``rejected``)
  for DPOTrainer, with ``rejected_truncated`` (a path cut short: TRL's chat template still
  ends its turn with EOS), ``chosen_from``, ``similarity``, ``rejected_full`` and ``source``.
- ``sft``: TRL's conversational language-modelling format (``messages``) for SFTTrainer:
  the teacher's kept demonstrations and RFT's paths (SRIT); the warm-up's gold rationales and
  each round's ``sft_data`` (DPO-ST).
- ``samples``: every judged path in TRL's unpaired preference format (``prompt``,
  ``completion``, ``label``: the verdict, True when correct) for KTOTrainer, with ``style``
  and ``tokens``.

Only the files of finished stages are read; ``source`` names the file a row came from. Each
prompt is the one the student saw: its system prompt, then the task's question.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from selftrain import tasks
from selftrain.chat import Message, assistant, completion_text, prompt_messages
from selftrain.config import DPOSTRecipe, Recipe, parse_recipe
from selftrain.io import read_json, read_jsonl, write_jsonl_atomic
from selftrain.rundir import RunDirError, _read_saved, _upgraded
from selftrain.stages.data import gold_rationale, read_examples
from selftrain.tasks.base import Example, Task
from selftrain.teachers import kept_demos

FORMATS = ("datasets", "parquet", "jsonl")
TABLES = ("pairs", "sft", "samples")


def export_data(run_dir: Path, out: Path, fmt: str = "datasets") -> dict[str, int]:
    """Write ``run_dir``'s pairs, SFT examples and judged samples under ``out`` (a new
    folder) as ``datasets`` folders, parquet or JSONL files; returns the rows per table."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if out.exists():
        raise ValueError(f"{out} exists: export to a new folder (or remove it first)")
    recipe, done = read_run(run_dir)
    prompts = _Prompts(recipe, run_dir)
    rows = _dpo_st_rows if isinstance(recipe, DPOSTRecipe) else _srit_rows
    tables = rows(run_dir, recipe, done, prompts)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in TABLES:
        _write(tables[name], name, tmp, fmt)
    os.replace(tmp, out)
    return {name: len(tables[name]) for name in TABLES}


def read_run(run_dir: Path) -> tuple[Recipe, set[str]]:
    """The recipe a run directory was started with and its finished stages."""
    if not (run_dir / "recipe.yaml").is_file() or not (run_dir / "state.json").is_file():
        raise RunDirError(
            f"{run_dir}: not a run directory (no recipe.yaml and state.json); give the folder "
            "that selftrain run wrote (runs/NAME, or its --run-dir)"
        )
    try:
        recipe = parse_recipe(_upgraded(_read_saved(run_dir / "recipe.yaml")))
    except ValidationError as e:
        problem = e.errors()[0]["msg"] if e.errors() else str(e)
        raise RunDirError(f"{run_dir / 'recipe.yaml'}: not a recipe ({problem})") from None
    return recipe, set(read_json(run_dir / "state.json").get("done", []))


class _Prompts:
    """A training question's prompt messages, as the student saw them."""

    def __init__(self, recipe: Recipe, run_dir: Path):
        self.task: Task = tasks.get(recipe.task.name, **recipe.task.args)
        self.system = recipe.student.system_prompt
        self.examples = {e.id: e for e in read_examples(run_dir / "data" / "train.jsonl")}

    def example(self, qid: str) -> Example:
        if qid not in self.examples:
            raise RunDirError(f"question {qid!r} is not in data/train.jsonl of the run directory")
        return self.examples[qid]

    def __call__(self, qid: str, instruction: str | None = None) -> list[Message]:
        """The prompt of ``qid`` (with ``instruction`` on a line after the question)."""
        user = self.task.prompt(self.example(qid))
        return prompt_messages(f"{user}\n{instruction}" if instruction else user, self.system)


# ---- rows per method --------------------------------------------------------------------------
def _srit_rows(run_dir: Path, recipe: Any, done: set[str], prompts: _Prompts) -> dict:
    direct = recipe.pairs.direct_instruction
    sft = []
    if "demos" in done:
        for qid, texts in kept_demos(read_jsonl(run_dir / "demos.jsonl")).items():
            sft += [_sft_row(prompts, qid, t, "demos.jsonl") for t in texts]
    for r in _rows(run_dir, "rft.jsonl", "rft_data", done):
        sft.append(_sft_row(prompts, r["id"], r["text"], "rft.jsonl"))
    pairs = _rows(run_dir, "pairs.jsonl", "pairs", done)
    return {
        "pairs": [_pair_row(prompts, r, "pairs.jsonl") for r in pairs],
        "sft": sft,
        "samples": [
            _sample_row(prompts, r, "samples.jsonl", direct if r.get("style") == "direct" else None)
            for r in _rows(run_dir, "samples.jsonl", "samples", done)
        ],
    }


def _dpo_st_rows(run_dir: Path, recipe: Any, done: set[str], prompts: _Prompts) -> dict:
    cfg = recipe.dpo_st
    tables: dict[str, list[dict]] = {name: [] for name in TABLES}
    if "warmup.sft" in done:
        for e in list(prompts.examples.values())[: cfg.gold_questions]:
            text = gold_rationale(prompts.task, e)
            tables["sft"].append(_sft_row(prompts, e.id, text, "warmup"))
    for arm, r in _rounds(recipe):
        folder, stage = f"{arm}/r{r}", f"{arm}.r{r}"
        for name in ("dpo_samples", "sft_samples"):
            source = f"{folder}/{name}.jsonl"
            for row in _rows(run_dir, source, f"{stage}.{name}", done):
                tables["samples"].append(_sample_row(prompts, row, source))
        source = f"{folder}/pairs.jsonl"
        for row in _rows(run_dir, source, f"{stage}.pairs", done):
            tables["pairs"].append(_pair_row(prompts, row, source))
        source = f"{folder}/sft_data.jsonl"
        for row in _rows(run_dir, source, f"{stage}.sft_data", done):
            tables["sft"].append(_sft_row(prompts, row["id"], row["text"], source))
    return tables


def _rounds(recipe: Any) -> Iterator[tuple[str, int]]:
    """Every (arm, round) of a DPO-ST recipe: its method first, then its baselines."""
    arms = [recipe.method, *(b for b in recipe.dpo_st.baselines if b != recipe.method)]
    for arm in arms:
        for r in range(1, recipe.dpo_st.rounds + 1):
            yield arm, r


def _rows(run_dir: Path, relative: str, stage: str, done: set[str]) -> list[dict]:
    """The records of a finished stage's file (none when the stage is not done)."""
    return read_jsonl(run_dir / relative) if stage in done else []


def _pair_row(prompts: _Prompts, r: dict, source: str) -> dict:
    return {
        "id": r["id"],
        # run directories from before pairs carried their prompt: the same one, rebuilt
        "prompt": r.get("prompt") or prompts(r["id"]),
        "chosen": assistant(completion_text(r["chosen"])),
        "rejected": assistant(completion_text(r["rejected"])),
        "rejected_truncated": bool(r.get("rejected_truncated", False)),
        "chosen_from": r.get("chosen_from"),
        "similarity": r.get("similarity"),
        "rejected_full": r.get("rejected_full"),
        "source": source,
    }


def _sft_row(prompts: _Prompts, qid: str, text: str, source: str) -> dict:
    return {"id": qid, "messages": [*prompts(qid), *assistant(text)], "source": source}


def _sample_row(prompts: _Prompts, r: dict, source: str, instruction: str | None = None) -> dict:
    return {
        "id": r["id"],
        "prompt": prompts(r["id"], instruction),
        "completion": assistant(r["text"]),
        "label": bool(r["correct"]),
        "style": r.get("style"),
        "tokens": r.get("tokens"),
        "source": source,
    }


# ---- writing ----------------------------------------------------------------------------------
def _features(name: str):
    from datasets import Features, Value

    messages = [{"role": Value("string"), "content": Value("string")}]
    text, flag = Value("string"), Value("bool")
    columns = {
        "pairs": {
            "id": text, "prompt": messages, "chosen": messages, "rejected": messages,
            "rejected_truncated": flag, "chosen_from": text, "similarity": Value("float64"),
            "rejected_full": text, "source": text,
        },
        "sft": {"id": text, "messages": messages, "source": text},
        "samples": {
            "id": text, "prompt": messages, "completion": messages, "label": flag,
            "style": text, "tokens": Value("int64"), "source": text,
        },
    }  # fmt: skip
    return Features(columns[name])


def _write(rows: list[dict], name: str, folder: Path, fmt: str) -> None:
    if fmt == "jsonl":
        write_jsonl_atomic(folder / f"{name}.jsonl", rows)
        return
    from datasets import Dataset

    features = _features(name)
    table = Dataset.from_dict({k: [r[k] for r in rows] for k in features}, features=features)
    if fmt == "parquet":
        table.to_parquet(str(folder / f"{name}.parquet"))
    else:
        # one shard even when empty: datasets cannot load an empty table saved in none
        table.save_to_disk(str(folder / name), num_shards=1 if not rows else None)
