"""Paired comparisons: the exact McNemar test and the interval on the difference."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from selftrain.cli import app
from selftrain.eval.suite import compare_folders
from selftrain.stats import compare, describe, mcnemar_exact, paired_interval


def test_mcnemar_exact_is_a_two_sided_binomial_test():
    # 2 of 12 discordant questions at 1/2: P(X <= 2) = (1 + 12 + 66) / 4096, doubled
    assert mcnemar_exact(10, 2) == pytest.approx(2 * 79 / 4096)
    assert mcnemar_exact(2, 10) == mcnemar_exact(10, 2)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(40, 0) < 1e-11


def test_paired_interval_brackets_the_difference_and_narrows_with_n():
    lo, hi = paired_interval(30, 10, 500)
    assert lo < 20 / 500 < hi and lo > 0
    lo2, hi2 = paired_interval(300, 100, 5000)
    assert hi2 - lo2 < hi - lo
    assert paired_interval(0, 0, 0) == (0.0, 0.0)


def test_compare_counts_only_questions_both_answered():
    a = {"q1": True, "q2": True, "q3": False, "q4": True}
    b = {"q1": False, "q2": True, "q3": True, "q5": True}
    c = compare(a, b)
    assert c["n"] == 3 and c["a_only"] == 1 and c["b_only"] == 1
    assert c["diff"] == 0 and c["p_value"] == 1.0
    assert c["a"] == pytest.approx(2 / 3, abs=1e-4)
    assert "p=1" in describe(c)


def _answers(folder, name, correct):
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"q{i}", "correct": bool(x)} for i, x in enumerate(correct)]
    (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_compare_command_pairs_two_folders(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _answers(a, "in_domain.jsonl", [1] * 60 + [0] * 40)
    _answers(b, "in_domain.jsonl", [1] * 40 + [0] * 60)
    _answers(a, "only_a.jsonl", [1])
    result = compare_folders(a, b)
    assert list(result) == ["in_domain"]
    assert result["in_domain"]["diff"] == pytest.approx(0.2)
    assert result["in_domain"]["p_value"] < 1e-5
    out = tmp_path / "cmp.json"
    ran = CliRunner().invoke(app, ["compare", str(a), str(b), "--out", str(out)])
    assert ran.exit_code == 0, ran.output
    assert "in_domain" in ran.output
    assert json.loads(out.read_text())["tasks"]["in_domain"]["a_only"] == 20


def test_compare_command_says_what_is_wrong(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _answers(a, "x.jsonl", [1])
    _answers(b, "y.jsonl", [1])
    ran = CliRunner().invoke(app, ["compare", str(a), str(b)])
    assert ran.exit_code == 2 and "no answers to the same task" in ran.output
    (b / "x.jsonl").write_text('{"id": "q0"}\n')
    ran = CliRunner().invoke(app, ["compare", str(a), str(b)])
    assert ran.exit_code == 2 and "record 1: no 'id' or 'correct'" in ran.output
    ran = CliRunner().invoke(app, ["compare", str(a), str(tmp_path / "nope")])
    assert ran.exit_code == 2 and "no such folder" in ran.output
