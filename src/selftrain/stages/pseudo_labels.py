"""Stage ``pseudo_labels``: the student's own correct paths become SFT data.

SRIT's RFT step (STaR, Zelikman et al. 2022; RFT, Yuan et al. 2023): distinct correct paths
per question (``rft_paths``). DPO-ST's SFT step: the gold rationale and every round's correct
samples, similarity-deduplicated and capped per question (``pseudo_label_pools``).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path

from selftrain.config import DPOSTConfig, RFTConfig
from selftrain.io import read_jsonl, write_jsonl_atomic
from selftrain.rundir import RunDir
from selftrain.stages.pairs import Tokens, dedup_similar, read_pools, unique, word_tokens


def rft_stage(
    rd: RunDir, cot: Mapping[str, Sequence[dict]], cfg: RFTConfig, seed: int
) -> list[dict]:
    """RFT's data (``rft.jsonl``): the kept correct paths of the sampled questions."""
    path = rd / "rft.jsonl"
    if not rd.done("rft_data"):
        with rd.stage("rft_data"):
            kept = rft_paths(
                cot,
                per_question=cfg.paths_per_question,
                per_easy_question=cfg.paths_per_easy_question,
                seed=seed,
            )
            if rd.runtime.is_main:
                write_jsonl_atomic(path, kept)
    return read_jsonl(path)


def dpo_st_sft_data_stage(
    rd: RunDir, stage: str, key: tuple[str, ...], path: Path, samples: Sequence[Path],
    gold: Mapping[str, str], cfg: DPOSTConfig, tokens: Tokens,
) -> list[dict]:  # fmt: skip
    """Gold rationales plus the correct, deduplicated self-samples of this round and every
    earlier one (the files ``samples``), written to ``path`` (metrics at ``key``)."""
    if not rd.done(stage):
        with rd.stage(stage):
            if rd.runtime.is_main:
                pools = read_pools(samples)
                correct = {
                    q: [r["text"] for r in rows if r["correct"]] for q, rows in pools.items()
                }
                kept, cap = pseudo_label_pools(
                    correct, gold, threshold=cfg.similarity_threshold, tokens=tokens,
                    cap=cfg.pseudo_label_cap, percentile=cfg.cap_percentile,
                )  # fmt: skip
                rows = [
                    {"id": q, "text": t, "gold": t == gold.get(q)}
                    for q, ts in kept.items()
                    for t in ts
                ]
                write_jsonl_atomic(path, rows)
                rd.put(key, _pseudo_label_stats(rows, gold, len(pools), cap))
    return read_jsonl(path)


def _pseudo_label_stats(rows: list[dict], gold: Mapping[str, str], n: int, cap: int) -> dict:
    pseudo = {x["id"] for x in rows if not x["gold"]}
    return {
        "examples": len(rows),
        "pseudo_labels": sum(not x["gold"] for x in rows),
        "questions_with_pseudo_labels": len(pseudo),
        # answer-only questions (no gold rationale) that now have an SFT example
        "answer_only_covered": len(pseudo - set(gold)),
        "answer_only_questions": n - len(gold),
        "cap": cap,
    }


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
        good = unique(p["text"] for p in paths if p["correct"])
        easy = all(p["correct"] for p in paths)
        rng.shuffle(good)
        for text in good[: per_easy_question if easy else per_question]:
            out.append({"id": qid, "text": text, "easy": easy})
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
