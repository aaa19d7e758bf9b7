"""Tests for numeric answer extraction and judging."""

from __future__ import annotations

import pytest

from selftrain.verify.numbers import extract_number, is_correct_number, number_matches


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mia has 12+7=<<12+7=19>>19 apples.\n#### 19", "19"),
        ("#### 42", "42"),
        ("### 7", "7"),
        ("##### 7", "7"),
        ("#### 19.", "19"),
        ("#### 19 apples", "19"),
        ("#### $1,234", "1234"),
        ("#### 5\nThen 9 more things, 11 in total", "5"),
        ("#### 3\nThe answer is 14", "3"),
        ("#### 2\nmore\n#### 8\nand 10", "8"),
        ("#### 2 #### 8", "8"),
        ("The answer is 42. Later we saw 7 birds.", "42"),
        ("So the final answer is: $3.50 today, not 4", "3.5"),
        ("answer: 17 marbles", "17"),
        ("The answer is 5. No wait, the answer is 6.", "6"),
        ("She has 12 apples and buys 3.", "3"),
        ("It costs $1,234.00 in total.", "1234"),
        ("It costs €5.", "5"),
        ("It costs £7 each", "7"),
        ("The temperature is -3 degrees.", "-3"),
        ("So 12-7=5", "5"),
        ("She pays 2.50 dollars", "2.5"),
        ("Only .5 liters remain", "0.5"),
        ("He has 19 apples <<19*2=38>>", "19"),
        ("He has 19 apples, so <<19*2=3", "19"),
        ("Total: 12,345,678 grains", "12345678"),
        ("- 3 apples", "3"),
    ],
)
def test_extract_number(text: str, expected: str) -> None:
    assert extract_number(text) == expected


@pytest.mark.parametrize("text", ["", "no numbers here", "<<3+4=7>>", "####"])
def test_extract_number_none(text: str) -> None:
    assert extract_number(text) is None


def test_hashes_beat_other_markers_and_annotations() -> None:
    text = "The answer is 3.\n12+7=<<12+7=19>>19\n#### 19\nSo 99 in total."
    assert extract_number(text) == "19"


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("19", "19", True),
        ("19", "19.0", True),
        ("1,234", "1234", True),
        ("$5", "5", True),
        ("2.5", "2.50", True),
        ("-3", "-3", True),
        ("0.33333", "0.3333", True),
        ("19", "20", False),
        ("10000", "10001", False),
        ("-3", "3", False),
        ("abc", "1", False),
        ("1", "", False),
        ("nan", "nan", False),
    ],
)
def test_number_matches_absolute(a: str, b: str, expected: bool) -> None:
    assert number_matches(a, b, rel_tol=0.0) is expected


def test_number_matches_absolute_tolerance() -> None:
    assert number_matches("1.05", "1", abs_tol=0.1, rel_tol=0.0)
    assert not number_matches("1.05", "1", abs_tol=0.01, rel_tol=0.0)


def test_is_correct_number() -> None:
    assert is_correct_number("After buying, Mia has 12+7=<<12+7=19>>19 apples.\n#### 19", "19")
    assert not is_correct_number("#### 20", "19")
    assert not is_correct_number("I don't know.", "19")
    assert is_correct_number("The answer is $1,234.", "1234")


def test_answer_line_with_an_equation_takes_the_result():
    assert extract_number("The answer is 4 + 1 = 5.") == "5"
    assert extract_number("#### 2*3=6") == "6"
    assert extract_number("The answer is 12 apples.") == "12"
