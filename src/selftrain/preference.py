"""Turn verified samples into DPO preference pairs."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence


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
