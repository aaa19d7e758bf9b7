"""The ``custom`` task: the user's JSONL, JSON, CSV, parquet or hub rows, every answer type
judged by the existing families, and malformed rows named by file, line and field."""

from __future__ import annotations

import csv
import json
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest

from selftrain import tasks
from selftrain.eval.suite import _check_settings, answer_settings
from selftrain.tasks.choice import ChoiceTask
from selftrain.tasks.competition_math import MathTask
from selftrain.tasks.data import DataError
from selftrain.tasks.math_word import NumberTask
from selftrain.tasks.yesno import StrategyQA


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _csv(path: Path, header: list[str], rows: list[list]) -> str:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def _error(match: str, **args) -> str:
    with pytest.raises(DataError, match=match) as info:
        tasks.get("custom", **args).load()
    return str(info.value)


# -- every format ------------------------------------------------------------------------------


def test_jsonl_numbers_with_rationales(tmp_path):
    path = _jsonl(
        tmp_path / "d.jsonl",
        [
            {"q": "2 + 3?", "a": "5", "why": "2 + 3 = 5.\n#### 5", "n": 7},
            {"q": "Half of 3?", "a": 1.5, "why": "We halve it.", "n": 8},
            {"q": "1,000 + 80?", "a": "1,080", "why": "", "n": 9},
            {"q": "No rationale?", "a": "0", "n": 10},
        ],
    )
    task = tasks.get(
        "custom",
        path=path,
        question_field="q",
        answer_field="a",
        rationale_field="why",
        id_field="n",
    )
    assert isinstance(task, NumberTask) and task.kind == "number"
    assert task.splits() == ["test"] and task.test_split == "test"
    a, b, c, d = task.load()
    assert (a.id, a.question, a.answer, a.rationale) == ("custom/7", "2 + 3?", "5", a.rationale)
    assert a.rationale == "2 + 3 = 5.\n#### 5"  # states the answer: kept as it is
    assert b.answer == "1.5" and b.rationale == "We halve it.\nThe answer is 1.5."
    assert c.answer == "1080" and c.rationale is None and d.rationale is None
    assert task.is_correct("so 5.0 in all. The answer is 5.", a)
    assert not task.is_correct("The answer is 6.", a)
    assert "End with 'The answer is N.'" in task.prompt(a)


def test_csv_choice_with_options_as_columns_or_a_json_cell(tmp_path):
    path = _csv(
        tmp_path / "d.csv",
        ["question", "A", "B", "C", "answer", "options"],
        [
            ["Sky colour?", "red", "blue", "green", "B", '["red", "blue", "green"]'],
            ["Grass colour?", "red", "blue", "green", "green", '["red", "blue", "green"]'],
            ["Blood colour?", "red", "blue", "green", "0", '["red", "blue", "green"]'],
        ],
    )
    for options in (["A", "B", "C"], "options"):
        task = tasks.get("custom", path=path, answer_type="choice", options_field=options)
        assert isinstance(task, ChoiceTask) and task.kind == "choice"
        sky, grass, blood = task.load()
        assert [sky.answer, grass.answer, blood.answer] == ["B", "C", "A"]
        assert sky.meta["choices"] == ["red", "blue", "green"]
        assert "(B) blue" in task.prompt(sky)
        assert task.is_correct("The answer is (B).", sky) and not task.is_correct("(A)", sky)
        assert task.choice_continuations(sky) == [" red", " blue", " green"]


def test_parquet_math(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    table = {"problem": ["Simplify 2/4.", "Solve x+1=3."], "answer": ["\\frac{1}{2}", "2"]}
    pq.write_table(pa.table(table), path)
    task = tasks.get("custom", path=str(path), question_field="problem", answer_type="math")
    assert isinstance(task, MathTask) and task.kind == "math" and task.name == "custom"
    half, two = task.load()
    assert half.answer == "\\frac{1}{2}"
    assert task.is_correct("So it is $\\boxed{0.5}$.", half)
    assert task.is_correct("The answer is $\\boxed{2}$.", two)
    assert not task.is_correct("\\boxed{3}", two)
    assert "\\boxed{}" in task.prompt(half)


def test_json_array_yes_no(tmp_path):
    path = tmp_path / "d.json"
    rows = [{"question": "Is 2 even?", "answer": True}, {"question": "Is 3 even?", "answer": "No"}]
    path.write_text(json.dumps(rows))
    task = tasks.get("custom", path=str(path), answer_type="yes_no")
    assert isinstance(task, StrategyQA) and task.kind == "yesno"
    even, odd = task.load()
    assert (even.answer, odd.answer) == ("yes", "no")
    assert task.is_correct("Two is divisible by two. The answer is yes.", even)
    assert task.choice_answers(odd) == ["yes", "no"]


def test_files_per_split_and_split_sizes(tmp_path):
    rows = [{"question": f"{i} + 1?", "answer": i + 1} for i in range(10)]
    train = _jsonl(tmp_path / "train.jsonl", rows[:6])
    test = _jsonl(tmp_path / "test.jsonl", rows[6:])
    task = tasks.get("custom", files={"train": train, "test": test})
    assert task.splits() == ["train", "test"] and task.train_split == "train"
    assert len(task.load("train")) == 6 and task.load("test")[0].answer == "7"
    whole = _jsonl(tmp_path / "all.jsonl", rows)
    cut = tasks.get("custom", path=whole, split_sizes={"train": 5, "dev": 3, "test": 2})
    assert cut.splits() == ["train", "dev", "test"]
    assert [e.answer for e in cut.load("dev")] == ["6", "7", "8"]
    assert [e.answer for e in cut.load("test")] == ["9", "10"]
    assert [e.id for e in cut.load("train", 2)] == ["custom/train/0", "custom/train/1"]
    too_many = {"train": 8, "test": 3}
    _error(r"all\.jsonl: has 10 rows, fewer than the 11", path=whole, split_sizes=too_many)


def test_hub_rows_and_the_offline_error(tmp_path, monkeypatch):
    fake = types.ModuleType("datasets")
    calls = []

    def load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        if name == "offline/set":
            raise ConnectionError("Couldn't reach 'offline/set' on the Hub")
        return [{"question": f"{split} {i}?", "answer": i} for i in range(4)]

    fake.load_dataset = load_dataset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", fake)
    task = tasks.get("custom", hub="me/set", hub_config="main", hub_splits={"test": "validation"})
    assert [e.question for e in task.load()][:2] == ["validation 0?", "validation 1?"]
    assert calls == [("me/set", "main", "validation")]
    cut = tasks.get("custom", hub="me/set", hub_split="train", split_sizes={"train": 3, "test": 1})
    assert cut.load("test")[0].question == "train 3?"
    message = _error("offline", hub="offline/set")
    assert message.startswith("task.args.hub offline/set: Couldn't reach")
    assert "give task.args.path or files instead" in message


# -- the eval cache is keyed on the data -------------------------------------------------------


def test_an_edited_file_is_a_new_eval_key(tmp_path):
    path = tmp_path / "d.jsonl"
    _jsonl(path, [{"question": "1 + 1?", "answer": 2}])
    task = tasks.get("custom", path=str(path))
    student = SimpleNamespace(
        cfg=SimpleNamespace(model="m", gguf_file=None, autocast_bf16=False, system_prompt=None),
        checkpoint=None,
    )
    before = answer_settings(student, task, "generate", None, 8, False)
    assert before["data"] == task.data_key()
    answers = tmp_path / "out" / "custom.generate.jsonl"
    answers.parent.mkdir()
    answers.write_text('{"id": "custom/test/0"}\n')
    (tmp_path / "out" / "custom.generate.settings.json").write_text(json.dumps(before))
    _check_settings(answers, before)  # the same data: resumed
    _jsonl(path, [{"question": "1 + 1?", "answer": 3}])
    after = answer_settings(student, task, "generate", None, 8, False)
    assert after["data"] != before["data"]
    with pytest.raises(ValueError, match="other settings \\(data "):
        _check_settings(answers, after)
    other_field = tasks.get("custom", path=str(path), answer_field="question")
    assert other_field.data_key() != task.data_key()


# -- malformed rows and arguments ----------------------------------------------------------------


def test_malformed_rows_name_file_line_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    good = {"question": "1 + 1?", "answer": 2}
    _jsonl(bad, [good, {"question": "2 + 2?"}])
    assert _error("missing field", path=str(bad)) == f"{bad}:2: missing field 'answer'"
    _jsonl(bad, [good, {"question": "2 + 2?", "answer": "four"}])
    assert _error("not a number", path=str(bad)) == (
        f"{bad}:2: field 'answer' is 'four', not a number"
    )
    _jsonl(bad, [good, {"question": ["a"], "answer": 1}])
    _error(rf"{bad}:2: field 'question' should be str, got list", path=str(bad))
    _jsonl(bad, [good, {"question": "  ", "answer": 1}])
    _error(rf"{bad}:2: field 'question' is empty", path=str(bad))
    _jsonl(bad, [{"question": "q", "answer": 1, "id": 1}, {"question": "r", "answer": 2, "id": 1}])
    _error(rf"{bad}:2: id 'custom/1' is also the id of {bad}:1", path=str(bad), id_field="id")
    _jsonl(bad, [{"question": "q", "answer": "yes"}, {"question": "q", "answer": "maybe"}])
    _error(rf"{bad}:2: field 'answer' is 'maybe', not yes, no", path=str(bad), answer_type="yes_no")
    _jsonl(bad, [{"question": "q", "answer": "D", "options": ["x", "y"]}])
    _error(
        rf"{bad}:1: field 'answer' is 'D', not a letter A-B",
        path=str(bad),
        answer_type="choice",
        options_field="options",
    )
    _jsonl(bad, [{"question": "q", "answer": "A", "options": "x or y"}])
    _error(
        rf"{bad}:1: field 'options' should be a list of options",
        path=str(bad),
        answer_type="choice",
        options_field="options",
    )
    bad.write_text(json.dumps(good) + "\n{oops\n")
    _error(rf"{bad}:2: invalid JSON", path=str(bad))
    table = _csv(tmp_path / "bad.csv", ["question", "answer"], [["1 + 1?", "2"], ["x", "3", "4"]])
    _error(rf"{table}:3: has 3 cells, the header has 2", path=table)
    table = _csv(tmp_path / "bad2.csv", ["question", "answer"], [["1 + 1?", "2"], ["3 + 1?", ""]])
    _error(rf"{table}:3: field 'answer' is '', not a number", path=table)
    parquet = tmp_path / "bad.parquet"
    parquet.write_text("not parquet")
    _error(rf"{parquet}: not a readable parquet file", path=str(parquet))


def test_bad_arguments_are_named(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": 1}])
    with pytest.raises(DataError, match=r"task.args.quesion_field is not a key of task custom"):
        tasks.get("custom", path=path, quesion_field="q")
    with pytest.raises(DataError, match=r"task.args.answer_type is 'letter'; use one of number"):
        tasks.get("custom", path=path, answer_type="letter")
    with pytest.raises(DataError, match=r"answer_type choice needs task.args.options_field"):
        tasks.get("custom", path=path, answer_type="choice")
    with pytest.raises(DataError, match=r"task.args.split_sizes.train should be a count > 0"):
        tasks.get("custom", path=path, split_sizes={"train": 0})
    with pytest.raises(DataError, match=r"give one of task.args.path, files or hub"):
        tasks.get("custom", path=path, hub="x/y")
    _error("set task.args.path, files or hub")
    (tmp_path / "d.txt").write_text("x")
    _error(
        r"d\.txt: unknown format \.txt; use \.jsonl, \.json, \.csv, \.parquet",
        path=str(tmp_path / "d.txt"),
    )
    _error(r"nope\.jsonl: file not found \(relative paths are read from ", path="nope.jsonl")


def test_the_example_file_and_recipe_load():
    from selftrain.config import default_recipe_path, load_recipe
    from selftrain.stages.data import srit_splits

    root = Path(__file__).resolve().parents[2]
    recipe = load_recipe(default_recipe_path().with_name("custom_jsonl.yaml"))
    args = {**recipe.task.args, "path": str(root / recipe.task.args["path"])}
    task = tasks.get(recipe.task.name, **args)
    splits = srit_splits(task, recipe)
    assert {k: len(v) for k, v in splits.items()} == {"train": 300, "validation": 50, "test": 50}
    for example in splits["train"][:50]:  # every rationale states its gold answer
        assert task.is_correct(example.rationale, example)
