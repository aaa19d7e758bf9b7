"""Competition math (MATH, MATH-500): loading the real files, judging every gold answer with
math-verify, answer extraction, equivalences, error messages for broken files, the hub formats."""

from __future__ import annotations

import json
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from selftrain.tasks import competition_math, get, names
from selftrain.tasks.base import Example
from selftrain.tasks.competition_math import MATH_SUBJECTS, MathTask
from selftrain.tasks.data import DataError, data_dir
from selftrain.verify.math import (
    answers_match,
    brace_fractions,
    extract_answer,
    last_boxed,
    normalise_answer,
)

# Sizes from SOURCES.md; two train solutions box nothing (``\boxed{}``) and are skipped.
MATH_TRAIN_RECORDS = 7500
EMPTY_BOX_LINES = (5530, 5532)  # train/number_theory/7115.json and 7117.json
SIZES = {
    "math": {"train": 7498, "test": 5000},
    "math:math500": {"train": 7498, "test": 500},
}
TEST_BY_SUBJECT = {
    "algebra": 1187,
    "counting_and_probability": 474,
    "geometry": 479,
    "intermediate_algebra": 903,
    "number_theory": 540,
    "prealgebra": 871,
    "precalculus": 546,
}
# "0.56 = 56\%" is an equation between two numbers; math-verify compares such equations
# loosely, so "1.56 = 56\%" (whose right side equals the gold's) also passes.
PERTURBATION_EXCEPTIONS = {"train/counting_and_probability/557.json"}


@pytest.fixture(scope="module")
def root() -> Path:
    try:
        path = data_dir()
    except DataError as exc:
        pytest.skip(f"benchmark data directory not found (expected ../shared/data): {exc}")
    if not (path / "math").is_dir():
        pytest.skip(f"no math/ folder in the data directory {path}")
    return path


@pytest.fixture(scope="module")
def full(root: Path) -> MathTask:
    task = get("math", data_dir=root)
    assert isinstance(task, MathTask)
    return task


@pytest.fixture(scope="module")
def m500(root: Path) -> MathTask:
    task = get("math:math500", data_dir=root)
    assert isinstance(task, MathTask)
    return task


def perturb(answer: str) -> str:
    """A surely different answer: the first digit plus one; without digits, infinity
    replaced by 1 or ``+1`` appended (``\\text{Monday}+1``)."""
    if re.search(r"\d", answer):
        return re.sub(r"\d", lambda m: str((int(m.group()) + 1) % 10), answer, count=1)
    if "\\infty" in answer:
        return answer.replace("\\infty", "1")
    return answer + "+1"


def variants(answer: str) -> list[str]:
    """Ways a model might write the answer besides ``task.target``."""
    return [
        f"\\boxed{{{answer}}}",
        f"So we get $x = 3$ and finally $\\boxed{{{answer}}}$.",
        f"Final Answer: The final answer is ${answer}$. I hope it is correct.",
        f"**Answer:** ${answer}$",
    ]


# -- registry and subsets ----------------------------------------------------------------------


def test_registered_names_and_subsets() -> None:
    assert {"math", "math500"} <= set(names())
    assert get("math").name == "math"
    for task in (get("math:math500"), get("math500"), get("math:MATH500")):
        assert isinstance(task, MathTask)
        assert task.subset == "math500" and task.subject is None
        assert task.name == "math:math500"
        assert task.path("test") == "math/math500_test.jsonl"
        assert task.path("train") == "math/train.jsonl"
    for spelling in ("number_theory", "Number Theory", "NUMBER-THEORY"):
        task = get(f"math:{spelling}")
        assert isinstance(task, MathTask)
        assert task.subject == "number_theory"
    assert get("math:Counting & Probability").subject == "counting_and_probability"
    assert set(MATH_SUBJECTS) == set(TEST_BY_SUBJECT)
    task = get("math")
    assert task.kind == "math" and task.splits() == ["train", "test"]
    assert task.subset is None


def test_unknown_subset_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"valid subsets: math500, algebra, .*precalculus"):
        get("math:level5")
    with pytest.raises(ValueError, match="no subsets"):
        get("math500:algebra")


# -- the real files ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SIZES))
def test_split_sizes(root: Path, name: str) -> None:
    task = get(name, data_dir=root)
    assert isinstance(task, MathTask)
    assert task.sizes() == SIZES[name]
    for split in task.splits():
        ids = [ex.id for ex in task.load(split)]
        assert len(set(ids)) == len(ids)


def test_empty_boxes_are_skipped_and_listed(full: MathTask) -> None:
    assert len(full.load("train")) == MATH_TRAIN_RECORDS - len(EMPTY_BOX_LINES)
    lines = [int(where.rsplit(":", 1)[1]) for where in full.skipped["train"]]
    assert tuple(lines) == EMPTY_BOX_LINES
    assert "test" not in full.skipped


def test_subject_subsets_partition_the_test_set(root: Path) -> None:
    total = 0
    for key, size in TEST_BY_SUBJECT.items():
        task = get(f"math:{key}", data_dir=root)
        examples = task.load("test")
        assert len(examples) == size
        assert {ex.meta["subject"] for ex in examples} == {MATH_SUBJECTS[key]}
        total += size
    assert total == 5000
    train = get("math:number_theory", data_dir=root).load("train")
    assert len(train) == 869 - 2  # the two empty boxes are number theory problems


def test_first_records(full: MathTask, m500: MathTask) -> None:
    first = full.load("test", 1)[0]
    assert first.id == "test/0"
    assert first.answer == "2"
    assert first.question.startswith("How many vertical asymptotes")
    assert first.meta == {"subject": "Algebra", "level": 3, "idx": 0}
    train = full.load("train", 1)[0]
    assert train.id == "train/algebra/0.json" and train.answer == "0"
    assert train.meta["level"] == 5 and train.meta["unique_id"] == "train/algebra/0.json"
    ex = m500.load("test", 1)[0]
    assert ex.id == "test/precalculus/807.json"
    assert ex.answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert ex.meta == {"subject": "Precalculus", "level": 2, "unique_id": ex.id}
    assert ex.rationale and ex.rationale.startswith("We have that $r = ")
    levels = {ex.meta["level"] for ex in full.load("train")}
    assert levels <= {1, 2, 3, 4, 5, None}


def test_math500_solutions_are_judged_correct(m500: MathTask) -> None:
    """Acceptance: every MATH-500 solution, judged against its own answer, is correct."""
    examples = m500.load("test")
    wrong = [ex.id for ex in examples if not m500.is_correct(ex.rationale or "", ex)]
    assert wrong == []
    # The answer field is exactly the last box of the solution, as for full MATH.
    assert all(last_boxed(ex.rationale or "") == ex.answer for ex in examples)


def test_math500_targets_variants_and_perturbations(m500: MathTask) -> None:
    for ex in m500.load("test"):
        assert m500.is_correct(m500.target(ex), ex), ex.id
        assert m500.is_correct(m500.solution(ex), ex), ex.id
        for text in variants(ex.answer):
            assert m500.is_correct(text, ex), (ex.id, text)
        wrong = perturb(ex.answer)
        assert not m500.is_correct(f"The answer is $\\boxed{{{wrong}}}$.", ex), (ex.id, wrong)


def test_math_verify_alone_accepts_every_math500_target(m500: MathTask) -> None:
    """math-verify itself (not the string shortcut) agrees each target equals its gold."""
    from math_verify import parse, verify

    for ex in m500.load("test"):
        gold = parse(f"$\\boxed{{{ex.answer}}}$")
        assert verify(gold, parse(m500.target(ex))), ex.id


@pytest.mark.e2e  # a pass over both whole MATH files (~40 s): with the slow tests
@pytest.mark.parametrize("split", ["test", "train"])
def test_every_full_math_target_is_correct_and_perturbation_wrong(
    full: MathTask, split: str
) -> None:
    """For each of the 12,498 problems: the target and two variants are judged correct and
    a perturbed answer wrong (a few ms per problem: the wrong answers go through
    math-verify)."""
    accepted_wrong = []
    for ex in full.load(split):
        assert full.is_correct(full.target(ex), ex), ex.id
        assert full.is_correct(variants(ex.answer)[2], ex), ex.id
        assert full.extract(f"Thus\n\\[\\boxed{{{ex.answer}}}\\]") == ex.answer
        wrong = perturb(ex.answer)
        if full.is_correct(f"The answer is $\\boxed{{{wrong}}}$.", ex):
            accepted_wrong.append(ex.id)
    expected = sorted(PERTURBATION_EXCEPTIONS) if split == "train" else []
    assert sorted(accepted_wrong) == expected


def test_prompts(full: MathTask, root: Path) -> None:
    ex = full.load("test", 1)[0]
    assert "\\boxed{}" in full.prompt(ex) and ex.question in full.prompt(ex)
    fewshot = get("math:math500", data_dir=root, style="fewshot", n_shots=2)
    text = fewshot.prompt(fewshot.load("test", 1)[0])
    assert text.count("Question:") == 3 and text.count("The answer is $\\boxed{") == 2


# -- extraction --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so $x = \\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("\\boxed{\\frac{\\sqrt{3}}{2}} or \\boxed{(3, \\frac{\\pi}{2})}", "(3, \\frac{\\pi}{2})"),
        ("$\\boxed{\\{1, 2\\}}$", "\\{1, 2\\}"),
        ("\\boxed{ 5 }", "5"),
        ("\\boxed {7}", "7"),
        ("\\fbox{8}", "8"),
        ("our answer is $\\boxed 2$.", "2"),
        ("\\boxed{3} then \\boxed{4", "3"),  # truncated last box: the earlier complete one
        ("\\boxed{3} and \\boxed{}", "3"),
        ("\\boxed{x=\\boxed{5}}", "x=\\boxed{5}"),  # the outer box ends last
        ("\\boxed{\\text{(C)}}", "\\text{(C)}"),
        ("no box here", None),
        ("\\boxed{}", None),
    ],
)
def test_last_boxed(text: str, expected: str | None) -> None:
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("We get 3.\nThe answer is $\\boxed{7}$.", "7"),
        ("Final Answer: The final answer is $5$. I hope it is correct.", "5"),
        ("The answer is 3.5.", "3.5"),
        ("The answer is $\\$18.90$.", "\\$18.90"),
        ("**Answer:** $\\frac{1}{2}$", "\\frac{1}{2}"),
        ("so the answer is: x = 5", "x = 5"),
        ("Answer:\n  7\n", "7"),
        ("The answer is \\(\\frac{3}{4}\\).", "\\frac{3}{4}"),
        ("The answer is $$x=2$$", "x=2"),
        ("$\\frac{1}{2}$", "\\frac{1}{2}"),  # a direct answer
        ("\\text{Monday}", "\\text{Monday}"),
        ("3 square feet", "3 square feet"),
        ("I do not know what to do", None),  # a sentence is not an answer
        ("First, $x = 2$.\nThen $y = 3$ and we are done with this one.", None),
        ("the answer is", None),
        ("", None),
    ],
)
def test_extract_answer(completion: str, expected: str | None) -> None:
    assert extract_answer(completion) == expected


# -- equivalence -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gold", "predicted"),
    [
        ("\\frac{1}{2}", "0.5"),
        ("\\frac{1}{2}", "1/2"),
        ("\\frac12", "\\dfrac{1}{2}"),
        ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2"),
        ("\\frac{\\sqrt2}{2}", "\\frac{1}{\\sqrt{2}}"),
        ("\\frac \\pi4 + 2 - \\sqrt2", "\\pi/4 + 2 - \\sqrt{2}"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\pi/2)"),
        ("(-\\infty, 3]", "(-\\infty,3]"),
        ("(-\\infty,-8)\\cup (8,\\infty)", "(-\\infty, -8) \\cup (8, \\infty)"),
        ("2, 3", "3, 2"),
        ("\\text{(C)}", "C"),
        ("\\text{(C)}", "(C)"),
        ("\\text{Monday}", "Monday"),
        ("\\text{even}", "even"),
        ("5", "x = 5"),
        ("y = 2x + 3", "y=2x+3"),
        ("x^2+2x+1", "(x+1)^2"),
        ("3\\sqrt{2}", "\\sqrt{18}"),
        ("90^\\circ", "90"),
        ("10\\%", "10"),
        ("\\$18.90", "18.90"),
        ("10,\\!080", "10080"),
        ("\\frac{12}{5,\\!525}", "\\frac{12}{5525}"),
        ("5\\text{ cm}", "5"),
        ("52_8", "52_{8}"),
        ("\\frac{1}{2^{98}}", "2^{-98}"),
        ("\\frac13", "0.333333"),
        ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
        (
            "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}.",
            "\\begin{pmatrix}-1&0\\\\0&-1\\end{pmatrix}",
        ),
        (
            "\\begin{pmatrix} 1 & \\phantom -1 \\end{pmatrix}",
            "\\begin{pmatrix} 1 & 1 \\end{pmatrix}",
        ),
        ("90\\text{ square\nunits}", "90"),
    ],
)
def test_equivalent_answers(gold: str, predicted: str) -> None:
    assert answers_match(gold, predicted)


@pytest.mark.parametrize(
    ("gold", "predicted"),
    [
        ("\\frac{1}{2}", "0.6"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\pi)"),
        ("(-\\infty, 3]", "(-\\infty,3)"),
        ("2,3", "2"),
        ("\\text{(C)}", "\\text{(D)}"),
        ("\\text{Monday}", "\\text{Tuesday}"),
        ("\\text{even}", "\\text{odd}"),
        ("\\infty", "1"),
        ("\\frac \\pi4 + 2 - \\sqrt2", "\\frac \\pi5 + 2 - \\sqrt2"),  # unbraced \frac
        ("52_8", "52_9"),  # a different base
        ("1011_2", "11"),
        (".0000672", ".0000673"),  # below math-verify's 6-decimal rounding
        ("\\frac{1}{2004!}", "\\frac{2}{2004!}"),
        ("\\frac{1}{2^{98}}", "\\frac{2}{2^{98}}"),
        ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 3 \\end{pmatrix}"),
        ("\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}.", "-1"),
        ("a", "b"),
        ("5", "not a number at all"),
    ],
)
def test_different_answers(gold: str, predicted: str) -> None:
    assert not answers_match(gold, predicted)


def test_normalise_and_brace_helpers() -> None:
    assert normalise_answer("\\left( 3, \\dfrac{\\pi}{2} \\right).") == "(3,\\frac{\\pi}{2})"
    assert normalise_answer("\\text{(C)}") == "(C)"
    assert normalise_answer("\\$1,\\!000") == "1,000"
    assert normalise_answer("90^\\circ") == "90"
    assert brace_fractions("\\frac \\pi4") == "\\frac{\\pi}{4}"
    assert (
        brace_fractions("-\\tfrac{8\\pi}5 + \\dfrac 1{11}") == "-\\frac{8\\pi}{5} + \\frac{1}{11}"
    )
    assert brace_fractions("\\frac{\\frac \\pi 2}{3}") == "\\frac{\\frac{\\pi}{2}}{3}"
    assert brace_fractions("\\frac{1}") == "\\frac{1}"


def test_is_correct_needs_an_answer() -> None:
    task = MathTask()
    ex = Example(id="x", question="?", answer="\\frac{1}{2}")
    assert task.is_correct("The answer is $\\boxed{0.5}$.", ex)
    assert not task.is_correct("I give up, this is too hard for me today.", ex)
    assert not task.is_correct("The answer is $\\boxed{0.6}$.", ex)


def test_timeouts_bound_pathological_answers() -> None:
    """In the main thread math-verify's SIGALRM timeouts stop sympy; the judge says no."""
    start = time.monotonic()
    assert not answers_match("1", "10^{10^{10^{10}}}")
    assert time.monotonic() - start < 20


def test_judging_in_worker_threads(caplog: pytest.LogCaptureFixture) -> None:
    """SIGALRM cannot be armed outside the main thread: the judge turns math-verify's
    timeouts off there (math-verify would raise) and skips answers that could blow up."""
    pairs = [
        ("\\frac{1}{2}", "0.5", True),
        ("\\frac{1}{2}", "0.6", False),
        ("(3,\\frac{\\pi}{2})", "(3, \\pi/2)", True),
        ("1", "10^{10^{10^{10}}}", False),
        ("1", "100000!", False),
    ]
    caplog.set_level(logging.ERROR, logger="math_verify")  # its "timeout disabled" notices
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda p: answers_match(p[0], p[1]), pairs))
    assert results == [expected for _, _, expected in pairs]
    assert time.monotonic() - start < 20


# -- broken files ------------------------------------------------------------------------------


def _write(root: Path, relative: str, records: list[Any]) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


MATH_RECORD = {
    "problem": "What is $1+1$?",
    "level": "Level 1",
    "type": "Prealgebra",
    "solution": "We have $1+1=\\boxed{2}$.",
    "idx": 0,
}
MATH500_RECORD = {
    "problem": "What is $1+1$?",
    "solution": "We have $1+1=\\boxed{2}$.",
    "answer": "2",
    "subject": "Prealgebra",
    "level": 1,
    "unique_id": "test/prealgebra/1.json",
}


def test_missing_file_says_where_it_is_expected(tmp_path: Path) -> None:
    task = MathTask(data_dir=tmp_path)
    with pytest.raises(DataError) as info:
        task.load("test")
    message = str(info.value)
    assert str(tmp_path / "math" / "test.jsonl") in message
    assert "expected math/test.jsonl under the data directory" in message
    _write(tmp_path, "math/test.jsonl", [MATH_RECORD])
    with pytest.raises(DataError, match=r"math500_test\.jsonl: file not found"):
        MathTask(data_dir=tmp_path, subset="math500").load("test")


@pytest.mark.parametrize(
    ("bad", "pattern"),
    [
        ("{not json", r"test\.jsonl:2: invalid JSON"),
        ({**MATH_RECORD, "solution": None}, r"test\.jsonl:2: field 'solution' should be str"),
        ({k: v for k, v in MATH_RECORD.items() if k != "problem"}, r":2: missing field 'problem'"),
        ({**MATH_RECORD, "solution": "It is 2."}, r":2: field 'solution' has no \\boxed"),
        ({**MATH_RECORD, "level": [1]}, r":2: field 'level' should be str/int"),
        ({k: v for k, v in MATH_RECORD.items() if k != "type"}, r":2: missing field 'type'"),
        ({**MATH_RECORD, "idx": "zero"}, r":2: field 'idx' should be int"),
    ],
)
def test_malformed_math_line_names_file_line_and_field(
    tmp_path: Path, bad: Any, pattern: str
) -> None:
    path = _write(tmp_path, "math/test.jsonl", [MATH_RECORD, bad])
    with pytest.raises(DataError, match=pattern) as info:
        MathTask(data_dir=tmp_path).load("test")
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("bad", "pattern"),
    [
        ({k: v for k, v in MATH500_RECORD.items() if k != "answer"}, r":2: missing field 'answer'"),
        ({**MATH500_RECORD, "answer": "  "}, r":2: field 'answer' is empty"),
        ({k: v for k, v in MATH500_RECORD.items() if k != "subject"}, r":2: missing field 'subj"),
    ],
)
def test_malformed_math500_line(tmp_path: Path, bad: Any, pattern: str) -> None:
    path = _write(tmp_path, "math/math500_test.jsonl", [MATH500_RECORD, bad])
    with pytest.raises(DataError, match=pattern) as info:
        MathTask(data_dir=tmp_path, subset="math500").load("test")
    assert str(path) in str(info.value)


def test_empty_box_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    empty = {**MATH_RECORD, "solution": "So there are $\\boxed{}$ primes.", "idx": 1}
    path = _write(tmp_path, "math/test.jsonl", [MATH_RECORD, empty])
    task = MathTask(data_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger=competition_math.__name__):
        examples = task.load("test")
    assert [ex.id for ex in examples] == ["test/0"]
    assert task.skipped == {"test": [f"{path}:2"]}
    assert f"{path}:2: field 'solution' boxes nothing" in caplog.text


# -- hub formats -------------------------------------------------------------------------------

HUB_MATH500_ROW = {
    "problem": "Convert the point $(0,3)$ in rectangular coordinates to polar coordinates.",
    "solution": "We have that $r = 3.$ ... $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$",
    "answer": "\\left( 3, \\frac{\\pi}{2} \\right)",
    "subject": "Precalculus",
    "level": 2,
    "unique_id": "test/precalculus/807.json",
}


def _hendrycks_row(subject: str, answer: str) -> dict[str, Any]:
    return {
        "problem": f"A {subject} problem?",
        "level": "Level 4",
        "type": MATH_SUBJECTS[subject],
        "solution": f"Work. So the answer is $\\boxed{{{answer}}}$.",
    }


def test_parse_hub_rows() -> None:
    task = MathTask(subset="math500")
    ex = task.parse_hub(HUB_MATH500_ROW, "test", 0)
    assert ex is not None
    assert ex.id == "test/precalculus/807.json"
    assert ex.answer == HUB_MATH500_ROW["answer"]
    assert ex.meta == {"subject": "Precalculus", "level": 2, "unique_id": ex.id}
    assert task.is_correct(ex.rationale or "", ex)

    full = MathTask()
    row = _hendrycks_row("number_theory", "\\frac{\\sqrt{3}}{2}")
    ex = full.parse_hub(row, "train", 7)
    assert ex is not None
    assert ex.id == "train/number_theory/7"
    assert ex.answer == "\\frac{\\sqrt{3}}{2}"
    assert ex.meta == {"subject": "Number Theory", "level": 4}
    with pytest.raises(DataError, match=r"hub EleutherAI/hendrycks_math/algebra train row 3: "):
        full.parse_hub({**_hendrycks_row("algebra", "1"), "solution": "no box"}, "train", 3)
    with pytest.raises(DataError, match=r"MATH-500 test row 0: missing field 'answer'"):
        task.parse_hub({k: v for k, v in HUB_MATH500_ROW.items() if k != "answer"}, "test", 0)


def test_hub_loading_joins_subject_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str | None, str]] = []

    def fake_load_hub(name: str, config: str | None, split: str) -> list[dict[str, Any]]:
        calls.append((name, config, split))
        if name == "HuggingFaceH4/MATH-500":
            return [HUB_MATH500_ROW]
        assert name == "EleutherAI/hendrycks_math" and config in MATH_SUBJECTS
        return [_hendrycks_row(config, "1"), _hendrycks_row(config, "2")]

    monkeypatch.setattr(competition_math, "load_hub", fake_load_hub)
    full = MathTask(source="hub")
    test = full.load("test")
    assert len(test) == 2 * len(MATH_SUBJECTS)
    assert [c[1] for c in calls] == list(MATH_SUBJECTS)
    assert len({ex.id for ex in test}) == len(test)

    calls.clear()
    one = MathTask(source="hub", subset="geometry")
    assert [ex.meta["subject"] for ex in one.load("train")] == ["Geometry", "Geometry"]
    assert calls == [("EleutherAI/hendrycks_math", "geometry", "train")]

    calls.clear()
    m500 = MathTask(source="hub", subset="math500")
    assert [ex.answer for ex in m500.load("test")] == [HUB_MATH500_ROW["answer"]]
    assert calls == [("HuggingFaceH4/MATH-500", None, "test")]
    assert len(m500.load("train")) == 2 * len(MATH_SUBJECTS)
