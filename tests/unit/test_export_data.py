"""Run data in TRL's formats: pair records with their prompt, `selftrain export-data`'s tables
(read back by `datasets`), and TRL's DPOTrainer taking one step on the exported pairs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from selftrain import tasks
from selftrain.cli import app
from selftrain.config import load_recipe, parse_recipe
from selftrain.export_data import TABLES, export_data
from selftrain.io import read_jsonl, write_jsonl_atomic
from selftrain.rundir import RunDir, RunDirError
from selftrain.stages.data import Prompts, dpo_st_data, dpo_st_splits, srit_data, srit_splits
from selftrain.stages.pairs import dpo_st_pairs_stage, srit_pairs_stage
from selftrain.stages.pseudo_labels import dpo_st_sft_data_stage, rft_stage
from selftrain.stages.sample import read_samples

SYSTEM = "Think step by step."
# q0: the wrong path shares its first line with the right one, so it is cut after its second
# (no EOS); q1: it goes wrong on its only line, so it stays whole
RIGHT = ["Step 1: 2+3=5\nStep 2: 5*2=10\n#### 10", "It is 7.\n#### 7"]
WRONG = ["Step 1: 2+3=5\nStep 2: 5*2=12\n#### 12", "#### 9"]


def _srit_recipe():
    return load_recipe(
        None,
        {
            "student": {"system_prompt": SYSTEM},
            "task": {"name": "arithmetic", "args": {"n_train": 6, "n_validation": 2, "n_test": 2}},
            "teacher": {"n_questions": 2},
            "sft": {"val_questions": 2},
            "sampling": {"n_questions": 2, "offset": 0},
            "eval": {"n": 2},
            "pairs": {"truncate_rejected": True, "teacher_fallback": False},
        },
    )


def _srit_run(path):
    """An SRIT run directory through its data, demos, samples, pairs and rft stages (the
    samples and demos written here instead of by a model and a teacher)."""
    recipe = _srit_recipe()
    task = tasks.get(recipe.task.name, **recipe.task.args)
    with RunDir(path, recipe) as rd:
        train = srit_data(rd, srit_splits(task, recipe))["train"]
        by_id = {e.id: e for e in train}
        with rd.stage("demos"):
            demo = {"teacher": "gold", "sample": 0, "kept": True, "text": "A demo.\n#### 1"}
            write_jsonl_atomic(path / "demos.jsonl", [{**demo, "id": train[0].id}])
        rows = [
            {"id": e.id, "style": "cot", "text": t, "correct": ok, "tokens": 9}
            for e, right, wrong in zip(train, RIGHT, WRONG, strict=False)
            for t, ok in ((right, True), (wrong, False))
        ]
        with rd.stage("samples"):
            write_jsonl_atomic(path / "samples.jsonl", rows)
        cot = read_samples(path / "samples.jsonl", "cot")
        prompts = Prompts(SimpleNamespace(cfg=recipe.student), task)
        pairs = srit_pairs_stage(
            rd, cot, {}, {}, recipe.pairs, 0, lambda q: prompts.messages(by_id[q])
        )
        rft_stage(rd, cot, recipe.rft, 0)
    return task, train, pairs


def test_pair_records_are_trl_preference_records_with_the_prompt_the_student_saw(tmp_path):
    task, train, pairs = _srit_run(tmp_path / "run")
    assert [p["id"] for p in pairs] == [train[0].id, train[1].id]
    for p, e in zip(pairs, train, strict=False):
        assert p["prompt"] == [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": task.prompt(e)},
        ]
        assert p["chosen"][0]["role"] == p["rejected"][0]["role"] == "assistant"
    assert pairs[0]["rejected_truncated"] is True and pairs[1]["rejected_truncated"] is False
    assert pairs[0]["rejected"][0]["content"] == "Step 1: 2+3=5\nStep 2: 5*2=12\n"
    assert pairs[0]["rejected_full"] == WRONG[0]


def test_export_writes_every_table_that_datasets_loads(tmp_path):
    from datasets import load_from_disk

    _srit_run(tmp_path / "run")
    counts = export_data(tmp_path / "run", tmp_path / "out")
    assert counts == {"pairs": 2, "sft": 3, "samples": 4}  # sft: 1 demo + 2 RFT paths
    tables = {name: load_from_disk(str(tmp_path / "out" / name)) for name in TABLES}
    assert {n: len(t) for n, t in tables.items()} == counts
    pairs, sft, samples = tables["pairs"], tables["sft"], tables["samples"]
    assert pairs["rejected_truncated"] == [True, False]
    assert pairs[0]["rejected"][0]["content"].endswith("5*2=12\n")
    assert sft[0]["source"] == "demos.jsonl" and sft[1]["source"] == "rft.jsonl"
    assert [m["role"] for m in sft[0]["messages"]] == ["system", "user", "assistant"]
    assert samples["label"] == [True, False, True, False]
    assert samples[0]["prompt"] == pairs[0]["prompt"]
    with pytest.raises(ValueError, match="exists"):
        export_data(tmp_path / "run", tmp_path / "out")


def test_a_run_stopped_before_its_samples_exports_empty_tables_that_load(tmp_path):
    from datasets import load_from_disk

    recipe = _srit_recipe()
    task = tasks.get(recipe.task.name, **recipe.task.args)
    with RunDir(tmp_path / "run", recipe) as rd:
        srit_data(rd, srit_splits(task, recipe))
        write_jsonl_atomic(tmp_path / "run" / "samples.jsonl", [{"id": "torn"}])  # not done
    assert export_data(tmp_path / "run", tmp_path / "out") == dict.fromkeys(TABLES, 0)
    pairs = load_from_disk(str(tmp_path / "out" / "pairs"))
    assert len(pairs) == 0 and {"prompt", "chosen", "rejected"} <= set(pairs.column_names)


def test_export_of_a_dpo_st_run_as_parquet(tmp_path):
    from datasets import load_dataset

    recipe = parse_recipe(
        {
            "method": "dpo_st",
            "task": {"name": "arithmetic", "args": {"n_train": 4, "n_validation": 2, "n_test": 2}},
            "eval": {"splits": ["in_domain"], "n": 2},
            "dpo_st": {"rounds": 1, "baselines": [], "n_questions": 2, "gold_questions": 2},
        }
    )
    task = tasks.get(recipe.task.name, **recipe.task.args)
    run, folder = tmp_path / "run", tmp_path / "run" / "dpo_st" / "r1"
    with RunDir(run, recipe) as rd:
        train, _ = dpo_st_data(rd, task, dpo_st_splits(task, recipe), recipe)
        gold = {e.id: e.rationale or task.demonstration(e) for e in train[:2]}
        with rd.stage("warmup.sft"):
            pass
        rows = [{"id": train[0].id, "text": t, "correct": ok} for t, ok in (("a", 1), ("b", 0))]
        with rd.stage("dpo_st.r1.dpo_samples"):
            write_jsonl_atomic(folder / "dpo_samples.jsonl", rows)
        samples = [folder / "dpo_samples.jsonl"]
        prompts = Prompts(SimpleNamespace(cfg=recipe.student), task)
        by_id = {e.id: e for e in train}
        dpo_st_pairs_stage(
            rd, "dpo_st.r1.pairs", ("pairs",), folder / "pairs.jsonl", samples, gold,
            recipe.dpo_st, set, 0, lambda q: prompts.messages(by_id[q]),
        )  # fmt: skip
        dpo_st_sft_data_stage(
            rd, "dpo_st.r1.sft_data", ("sft",), folder / "sft_data.jsonl", samples, gold,
            recipe.dpo_st, set,
        )  # fmt: skip
    counts = export_data(run, tmp_path / "out", "parquet")
    pairs, sft = read_jsonl(folder / "pairs.jsonl"), read_jsonl(folder / "sft_data.jsonl")
    assert counts == {"pairs": len(pairs), "sft": 2 + len(sft), "samples": 2} and pairs
    table = load_dataset("parquet", data_files=str(tmp_path / "out" / "pairs.parquet"))["train"]
    assert table["source"] == ["dpo_st/r1/pairs.jsonl"] * len(pairs)
    assert table[0]["prompt"][-1] == {"role": "user", "content": task.prompt(train[0])}


def test_export_data_command_names_a_folder_that_is_not_a_run(tmp_path):
    result = CliRunner().invoke(app, ["export-data", str(tmp_path), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert f"{tmp_path}: not a run directory" in result.output
    with pytest.raises(RunDirError, match="not a run directory"):
        export_data(tmp_path, tmp_path / "out")


@pytest.mark.filterwarnings("ignore:.*checkpointing.* is deprecated:FutureWarning")  # TRL's own
def test_trl_dpo_trainer_takes_a_step_on_the_exported_pairs(tmp_path, tiny_dir, make_student):
    """The exported pairs go to TRL's DPOTrainer as they are: one optimizer step on the CPU,
    on the tokens selftrain's own DPO scores (but for the truncated path's EOS)."""
    pytest.importorskip("trl")
    from datasets import load_dataset, load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    _srit_run(tmp_path / "run")
    result = CliRunner().invoke(app, ["export-data", str(tmp_path / "run"), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    pairs = load_from_disk(str(tmp_path / "out" / "pairs"))
    run_pairs = tmp_path / "run" / "pairs.jsonl"
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"), max_steps=1, per_device_train_batch_size=2,
        report_to="none", use_cpu=True, save_strategy="no", logging_steps=1,
        dataset_num_proc=None, disable_tqdm=True,
    )  # fmt: skip
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_dir),
        args=args,
        train_dataset=pairs,
        # the run's own pairs.jsonl, read as JSON, is a dataset TRL takes as it is too
        eval_dataset=load_dataset("json", data_files=str(run_pairs))["train"],
        processing_class=AutoTokenizer.from_pretrained(tiny_dir),
    )
    for column in ("prompt_ids", "chosen_ids", "rejected_ids"):
        assert trainer.eval_dataset[column] == trainer.train_dataset[column]
    out = trainer.train()
    assert out.global_step == 1 and out.training_loss > 0
    # TRL's tokens are the student's: the same prompt ids, the chosen path then EOS; but the
    # truncated rejected path gets an EOS too (its turn closed), which selftrain leaves off
    s, row, pair = make_student(system_prompt=SYSTEM), trainer.train_dataset[0], pairs[0]
    assert pair["rejected_truncated"]
    assert row["prompt_ids"] == s.chat_ids(pair["prompt"][-1]["content"], SYSTEM)
    chosen = s.completion_ids(pair["chosen"][0]["content"])
    assert row["chosen_ids"][: len(chosen)] == chosen
    cut = s.completion_ids(pair["rejected"][0]["content"], eos=False)
    assert row["rejected_ids"][: len(cut) + 1] == [*cut, s.eos_id]


def test_pairs_written_before_they_carried_a_prompt_still_train_and_export(tmp_path, make_student):
    """A run directory from before: plain-text chosen/rejected and no prompt. Its DPO stage
    tokenizes them as it does today's records, and the export rebuilds the same prompt."""
    from selftrain.stages.dpo import tokenize_pairs
    from selftrain.tasks.base import Example

    task, train, pairs = _srit_run(tmp_path / "run")
    old = [
        {k: (v[0]["content"] if k in ("chosen", "rejected") else v) for k, v in p.items()}
        for p in pairs
    ]
    for p in old:
        del p["prompt"]
    s = make_student(system_prompt=SYSTEM)
    by_id: dict[str, Example] = {e.id: e for e in train}
    prompts = Prompts(s, task)
    assert tokenize_pairs(s, old, by_id, prompts) == tokenize_pairs(s, pairs, by_id, prompts)
    export_data(tmp_path / "run", tmp_path / "new", "jsonl")
    write_jsonl_atomic(tmp_path / "run" / "pairs.jsonl", old)
    export_data(tmp_path / "run", tmp_path / "old", "jsonl")
    new_rows = read_jsonl(tmp_path / "new" / "pairs.jsonl")
    assert read_jsonl(tmp_path / "old" / "pairs.jsonl") == new_rows
