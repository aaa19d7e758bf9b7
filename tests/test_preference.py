"""Tests for turning verified samples into DPO preference pairs."""

from __future__ import annotations

import pytest

from selftrain.stages.pairs import correct_vs_wrong, cot_vs_direct


def _p(text: str, correct: bool) -> dict:
    return {"text": text, "correct": correct}


def _cvw(samples, demos=None, *, max_pairs=2, teacher_fallback=True, seed=0):
    return correct_vs_wrong(
        samples, demos or {}, max_pairs=max_pairs, teacher_fallback=teacher_fallback, seed=seed
    )


# --- correct_vs_wrong --------------------------------------------------------------------


def test_pairs_correct_with_wrong():
    samples = {"q1": [_p("good", True), _p("bad", False)]}
    assert _cvw(samples, {"q1": "demo"}) == [
        {"id": "q1", "chosen": "good", "rejected": "bad", "chosen_from": "self"}
    ]


def test_chosen_is_correct_and_rejected_is_wrong():
    samples = {
        "q1": [_p("g1", True), _p("b1", False), _p("g2", True), _p("b2", False)],
        "q2": [_p("b3", False), _p("g3", True), _p("b4", False), _p("b5", False)],
    }
    correct = {"g1", "g2", "g3"}
    pairs = _cvw(samples, max_pairs=3)
    assert pairs
    for pair in pairs:
        assert pair["chosen"] in correct
        assert pair["rejected"] not in correct
        assert pair["chosen_from"] == "self"
    assert {p["id"] for p in pairs} == {"q1", "q2"}


def test_skips_question_without_wrong_path():
    samples = {
        "all_good": [_p("a", True), _p("b", True)],
        "mixed": [_p("c", True), _p("d", False)],
    }
    pairs = _cvw(samples, {"all_good": "demo", "mixed": "demo2"})
    assert [p["id"] for p in pairs] == ["mixed"]


def test_teacher_fallback_when_no_path_correct():
    samples = {"q1": [_p("bad1", False), _p("bad2", False)]}
    pairs = _cvw(samples, {"q1": "teacher demo"}, max_pairs=5)
    assert len(pairs) == 2
    assert all(p["chosen"] == "teacher demo" for p in pairs)
    assert all(p["chosen_from"] == "teacher" for p in pairs)
    assert sorted(p["rejected"] for p in pairs) == ["bad1", "bad2"]


def test_no_teacher_fallback_skips_question():
    samples = {"q1": [_p("bad1", False), _p("bad2", False)], "q2": [_p("g", True), _p("b", False)]}
    pairs = _cvw(samples, {"q1": "teacher demo", "q2": "demo"}, teacher_fallback=False)
    assert [p["id"] for p in pairs] == ["q2"]
    assert all(p["chosen_from"] == "self" for p in pairs)


def test_teacher_fallback_needs_a_demo():
    samples = {"q1": [_p("bad1", False)]}
    assert _cvw(samples, {}, teacher_fallback=True) == []


def test_teacher_demo_not_used_when_a_path_is_correct():
    samples = {"q1": [_p("good", True), _p("bad", False)]}
    pairs = _cvw(samples, {"q1": "teacher demo"})
    assert [p["chosen"] for p in pairs] == ["good"]
    assert pairs[0]["chosen_from"] == "self"


def test_exact_duplicates_are_deduplicated():
    samples = {
        "q1": [_p("good", True), _p("good", True), _p("bad", False), _p("bad", False)],
    }
    pairs = _cvw(samples, max_pairs=5)
    assert pairs == [{"id": "q1", "chosen": "good", "rejected": "bad", "chosen_from": "self"}]


def test_near_duplicates_are_kept():
    samples = {"q1": [_p("good", True), _p("bad", False), _p("bad ", False)]}
    pairs = _cvw(samples, max_pairs=5)
    assert sorted(p["rejected"] for p in pairs) == ["bad", "bad "]


@pytest.mark.parametrize("max_pairs", [1, 2, 3])
def test_at_most_max_pairs_per_question(max_pairs):
    samples = {
        "q1": [_p("g1", True)] + [_p(f"b{i}", False) for i in range(6)],
        "q2": [_p(f"g{i}", True) for i in range(2, 5)] + [_p(f"c{i}", False) for i in range(6)],
        "q3": [_p("g9", True), _p("only bad", False)],
    }
    pairs = _cvw(samples, max_pairs=max_pairs)
    counts = {q: sum(p["id"] == q for p in pairs) for q in samples}
    assert counts == {"q1": max_pairs, "q2": max_pairs, "q3": 1}


def test_each_rejected_path_used_once_and_chosen_spread():
    samples = {"q1": [_p("g1", True), _p("g2", True)] + [_p(f"b{i}", False) for i in range(4)]}
    pairs = _cvw(samples, max_pairs=4)
    rejected = [p["rejected"] for p in pairs]
    assert len(rejected) == len(set(rejected)) == 4
    # chosen paths cycle through all correct paths instead of repeating one
    assert {p["chosen"] for p in pairs} == {"g1", "g2"}


def test_never_pairs_a_text_with_itself():
    samples = {
        f"q{i}": [_p(f"g{j}", True) for j in range(i % 3)]
        + [_p(f"b{j}", False) for j in range(4)]
        + [_p(f"b{j}", False) for j in range(2)]
        for i in range(12)
    }
    demos = {f"q{i}": f"demo{i}" for i in range(12)}
    pairs = _cvw(samples, demos, max_pairs=3)
    assert pairs
    assert all(p["chosen"] != p["rejected"] for p in pairs)
    assert len({(p["id"], p["rejected"]) for p in pairs}) == len(pairs)


@pytest.mark.parametrize(
    ("samples", "demos"),
    [
        ({"q1": [_p("same", True), _p("same", False)]}, {}),
        ({"q1": [_p("demo", False)]}, {"q1": "demo"}),
    ],
)
def test_never_pairs_a_text_with_itself_when_labels_collide(samples, demos):
    pairs = _cvw(samples, demos, max_pairs=5)
    assert all(p["chosen"] != p["rejected"] for p in pairs)


def test_deterministic_for_a_seed():
    samples = {
        f"q{i}": [_p(f"q{i}g{j}", True) for j in range(4)]
        + [_p(f"q{i}b{j}", False) for j in range(4)]
        for i in range(10)
    }
    a = _cvw(samples, max_pairs=2, seed=3)
    b = _cvw(samples, max_pairs=2, seed=3)
    assert a == b
    # the seed matters: some seed picks a different selection
    assert any(_cvw(samples, max_pairs=2, seed=s) != a for s in range(4, 10))


def test_does_not_mutate_inputs():
    samples = {"q1": [_p("g", True), _p("b1", False), _p("b2", False)]}
    before = {k: [dict(p) for p in v] for k, v in samples.items()}
    _cvw(samples, {"q1": "demo"})
    assert samples == before


def test_empty_samples():
    assert _cvw({}, {"q1": "demo"}) == []


# --- cot_vs_direct -----------------------------------------------------------------------


def test_cot_vs_direct_chosen_is_correct_cot_rejected_is_direct():
    cot = {"q1": [_p("cot good", True), _p("cot bad", False)]}
    direct = {"q1": [_p("42", False)]}
    pairs = cot_vs_direct(cot, direct, max_pairs=2)
    assert pairs == [{"id": "q1", "chosen": "cot good", "rejected": "42", "chosen_from": "self"}]


def test_cot_vs_direct_rejects_direct_even_when_it_is_correct():
    cot = {"q1": [_p("step by step ... 7", True)]}
    direct = {"q1": [_p("7", True)]}
    pairs = cot_vs_direct(cot, direct, max_pairs=2)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("step by step ... 7", "7")]


def test_cot_vs_direct_no_pair_without_correct_cot():
    cot = {"q1": [_p("bad a", False), _p("bad b", False)], "q2": [_p("ok", True)]}
    direct = {"q1": [_p("1", False)], "q2": [_p("2", False)]}
    pairs = cot_vs_direct(cot, direct, max_pairs=2)
    assert [p["id"] for p in pairs] == ["q2"]


def test_cot_vs_direct_no_pair_without_direct_answer():
    cot = {"q1": [_p("ok", True)]}
    assert cot_vs_direct(cot, {}, max_pairs=2) == []
    assert cot_vs_direct(cot, {"q1": []}, max_pairs=2) == []


def test_cot_vs_direct_drops_direct_equal_to_chosen_and_duplicates():
    cot = {"q1": [_p("same", True), _p("other", True)]}
    direct = {"q1": [_p("same", False), _p("d", False), _p("d", False)]}
    pairs = cot_vs_direct(cot, direct, max_pairs=5)
    assert [p["rejected"] for p in pairs] == ["d"]
    assert all(p["chosen"] != p["rejected"] for p in pairs)


def test_cot_vs_direct_max_pairs_and_deterministic():
    cot = {"q1": [_p(f"c{i}", True) for i in range(3)]}
    direct = {"q1": [_p(f"d{i}", False) for i in range(5)]}
    a = cot_vs_direct(cot, direct, max_pairs=2, seed=1)
    assert len(a) == 2
    assert a == cot_vs_direct(cot, direct, max_pairs=2, seed=1)
    assert all(p["chosen"].startswith("c") and p["rejected"].startswith("d") for p in a)


def test_rejected_is_cut_after_its_first_wrong_line():
    from selftrain.stages.pairs import to_first_divergence

    chosen = "After the gift: 12+18=<<12+18=30>>30\nAfter winning: 30+10=<<30+10=40>>40\n#### 40"
    rejected = "After the gift: 12+18=<<12+18=20>>20\nAfter winning: 20+10=<<20+10=30>>30\n#### 30"
    assert to_first_divergence(chosen, rejected) == "After the gift: 12+18=<<12+18=20>>20\n"
    late = "After the gift: 12+18=<<12+18=30>>30\nAfter winning: 30+10=<<30+10=41>>41\n#### 41"
    assert to_first_divergence(chosen, late) == (
        "After the gift: 12+18=<<12+18=30>>30\nAfter winning: 30+10=<<30+10=41>>41\n"
    )
    # the mistake is on the last line: nothing after it to spare, the path stays whole
    assert to_first_divergence(chosen, chosen[:-2] + "41") == chosen[:-2] + "41"
    # a rejected path longer than the chosen one diverges where the chosen one ends
    assert to_first_divergence("a\nb", "a\nb\nc\nd") == "a\nb\nc\n"


def test_rft_paths_keep_distinct_correct_paths_fewer_for_easy_questions():
    from selftrain.stages.pseudo_labels import rft_paths

    samples = {
        "hard": [
            {"text": "a", "correct": True},
            {"text": "a", "correct": True},
            {"text": "b", "correct": True},
            {"text": "c", "correct": True},
            {"text": "x", "correct": False},
        ],
        "easy": [{"text": "d", "correct": True}, {"text": "e", "correct": True}],
        "none": [{"text": "y", "correct": False}],
    }
    kept = rft_paths(samples, per_question=2, per_easy_question=1, seed=0)
    by_q = {}
    for r in kept:
        by_q.setdefault(r["id"], []).append(r)
    assert len(by_q["hard"]) == 2 and len({r["text"] for r in by_q["hard"]}) == 2
    assert not any(r["easy"] for r in by_q["hard"])
    assert len(by_q["easy"]) == 1 and by_q["easy"][0]["easy"]
    assert "none" not in by_q
    assert rft_paths(samples, per_question=2, per_easy_question=0) == [
        r for r in rft_paths(samples, per_question=2, per_easy_question=0) if not r["easy"]
    ]
