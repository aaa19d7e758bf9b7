"""Tests for the generated arithmetic word-problem task."""

from __future__ import annotations

import dataclasses
import json
import re
from fractions import Fraction

import pytest

from selftrain import tasks
from selftrain.tasks.arithmetic import POOL_A, POOL_B, ArithmeticTask
from selftrain.tasks.base import Example, Task

TEST_SPLITS = ("in_domain", "out_of_domain", "longer")
_ANNOTATION = re.compile(r"<<([^<>]*)>>")
_CALC = re.compile(r"(\d+)([-+*/])(\d+)=(\d+)")
_LINE = re.compile(r"^[^<>:]+: (\d+[-+*/]\d+)=<<([^<>]*)>>(\d+)$")


@pytest.fixture(scope="module")
def task() -> ArithmeticTask:
    return ArithmeticTask()


@pytest.fixture(scope="module")
def all_examples(task: ArithmeticTask) -> dict[str, list[Example]]:
    return {split: task.load(split) for split in task.splits()}


def _dump(task: ArithmeticTask) -> str:
    return json.dumps({s: [e.to_dict() for e in task.load(s)] for s in task.splits()})


def _calc(a: int, op: str, b: int) -> Fraction:
    if op == "+":
        return Fraction(a + b)
    if op == "-":
        return Fraction(a - b)
    if op == "*":
        return Fraction(a * b)
    return Fraction(a, b)


def test_registry() -> None:
    assert "arithmetic" in tasks.names()
    task = tasks.get("arithmetic", seed=3, n_train=5)
    assert isinstance(task, ArithmeticTask)
    assert isinstance(task, Task)
    assert len(task.load("train")) == 5
    with pytest.raises(KeyError, match="arithmetic"):
        tasks.get("no-such-task")


def test_register_custom_factory() -> None:
    @tasks.register("tiny-arith-test")
    def factory(**kwargs: int) -> ArithmeticTask:
        return ArithmeticTask(n_train=1, **kwargs)

    assert "tiny-arith-test" in tasks.names()
    assert len(tasks.get("tiny-arith-test", seed=1).load("train")) == 1


def test_split_sizes_ids_and_load(
    task: ArithmeticTask, all_examples: dict[str, list[Example]]
) -> None:
    assert task.splits() == ["train", "validation", "in_domain", "out_of_domain", "longer"]
    expected = {"train": 2000, "validation": 200}
    for split, examples in all_examples.items():
        assert len(examples) == expected.get(split, 300)
        assert [e.id for e in examples] == [f"arith-{split}-{i:05d}" for i in range(len(examples))]
        assert all(e.meta["split"] == split for e in examples)
    assert task.load("train", 10) == all_examples["train"][:10]
    assert task.load("train", 0) == []
    with pytest.raises(ValueError):
        task.load("test")


def test_gold_rationales_are_judged_correct(all_examples: dict[str, list[Example]]) -> None:
    task = ArithmeticTask()
    for examples in all_examples.values():
        for ex in examples:
            assert ex.rationale is not None
            assert task.demonstration(ex) == ex.rationale
            assert task.prompt(ex) == ex.question
            assert task.extract(ex.rationale) == ex.answer
            assert task.is_correct(ex.rationale, ex)
            wrong = f"{ex.rationale.rsplit('####', 1)[0]}#### {int(ex.answer) + 1}"
            assert not task.is_correct(wrong, ex)


def test_annotations_are_arithmetically_right(all_examples: dict[str, list[Example]]) -> None:
    for examples in all_examples.values():
        for ex in examples:
            assert ex.rationale is not None
            *step_lines, final = ex.rationale.split("\n")
            assert final == f"#### {ex.answer}"
            assert len(step_lines) == ex.meta["steps"] == len(ex.meta["ops"])
            value = ex.meta["operands"][0]
            for line, op_name in zip(step_lines, ex.meta["ops"], strict=True):
                assert len(line.split()) <= 12, line
                line_match = _LINE.match(line)
                assert line_match, line
                visible, annotation, shown = line_match.groups()
                calc = _CALC.fullmatch(annotation)
                assert calc, annotation
                a, op, b, c = calc.groups()
                assert visible == f"{a}{op}{b}"
                assert {"add": "+", "sub": "-", "mul": "*", "div": "/"}[op_name] == op
                exact = _calc(int(a), op, int(b))
                assert exact == int(c) == int(shown)
                assert exact.denominator == 1 and exact >= 0
                assert int(a) == value
                value = int(c)
            assert str(value) == ex.answer
            assert len(_ANNOTATION.findall(ex.rationale)) == ex.meta["steps"]


def test_results_whole_positive_and_bounded(all_examples: dict[str, list[Example]]) -> None:
    for examples in all_examples.values():
        for ex in examples:
            for annotation in _ANNOTATION.findall(ex.rationale or ""):
                result = int(annotation.split("=")[1])
                assert 0 <= result <= 999


def test_reproducible() -> None:
    assert _dump(ArithmeticTask(seed=7, n_train=50)) == _dump(ArithmeticTask(seed=7, n_train=50))
    assert _dump(ArithmeticTask(seed=7, n_train=50)) != _dump(ArithmeticTask(seed=8, n_train=50))
    small, large = ArithmeticTask(n_train=10), ArithmeticTask(n_train=100)
    for split in TEST_SPLITS:
        assert small.load(split) == large.load(split)
    rebuilt = dataclasses.replace(small)
    assert _dump(rebuilt) == _dump(small)


def test_no_question_shared_between_splits(all_examples: dict[str, list[Example]]) -> None:
    seen: dict[str, str] = {}
    for split, examples in all_examples.items():
        for ex in examples:
            assert ex.question not in seen, (split, seen.get(ex.question))
            seen[ex.question] = split
    train = {e.question for e in all_examples["train"]}
    for split in TEST_SPLITS:
        assert train.isdisjoint(e.question for e in all_examples[split])


def test_in_domain_uses_pool_a_and_range(
    task: ArithmeticTask, all_examples: dict[str, list[Example]]
) -> None:
    for split in ("train", "validation", "in_domain", "longer"):
        for ex in all_examples[split]:
            assert ex.meta["name"] in POOL_A.names and ex.meta["item"] in POOL_A.items
            start, *operands = ex.meta["operands"]
            assert task.min_number <= start <= task.max_number
            for op, n in zip(ex.meta["ops"], operands, strict=True):
                upper = task.max_number if op in ("add", "sub") else task.max_factor
                assert n <= upper


def test_out_of_domain_is_disjoint(
    task: ArithmeticTask, all_examples: dict[str, list[Example]]
) -> None:
    assert not set(POOL_A.names) & set(POOL_B.names)
    assert not set(POOL_A.items) & set(POOL_B.items)
    train_names = {e.meta["name"] for e in all_examples["train"]}
    train_items = {e.meta["item"] for e in all_examples["train"]}
    name_re = re.compile(r"\b(" + "|".join(POOL_A.names) + r")\b")
    item_re = re.compile(r"\b(" + "|".join(POOL_A.items) + r")\b")
    for ex in all_examples["out_of_domain"]:
        assert ex.meta["name"] not in train_names and ex.meta["item"] not in train_items
        assert not name_re.search(ex.question) and not item_re.search(ex.question)
        assert task.min_steps <= ex.meta["steps"] <= task.max_steps
        start, *operands = ex.meta["operands"]
        assert task.max_number < start <= task.ood_max_number
        for op, n in zip(ex.meta["ops"], operands, strict=True):
            if op in ("add", "sub"):
                assert task.max_number < n <= task.ood_max_number
            else:
                assert 2 <= n <= task.max_factor


def test_out_of_domain_phrasings_unseen_in_training(all_examples: dict[str, list[Example]]) -> None:
    templates = [*POOL_B.setups, *POOL_B.questions, *POOL_B.connectors]
    templates += [step.text for steps in POOL_B.steps.values() for step in steps]
    train_text = "\n".join(e.question for e in all_examples["train"]).lower()
    for template in templates:
        fragment = max(re.split(r"\{\w+\}", template), key=len).strip().lower()
        assert len(fragment) >= 8, template
        assert fragment not in train_text, template


def test_step_counts(task: ArithmeticTask, all_examples: dict[str, list[Example]]) -> None:
    for split, examples in all_examples.items():
        steps = {e.meta["steps"] for e in examples}
        if split == "longer":
            assert min(steps) > task.max_steps
            assert max(steps) <= task.max_steps + task.longer_extra
        else:
            assert steps == set(range(task.min_steps, task.max_steps + 1))


def test_all_operations_appear(all_examples: dict[str, list[Example]]) -> None:
    for split, examples in all_examples.items():
        ops = {op for e in examples for op in e.meta["ops"]}
        assert ops == {"add", "sub", "mul", "div"}, split


def test_knobs() -> None:
    task = ArithmeticTask(
        seed=1, n_train=30, n_test=10, min_steps=1, max_steps=1, max_number=10,
        op_weights={"add": 1.0},
    )  # fmt: skip
    for ex in task.load("train"):
        assert ex.meta["ops"] == ["add"]
        assert all(n <= 10 for n in ex.meta["operands"])
    assert {e.meta["steps"] for e in task.load("longer")} <= {2, 3}
    with pytest.raises(ValueError):
        ArithmeticTask(min_steps=3, max_steps=2)
    with pytest.raises(ValueError):
        ArithmeticTask(max_number=60, ood_max_number=60)
    with pytest.raises(ValueError):
        ArithmeticTask(op_weights={"pow": 1.0})


def test_example_roundtrip(all_examples: dict[str, list[Example]]) -> None:
    ex = all_examples["validation"][0]
    assert Example.from_dict(json.loads(json.dumps(ex.to_dict()))) == ex
    bare = Example.from_dict({"id": "x", "question": "q", "answer": "1"})
    assert bare.rationale is None and bare.meta == {}
    assert hash(bare) == hash(Example(id="x", question="q", answer="1"))
