"""Numeric math word problem benchmarks: loading the real files, judging every gold answer,
extraction on tricky strings, error messages for broken files, and the hub formats."""

from __future__ import annotations

import json
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from selftrain.tasks import benchmark, get
from selftrain.tasks.base import Example
from selftrain.tasks.data import DataError, data_dir
from selftrain.tasks.math_word import NumberTask, asdiv_gold
from selftrain.verify.numbers import canonical_number, number_matches, parse_number

# Sizes from SOURCES.md. ASDiv has 2,215 records, of which 76 have non-numeric answers.
SIZES = {
    "gsm8k": {"train": 7473, "test": 1319},
    "multiarith": {"test": 600},
    "svamp": {"test": 1000},
    "asdiv": {"test": 2139},
    "addsub": {"test": 395},
    "singleeq": {"test": 508},
}
ASDIV_RECORDS = 2215
ASDIV_SKIPPED = 76
TASKS = list(SIZES)


@pytest.fixture(scope="module")
def root() -> Path:
    try:
        return data_dir()
    except DataError as exc:
        pytest.skip(f"benchmark data directory not found (expected ../shared/data): {exc}")


@pytest.fixture(scope="module")
def loaded(root: Path) -> dict[str, NumberTask]:
    """Each task with every split read once."""
    tasks: dict[str, NumberTask] = {}
    for name in TASKS:
        task = get(name, data_dir=root)
        assert isinstance(task, NumberTask)
        for split in task.splits():
            task.load(split)
        tasks[name] = task
    return tasks


def _examples(task: NumberTask) -> list[Example]:
    return [ex for split in task.splits() for ex in task.load(split)]


# -- the real files --------------------------------------------------------------------------


@pytest.mark.parametrize("name", TASKS)
def test_split_sizes_match_sources(loaded: dict[str, NumberTask], name: str) -> None:
    task = loaded[name]
    assert task.kind == "number"
    assert task.sizes() == SIZES[name]
    ids = [ex.id for ex in _examples(task)]
    assert len(set(ids)) == len(ids)


def test_asdiv_skips_only_non_numeric_answers(loaded: dict[str, NumberTask]) -> None:
    task = loaded["asdiv"]
    skipped = task.skipped["test"]  # type: ignore[attr-defined]
    assert len(skipped) == ASDIV_SKIPPED
    assert len(task.load("test")) + len(skipped) == ASDIV_RECORDS
    answers = {ex.answer for ex in task.load("test")}
    assert {"-1/3", "5/2", "3:4", "17:12", "60"} <= answers


def test_first_records(loaded: dict[str, NumberTask]) -> None:
    gsm = loaded["gsm8k"].load("test", 1)[0]
    assert gsm.question.startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert gsm.answer == "18"
    assert gsm.rationale is not None and gsm.rationale.endswith("#### 18")
    assert "<<16-3-4=9>>" in gsm.rationale
    assert loaded["multiarith"].load(n=1)[0].answer == "39"
    svamp = loaded["svamp"].load(n=1)[0]
    assert svamp.id == "svamp/chal-1"
    assert svamp.question == (
        "Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack "
        "How much do you have to pay to buy each pack?"
    )
    assert svamp.answer == "51"
    asdiv = loaded["asdiv"].load(n=1)[0]
    assert asdiv.question == (
        "Seven red apples and two green apples are in the basket. "
        "How many apples are in the basket?"
    )
    assert asdiv.answer == "9"
    assert loaded["addsub"].load(n=1)[0].answer == "43"
    assert loaded["singleeq"].load(n=1)[0].answer == "43"


def test_gold_answers_are_canonical(loaded: dict[str, NumberTask]) -> None:
    golds = {name: {ex.answer for ex in _examples(task)} for name, task in loaded.items()}
    for name, answers in golds.items():
        for answer in answers:
            assert canonical_number(answer) == answer, (name, answer)
            assert "," not in answer and not answer.endswith(".0"), (name, answer)
    assert {"-10", "-3", "1080"} <= golds["gsm8k"]  # negative and "1,080"-style golds
    assert "0.6666666666666666" in golds["addsub"]  # float golds keep their decimals
    assert "2400000" in golds["singleeq"]  # 2400000.0 -> "2400000"


def _with_commas(gold: str) -> str:
    if "/" in gold or ":" in gold:
        return gold
    sign, digits = ("-", gold[1:]) if gold.startswith("-") else ("", gold)
    whole, _, frac = digits.partition(".")
    return f"{sign}{int(whole):,}" + (f".{frac}" if frac else "")


def _dollars(gold: str) -> str:
    commas = _with_commas(gold)
    if "/" in gold or ":" in gold:
        return commas
    return f"-${commas[1:]}" if commas.startswith("-") else f"${commas}"


def _plus(gold: str, times: int = 1, add: int = 1) -> str:
    """``gold * times + add`` written in the gold's own form."""
    if ":" in gold:
        num, den = (int(x) for x in gold.split(":"))
        return f"{num * times + add * den}:{den}"
    if "/" in gold:
        return str(Fraction(gold) * times + add)
    return str(Decimal(gold) * times + add)


def _right(gold: str) -> list[str]:
    return [
        f"#### {_with_commas(gold)}",
        f"The answer is {_dollars(gold)}.",
        f"First 3 + 4 = 7 and 12 - 5 = 7, so she has {_with_commas(gold)} apples.",
        f"**Answer:** {gold}",
        f"So the total is $\\boxed{{{gold}}}$.",
        f"The answer is {gold}.\nCheck: 2 + 2 = 4.",
    ]


def _wrong(gold: str) -> list[str]:
    plus_one, double = _plus(gold), _plus(gold, times=2)
    return [
        f"The answer is {plus_one}.",
        f"#### {double}",
        f"Maybe {gold}? No. The answer is {plus_one}.",
        f"She has {gold} apples now and buys 1 more, so {plus_one}.",
    ]


@pytest.mark.parametrize("name", TASKS)
def test_every_gold_answer_is_judged_correct_and_perturbed_wrong(
    loaded: dict[str, NumberTask], name: str
) -> None:
    task = loaded[name]
    failures = []
    for ex in _examples(task):
        target = task.target(ex)
        if task.extract(target) != ex.answer or not task.is_correct(target, ex):
            failures.append((ex.id, ex.answer, target))
        failures += [(ex.id, ex.answer, c) for c in _right(ex.answer) if not task.is_correct(c, ex)]
        failures += [(ex.id, ex.answer, c) for c in _wrong(ex.answer) if task.is_correct(c, ex)]
    assert not failures, failures[:10]


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_gsm8k_rationale_is_judged_correct(loaded: dict[str, NumberTask], split: str) -> None:
    task = loaded["gsm8k"]
    examples = task.load(split)
    wrong = [ex.id for ex in examples if not task.is_correct(ex.rationale or "", ex)]
    assert not wrong, wrong[:10]
    assert all("#### " in (ex.rationale or "") for ex in examples)


def test_few_shot_prompt_uses_gsm8k_train_rationales(root: Path) -> None:
    task = get("gsm8k", data_dir=root, style="fewshot", n_shots=2)
    prompt = task.prompt(task.load("test", 1)[0])
    assert prompt.count("Question:") == 3 and prompt.count("#### ") == 2
    assert prompt.rstrip().endswith("Answer:")


# -- extraction and judging --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Step 1: 3 + 4 = 7\n#### 1,234", "1234"),
        ("The answer is $1,234.56.", "1234.56"),
        ("The answer is 1,234.50 dollars", "1234.5"),
        ("It is -5 degrees at night.", "-5"),
        ("It drops by 12-7=5 degrees.", "5"),
        ("The answer is \u22123.", "-3"),
        ("The answer is 25%.", "25"),
        ("The answer is 3/4 of a pie.", "3/4"),
        ("The answer is 10/4 cups.", "5/2"),
        ("The answer is 12/4 = 3", "3"),
        ("The answer is -1/3.", "-1/3"),
        ("So x = \\frac{5}{2}", "5/2"),
        ("The answer is $\\boxed{18}$.", "18"),
        ("\\boxed{18}\nCheck: 18 - 3 = 15", "18"),
        ("On 3/4/2020 she bought 7 apples.", "7"),
        ("Natalia sold 48/2 = <<48/2=24>>24 clips.", "24"),
        ("It takes 2.50 hours.", "2.5"),
        ("**Answer:** 42", "42"),
        ("The answer is 42.\nAnswer: 7 cats", "7"),
        ("#### 5\nThe answer is 6.", "5"),
        ("She has 0.6666666666666666 pie.", "0.6666666666666666"),
        ("It arrives at 3:30.", "30"),
        ("", None),
        ("I don't know.", None),
    ],
)
def test_extract(text: str, expected: str | None) -> None:
    assert get("gsm8k").extract(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The ratio is 3:4.", "3:4"),
        ("12:16 simplifies, so the answer is 3:4", "3:4"),
        ("The answer is 9 apples.", "9"),
        ("The answer is -(1/3).", "-1/3"),
    ],
)
def test_asdiv_extract_reads_ratios(text: str, expected: str) -> None:
    assert get("asdiv").extract(text) == expected


@pytest.mark.parametrize(
    ("predicted", "gold", "expected"),
    [
        ("39", "39", True),
        ("39.0", "39", True),
        ("0.3333", "0.3333333333333333", True),
        ("1/3", "0.3333333333333333", True),
        ("0.33", "0.3333333333333333", False),
        ("0.6667", "0.6666666666666666", True),
        ("109200001", "109200000", False),
        ("158.36", "158.35", False),
        ("6:8", "3:4", True),
        ("0.75", "3:4", True),
        ("-10", "10", False),
        ("abc", "1", False),
    ],
)
def test_number_matches(predicted: str, gold: str, expected: bool) -> None:
    assert number_matches(predicted, gold) is expected


def test_is_correct_on_an_example() -> None:
    task = get("gsm8k")
    ex = Example(id="x", question="q", answer="1080")
    assert task.is_correct("So 1,000 + 80 = 1,080 in all.", ex)
    assert task.is_correct("The answer is $1,080.00.", ex)
    assert not task.is_correct("The answer is 1,081.", ex)
    assert not task.is_correct("no answer", ex)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (39.0, "39"),
        (0.5, "0.5"),
        (2400000.0, "2400000"),
        (1e-05, "0.00001"),
        (43, "43"),
        ("1,080", "1080"),
        ("-10", "-10"),
        ("$5", "5"),
        ("10/4", "5/2"),
        ("3:4", "3:4"),
        (True, None),
        (float("nan"), None),
        ("abc", None),
        ("", None),
    ],
)
def test_canonical_number(value: Any, expected: str | None) -> None:
    assert canonical_number(value) == expected


def test_parse_number() -> None:
    assert parse_number("1,234.5") == Fraction(2469, 2)
    assert parse_number("3:4") == Fraction(3, 4)
    assert parse_number("5 apples") is None


@pytest.mark.parametrize(
    ("answer", "solution_type", "expected"),
    [
        ("9 (apples)", "Addition", "9"),
        ("14  (seats)", "Subtraction", "14"),
        ("2.5 (feet)", "Common-Division", "2.5"),
        ("-(1/3)", "Algebra-1", "-1/3"),
        ("5/2", "Algebra-2", "5/2"),
        ("3:4", "Ratio", "3:4"),
        ("6th", "Sequential-Operation", "6"),
        ("The 60th caller.", "LCM", "60"),
        ("5:45", "Sum", None),
        ("3:30 p.m.", "Sum", None),
        ("February 3rd", "Subtraction", None),
        ("Mrs. Hilt", "Comparison", None),
        ("Yes", "Comparison", None),
        ("They are equal", "Comparison", None),
    ],
)
def test_asdiv_gold(answer: str, solution_type: str, expected: str | None) -> None:
    assert asdiv_gold(answer, solution_type) == expected


# -- broken and missing files -----------------------------------------------------------------


def _write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


GOOD_GSM8K = json.dumps({"question": "Q?", "answer": "2+2=<<2+2=4>>4\n#### 4"})


def test_missing_file_says_where_it_is_expected(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        get("gsm8k", data_dir=tmp_path).load("test")
    message = str(info.value)
    assert str(tmp_path / "gsm8k" / "test.jsonl") in message
    assert "file not found" in message and "expected gsm8k/test.jsonl" in message


def test_missing_data_dir_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        get("svamp", data_dir=tmp_path / "nowhere").load()


def test_real_lines_with_a_broken_one(root: Path, tmp_path: Path) -> None:
    lines = (root / "gsm8k" / "test.jsonl").read_text(encoding="utf-8").splitlines()[:3]
    broken = json.loads(lines[2])
    del broken["answer"]
    path = _write(tmp_path, "gsm8k/test.jsonl", "\n".join([*lines[:2], json.dumps(broken)]))
    with pytest.raises(DataError) as info:
        get("gsm8k", data_dir=tmp_path).load("test")
    assert f"{path}:3" in str(info.value) and "missing field 'answer'" in str(info.value)
    path.write_text("\n".join(lines[:2]) + "\n", encoding="utf-8")
    assert [ex.answer for ex in get("gsm8k", data_dir=tmp_path).load("test")] == ["18", "3"]


@pytest.mark.parametrize(
    ("name", "relative", "text", "needles"),
    [
        ("gsm8k", "gsm8k/test.jsonl", f"{GOOD_GSM8K}\n{{not json", [":2:", "invalid JSON"]),
        ("gsm8k", "gsm8k/test.jsonl", f'{GOOD_GSM8K}\n{{"question": "Q"}}', [":2:", "'answer'"]),
        (
            "gsm8k",
            "gsm8k/test.jsonl",
            '{"question": "Q", "answer": "It is 4."}',
            [":1:", "'answer'", "####"],
        ),
        (
            "gsm8k",
            "gsm8k/test.jsonl",
            '{"question": "Q", "answer": "2+2\\n#### four"}',
            [":1:", "'answer'", "not a number"],
        ),
        (
            "gsm8k",
            "gsm8k/test.jsonl",
            '{"question": 7, "answer": "#### 4"}',
            [":1:", "'question'", "should be str"],
        ),
        (
            "svamp",
            "svamp/SVAMP.json",
            '[{"ID": "a", "Body": "B.", "Question": "Q?", "Answer": 1.0},'
            ' {"ID": "b", "Body": "B.", "Question": "Q?"}]',
            ["record 2", "'Answer'"],
        ),
        (
            "multiarith",
            "multiarith/MultiArith.json",
            '[{"iIndex": 0, "sQuestion": "Q?", "lEquations": [], "lSolutions": []}]',
            ["record 1", "'lSolutions'", "one solution"],
        ),
        (
            "singleeq",
            "singleeq/questions.json",
            '[{"iIndex": 0, "sQuestion": "Q?", "lEquations": [], "lSolutions": ["x"]}]',
            ["record 1", "'lSolutions'", "not a number"],
        ),
        (
            "addsub",
            "addsub/AddSub.json",
            '[{"iIndex": 1, "sQuestion": "Q?", "lSolutions": ["43"]}]',
            ["record 1", "'lEquations'"],
        ),
        (
            "asdiv",
            "asdiv/test.jsonl",
            '{"body": "B.", "question": "Q?", "solution_type": "Sum", "answer": "9 (x)"}',
            [":1:", "'idx'"],
        ),
        ("svamp", "svamp/SVAMP.json", "[{]", [":1:", "invalid JSON"]),
    ],
)
def test_malformed_files_name_file_line_and_field(
    tmp_path: Path, name: str, relative: str, text: str, needles: list[str]
) -> None:
    path = _write(tmp_path, relative, text)
    with pytest.raises(DataError) as info:
        get(name, data_dir=tmp_path).load("test")
    message = str(info.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message


# -- hub formats -----------------------------------------------------------------------------

HUB_ROWS: dict[str, tuple[dict[str, Any], str, str]] = {
    "gsm8k": (
        {"question": " Q? ", "answer": "Half of 48 is 48/2=<<48/2=24>>24.\n#### 24"},
        "Q?",
        "24",
    ),
    "multiarith": ({"question": " Debby had 32 pieces. ", "final_ans": "39"}, "Debby", "39"),
    "svamp": (
        {
            "ID": "chal-1",
            "Body": "Each pack of dvds costs 76 dollars.",
            "Question": "How much do you have to pay?",
            "Equation": "( 76.0 - 25.0 )",
            "Answer": 51.0,
            "Type": "Subtraction",
            "question_concat": "Each pack of dvds costs 76 dollars. How much do you have to pay?",
        },
        "Each pack of dvds costs 76 dollars. How much do you have to pay?",
        "51",
    ),
    "asdiv": (
        {
            "body": "Seven red apples and two green apples are in the basket.",
            "question": "How many apples are in the basket?",
            "solution_type": "Addition",
            "answer": "9 (apples)",
            "formula": "7+2=9",
        },
        "Seven red apples and two green apples are in the basket. How many",
        "9",
    ),
    "addsub": (
        {
            "input": "Joan found 70 seashells. She has 27 left. How many did she give?",
            "output_program": "answer = 70 - 27\nprint(answer)",
            "output_answer": "43",
            "split": "test",
            "dataset": "addsub.json",
        },
        "Joan found 70",
        "43",
    ),
    "singleeq": (
        {
            "input": "Kendall drove 0.16666666666666666 mile and 0.5 mile. How far?",
            "output_program": "print(0.16666666666666666 + 0.5)",
            "output_answer": "0.6666666666666666",
            "split": "test",
            "dataset": "singleeq.json",
        },
        "Kendall drove",
        "0.6666666666666666",
    ),
}


@pytest.mark.parametrize("name", TASKS)
def test_parse_hub_rows(name: str) -> None:
    row, question_start, answer = HUB_ROWS[name]
    task = get(name, source="hub")
    assert task.splits() == list(task.hub_splits)
    ex = task.parse_hub(row, task.test_split, 0)
    assert ex.question.startswith(question_start)
    assert ex.answer == answer
    assert task.is_correct(task.target(ex), ex)


def test_parse_hub_gsm8k_keeps_rationale_and_names_bad_rows() -> None:
    task = get("gsm8k", source="hub")
    ex = task.parse_hub(HUB_ROWS["gsm8k"][0], "train", 5)
    assert ex.id == "gsm8k/train/5" and ex.rationale is not None
    assert task.is_correct(ex.rationale, ex)
    with pytest.raises(DataError) as info:
        task.parse_hub({"question": "Q?", "answer": "no final line"}, "train", 5)
    assert "openai/gsm8k" in str(info.value) and "row 5" in str(info.value)
    assert "'answer'" in str(info.value)
    with pytest.raises(DataError, match="missing field 'final_ans'"):
        get("multiarith", source="hub").parse_hub({"question": "Q?"}, "test", 0)


def test_hub_load_goes_through_parse_hub_and_skips_non_numeric_asdiv(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, str | None, str]] = []
    asdiv_row = HUB_ROWS["asdiv"][0]
    rows = {
        "openai/gsm8k": [HUB_ROWS["gsm8k"][0]],
        "EleutherAI/asdiv": [asdiv_row, {**asdiv_row, "answer": "Mrs. Hilt"}],
    }

    def fake_load_hub(name: str, config: str | None, split: str) -> list[dict[str, Any]]:
        calls.append((name, config, split))
        return rows[name]

    monkeypatch.setattr(benchmark, "load_hub", fake_load_hub)
    assert [ex.answer for ex in get("gsm8k", source="hub").load("test")] == ["24"]
    asdiv = get("asdiv", source="hub")
    assert [ex.answer for ex in asdiv.load()] == ["9"]
    assert asdiv.skipped["test"] == ["test/1"]  # type: ignore[attr-defined]
    assert calls == [("openai/gsm8k", "main", "test"), ("EleutherAI/asdiv", "asdiv", "validation")]
    with pytest.raises(DataError, match="not a number"):
        asdiv.parse_hub({**asdiv_row, "answer": "Yes"}, "test", 1)
