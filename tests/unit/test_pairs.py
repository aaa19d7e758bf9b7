"""Judged samples into preference pairs and SFT data: SRIT's pairs and RFT paths, DPO-ST's
similarity-deduplicated pools, least-similar pairs and pseudo-label caps."""

from __future__ import annotations

import random

import pytest

from selftrain.stages.pairs import (
    correct_vs_wrong,
    cot_vs_direct,
    dedup_similar,
    dpo_st_pairs,
    jaccard,
    least_similar_pairs,
    word_tokens,
)
from selftrain.stages.pseudo_labels import pseudo_label_pools


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


# ---- similarity, dedup, pairs, caps -------------------------------------------------------------


def test_jaccard_of_token_sets():
    assert jaccard({1, 2, 3}, {2, 3, 4}) == pytest.approx(2 / 4)
    assert jaccard(word_tokens("a b c"), word_tokens("c b a a")) == 1.0
    assert jaccard(set(), set()) == 1.0


def test_dedup_drops_exact_then_similar_keeping_the_first():
    a = "x = 1 + 2 = 3 so the answer is 3"
    near = a + " ."  # one extra token: Jaccard 10/11 > 0.7
    far = "we add one and two to get 3"
    assert dedup_similar([a, a, near, far]) == [a, far]
    # the threshold is strict "above": identical sets at threshold 1.0 are still duplicates only
    # when exact
    assert dedup_similar([a, near], threshold=1.0) == [a, near]


def test_least_similar_pairs_are_the_m_lowest():
    tok = str.split
    chosen = ["a b c d", "a b x y"]
    rejected = ["a b c e", "p q r s"]
    got = least_similar_pairs(chosen, rejected, 2, tok, random.Random(0))
    sims = sorted(jaccard(tok(c), tok(r)) for c in chosen for r in rejected)
    assert [round(s, 4) for _, _, s in got] == [round(s, 4) for s in sims[:2]]
    assert all(r == "p q r s" for _, r, _ in got)  # the dissimilar rejected path pairs first


def test_pairs_pool_gold_and_earlier_rounds_and_skip_questions_without_a_wrong_path():
    gold = {"q1": "gold one", "q2": "gold two"}
    pools = {
        # q1: round 1 had a wrong path; round 2 only right ones: still paired (pooled)
        "q1": [
            {"text": "wrong path r1", "correct": False},
            {"text": "right path r2 alpha", "correct": True},
        ],
        "q2": [{"text": "only right", "correct": True}],  # no wrong path: skipped
    }
    pairs = dpo_st_pairs(pools, gold, m=3, threshold=0.7)
    assert {p["id"] for p in pairs} == {"q1"}
    assert {p["chosen"] for p in pairs} == {"gold one", "right path r2 alpha"}
    assert all(p["rejected"] == "wrong path r1" for p in pairs)
    assert any(p["chosen_from"] == "gold" for p in pairs)
    # m caps the pairs per question
    assert len(dpo_st_pairs(pools, gold, m=1)) == 1


def test_pairs_dedup_each_pool_before_pairing():
    gold = {"q": "g h i j k"}
    wrong = [{"text": "a b c d e f", "correct": False}, {"text": "a b c d e f g", "correct": False}]
    pairs = dpo_st_pairs({"q": wrong}, gold, m=5)
    assert len(pairs) == 1  # the second wrong path is a near-duplicate (6/7 > 0.7)


def test_pseudo_labels_gold_first_dedup_and_percentile_cap():
    gold = {f"q{i}": f"gold {i}" for i in range(10)}
    correct = {"q0": ["p one x", "p two y z", "p three w v u", "p one x"]}
    pools, cap = pseudo_label_pools(correct, gold, tokens=str.split, cap=None, percentile=90)
    # counts: q0 has 4 (gold + 3 distinct), the others 1 -> 90th percentile is 1 + 0.1 * 3
    assert cap == 1
    assert pools["q0"] == ["gold 0"]
    pools, cap = pseudo_label_pools(correct, gold, tokens=str.split, cap=3)
    assert cap == 3 and pools["q0"][0] == "gold 0" and len(pools["q0"]) == 3
    assert all(pools[f"q{i}"] == [f"gold {i}"] for i in range(1, 10))
    pools, cap = pseudo_label_pools(correct, gold, tokens=str.split, percentile=100)
    assert cap == 4 and len(pools["q0"]) == 4
