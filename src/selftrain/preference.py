"""Turn verified samples into DPO preference pairs."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any


def correct_vs_wrong(
    samples: Mapping[str, Sequence[dict]],
    demos: Mapping[str, str],
    *,
    max_pairs: int,
    teacher_fallback: bool,
    seed: int = 0,
) -> list[dict]:
    """Pairs of (a correct path, a wrong path) per question.

    ``samples`` maps a question id to its sampled paths (dicts with ``text`` and ``correct``);
    exact duplicates are dropped. A question with no correct path uses its teacher
    demonstration as the chosen answer when ``teacher_fallback`` is set; a question with no
    wrong path gives no pair. At most ``max_pairs`` pairs per question, each rejected path
    used once.
    """
    rng = random.Random(seed)
    pairs = []
    for qid, paths in samples.items():
        good = _unique(p["text"] for p in paths if p["correct"])
        bad = _unique(p["text"] for p in paths if not p["correct"])
        source = "self"
        if not good and teacher_fallback and qid in demos:
            good, source = [demos[qid]], "teacher"
        bad = [t for t in bad if t not in good]
        if not good or not bad:
            continue
        rng.shuffle(good)
        rng.shuffle(bad)
        for i, rejected in enumerate(bad[:max_pairs]):
            pairs.append(
                {
                    "id": qid,
                    "chosen": good[i % len(good)],
                    "rejected": rejected,
                    "chosen_from": source,
                }
            )
    return pairs


def rft_paths(
    samples: Mapping[str, Sequence[dict]],
    *,
    per_question: int,
    per_easy_question: int,
    seed: int = 0,
) -> list[dict]:
    """Rejection sampling's training data: per question, up to ``per_question`` distinct
    correct paths (``per_easy_question`` where every path was correct: those the model
    already answers, which teach it less; Yuan et al. 2023 found the gain grows with the
    number of distinct correct paths). Returns ``{"id", "text", "easy"}`` records."""
    rng = random.Random(seed)
    out = []
    for qid, paths in samples.items():
        good = _unique(p["text"] for p in paths if p["correct"])
        easy = all(p["correct"] for p in paths)
        rng.shuffle(good)
        for text in good[: per_easy_question if easy else per_question]:
            out.append({"id": qid, "text": text, "easy": easy})
    return out


def cot_vs_direct(
    cot: Mapping[str, Sequence[dict]],
    direct: Mapping[str, Sequence[dict]],
    *,
    max_pairs: int,
    seed: int = 0,
) -> list[dict]:
    """SRIT's pairs: chosen = the student's correct CoT path, rejected = its direct answer to
    the same question (the ground truth decides which CoT paths are usable)."""
    rng = random.Random(seed)
    pairs = []
    for qid, paths in cot.items():
        good = _unique(p["text"] for p in paths if p["correct"])
        bad = _unique(p["text"] for p in direct.get(qid, ()) if p["text"] not in good)
        rng.shuffle(good)
        for i, rejected in enumerate(bad[:max_pairs]):
            if good:
                pairs.append(
                    {
                        "id": qid,
                        "chosen": good[i % len(good)],
                        "rejected": rejected,
                        "chosen_from": "self",
                    }
                )
    return pairs


def to_first_divergence(chosen: str, rejected: str) -> str:
    """The rejected path up to and including its first line that differs from the chosen
    path's line at the same position (the line where it went wrong), with its newline.

    Steps after a mistake are usually right given the mistake (``12+18=20`` then ``20+10=30``);
    penalising them teaches the model that right arithmetic is wrong. Lines both paths share
    cancel in the DPO loss, so the truncated pair puts the whole contrast on the mistake.
    Returns the whole rejected path when it has no line after the divergence.
    """
    c_lines, r_lines = chosen.split("\n"), rejected.split("\n")
    for i, line in enumerate(r_lines):
        if i >= len(c_lines) or line != c_lines[i]:
            if i == len(r_lines) - 1:
                return rejected
            return "\n".join(r_lines[: i + 1]) + "\n"
    return rejected


def _unique(texts) -> list[str]:
    seen: dict[str, None] = {}
    for t in texts:
        seen.setdefault(t, None)
    return list(seen)


# ---- DPO-ST (Wang, Li & Lu 2024): similarity-deduplicated pools, least-similar pairs --------
Tokens = Callable[[str], Collection[Any]]


def word_tokens(text: str) -> frozenset[str]:
    """A text's set of words and punctuation marks (the default tokens for similarity)."""
    return frozenset(re.findall(r"\w+|[^\w\s]", text))


def jaccard(a: Collection[Any], b: Collection[Any]) -> float:
    """Token-set Jaccard similarity |A & B| / |A | B| (1.0 for two empty texts)."""
    sa, sb = set(a), set(b)
    union = len(sa | sb)
    return len(sa & sb) / union if union else 1.0


def dedup_similar(
    texts: Iterable[str], tokens: Tokens = word_tokens, threshold: float = 0.7
) -> list[str]:
    """Drop exact duplicates, then every text whose token-set Jaccard similarity with a text
    kept before it is above ``threshold``; the first of each group is kept, in order."""
    kept: list[str] = []
    kept_tokens: list[Collection[Any]] = []
    for text in _unique(texts):
        t = tokens(text)
        if all(jaccard(t, k) <= threshold for k in kept_tokens):
            kept.append(text)
            kept_tokens.append(t)
    return kept


def least_similar_pairs(
    chosen: Sequence[str],
    rejected: Sequence[str],
    m: int,
    tokens: Tokens = word_tokens,
    rng: random.Random | None = None,
) -> list[tuple[str, str, float]]:
    """The ``m`` (chosen, rejected, similarity) pairs of least token-set similarity among all
    chosen x rejected combinations (ties broken by a shuffle with ``rng``)."""
    chosen, rejected = list(chosen), list(rejected)
    if rng is not None:
        rng.shuffle(chosen)
        rng.shuffle(rejected)
    ct = [tokens(c) for c in chosen]
    rt = [tokens(r) for r in rejected]
    scored = [
        (c, r, jaccard(ct[i], rt[j])) for i, c in enumerate(chosen) for j, r in enumerate(rejected)
    ]
    scored.sort(key=lambda x: x[2])  # stable: equal scores keep the shuffled order
    return scored[:m]


def dpo_st_pairs(
    pools: Mapping[str, Sequence[dict]],
    gold: Mapping[str, str],
    *,
    m: int,
    threshold: float = 0.7,
    tokens: Tokens = word_tokens,
    seed: int = 0,
) -> list[dict]:
    """DPO-ST's pairs: per question, the chosen pool is the gold rationale plus every correct
    sampled path (``pools`` maps an id to paths with ``text`` and ``correct``, this round's and
    earlier rounds'), the rejected pool every wrong one; both deduplicated (exact, then Jaccard
    above ``threshold``, the gold rationale kept first); a question with no wrong path is
    skipped; the ``m`` least similar chosen x rejected pairs are kept."""
    rng = random.Random(seed)
    out = []
    for qid in sorted(pools):
        paths = pools[qid]
        wrong = sorted({p["text"] for p in paths if not p["correct"]})
        if not wrong:
            continue
        right = sorted({p["text"] for p in paths if p["correct"]})
        if gold.get(qid):
            right = [gold[qid], *right]
        chosen = dedup_similar(right, tokens, threshold)
        rejected = dedup_similar(wrong, tokens, threshold)
        if not chosen:
            continue
        for c, r, sim in least_similar_pairs(chosen, rejected, m, tokens, rng):
            out.append(
                {
                    "id": qid,
                    "chosen": c,
                    "rejected": r,
                    "similarity": round(sim, 4),
                    "chosen_from": "gold" if c == gold.get(qid) else "self",
                }
            )
    return out


def pseudo_label_pools(
    correct: Mapping[str, Sequence[str]],
    gold: Mapping[str, str],
    *,
    threshold: float = 0.7,
    tokens: Tokens = word_tokens,
    cap: int | None = None,
    percentile: float = 90.0,
) -> tuple[dict[str, list[str]], int]:
    """DPO-ST's SFT data per question: the gold rationale first, then the correct sampled
    paths (this round's and earlier rounds'), deduplicated as in :func:`dpo_st_pairs` and cut
    to ``cap`` texts per question (None: the ``percentile`` of the per-question counts, as the
    paper's code does). Returns the pools and the cap used."""
    pools: dict[str, list[str]] = {}
    for qid in sorted(set(correct) | set(gold)):
        texts = sorted(set(correct.get(qid, ())))
        if gold.get(qid):
            texts = [gold[qid], *texts]
        kept = dedup_similar(texts, tokens, threshold)
        if kept:
            pools[qid] = kept
    if cap is None:
        counts = sorted(len(v) for v in pools.values())
        cap = max(1, int(_percentile(counts, percentile))) if counts else 1
    return {q: v[:cap] for q, v in pools.items()}, cap


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """numpy's default (linear) percentile of sorted values."""
    pos = (len(sorted_values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)
