"""Stage ``pairs``: judged samples become DPO preference pairs.

SRIT (Ranaldi & Freitas 2024): a correct path over a wrong one (``correct_vs_wrong``, the
teacher's demonstration as the fallback chosen answer) or a CoT path over a direct answer
(``cot_vs_direct``). DPO-ST (Wang, Li & Lu 2024): similarity-deduplicated pools of this
round's and earlier rounds' samples, the least similar pairs (``dpo_st_pairs``).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from selftrain.chat import Message, assistant
from selftrain.config import DPOSTConfig, PairsConfig
from selftrain.io import read_jsonl, write_jsonl_atomic
from selftrain.rundir import RunDir

Prompt = Callable[[str], list[Message]]  # a question id's prompt messages


def srit_pairs_stage(
    rd: RunDir,
    cot: Mapping[str, Sequence[dict]],
    direct: Mapping[str, Sequence[dict]],
    demos: Mapping[str, str],
    cfg: PairsConfig,
    seed: int,
    prompt: Prompt,
) -> list[dict]:
    """SRIT's pairs (``pairs.jsonl``, metrics ``pairs``) by ``cfg.policy``, as TRL's
    conversational preference records (:func:`trl_record`; ``prompt`` gives a question id's
    messages); with ``cfg.truncate_rejected`` each rejected path is cut after its first wrong
    line."""
    path = rd / "pairs.jsonl"
    if not rd.done("pairs"):
        with rd.stage("pairs"):
            if rd.runtime.is_main:
                if cfg.policy == "correct_vs_wrong":
                    pairs = correct_vs_wrong(
                        cot,
                        demos,
                        max_pairs=cfg.max_pairs_per_question,
                        teacher_fallback=cfg.teacher_fallback,
                        seed=seed,
                    )
                    if cfg.truncate_rejected:
                        pairs = [truncated(x) for x in pairs]
                else:
                    pairs = cot_vs_direct(
                        cot, direct, max_pairs=cfg.max_pairs_per_question, seed=seed
                    )
                write_jsonl_atomic(path, (trl_record(x, prompt(x["id"])) for x in pairs))
                rd.set_metric(
                    "pairs",
                    {
                        "pairs": len(pairs),
                        "questions": len({x["id"] for x in pairs}),
                        "chosen_from_teacher": sum(x["chosen_from"] == "teacher" for x in pairs),
                        "rejected_truncated": sum(
                            x.get("rejected_truncated", False) for x in pairs
                        ),
                    },
                )
    return read_jsonl(path)


def dpo_st_pairs_stage(
    rd: RunDir, stage: str, key: tuple[str, ...], path: Path, samples: Sequence[Path],
    gold: Mapping[str, str], cfg: DPOSTConfig, tokens: Tokens, seed: int, prompt: Prompt,
) -> list[dict]:  # fmt: skip
    """DPO-ST's pairs from the judged samples of this round and every earlier one (the files
    ``samples``), written to ``path`` as TRL's preference records (:func:`trl_record`;
    ``prompt`` gives a question id's messages), metrics at ``key``."""
    if not rd.done(stage):
        with rd.stage(stage):
            if rd.runtime.is_main:
                paths = read_pools(samples)
                m, threshold = cfg.pairs_per_question, cfg.similarity_threshold
                pairs = dpo_st_pairs(
                    paths, gold, m=m, threshold=threshold, tokens=tokens, seed=seed
                )
                write_jsonl_atomic(path, (trl_record(p, prompt(p["id"])) for p in pairs))
                questions = len({p["id"] for p in pairs})
                stats = {
                    "pairs": len(pairs),
                    "questions": questions,
                    "questions_skipped": len(paths) - questions,
                    "chosen_gold": sum(p["chosen_from"] == "gold" for p in pairs),
                }
                rd.put(key, stats)
    return read_jsonl(path)


def trl_record(pair: dict, prompt: list[Message]) -> dict:
    """A pair as TRL's conversational preference record: ``prompt`` (the messages the student
    saw), ``chosen`` and ``rejected`` (one assistant message each), then the pair's own fields.
    ``rejected_truncated`` is always there: a path cut short is scored without EOS here, but
    TRL's chat template ends every assistant turn, so a consumer must know."""
    return {
        "id": pair["id"],
        "prompt": prompt,
        "chosen": assistant(pair["chosen"]),
        "rejected": assistant(pair["rejected"]),
        "rejected_truncated": pair.get("rejected_truncated", False),
        **{k: v for k, v in pair.items() if k not in _TRL_KEYS},
    }


_TRL_KEYS = {"id", "chosen", "rejected", "rejected_truncated"}


def read_pools(files: Sequence[Path]) -> dict[str, list[dict]]:
    """Question id -> its judged paths from every one of ``files``, in the order written."""
    pools: dict[str, list[dict]] = {}
    for file in files:
        for row in read_jsonl(file):
            pools.setdefault(row["id"], []).append(row)
    return pools


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
        good = unique(p["text"] for p in paths if p["correct"])
        bad = unique(p["text"] for p in paths if not p["correct"])
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
        good = unique(p["text"] for p in paths if p["correct"])
        bad = unique(p["text"] for p in direct.get(qid, ()) if p["text"] not in good)
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


def truncated(pair: dict) -> dict:
    """The pair with its rejected path cut by :func:`to_first_divergence` (the whole path kept
    as ``rejected_full``)."""
    cut = to_first_divergence(pair["chosen"], pair["rejected"])
    return {
        **pair,
        "rejected": cut,
        "rejected_truncated": cut != pair["rejected"],
        "rejected_full": pair["rejected"],
    }


def unique(texts) -> list[str]:
    seen: dict[str, None] = {}
    for t in texts:
        seen.setdefault(t, None)
    return list(seen)


# ---- DPO-ST (Wang, Li & Lu 2024): similarity-deduplicated pools, least-similar pairs --------
Tokens = Callable[[str], Collection[Any]]


class TokenSets:
    """A text's set of token ids under ``tokenizer`` (DPO-ST's similarity tokens), computed
    once per text."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._sets: dict[str, frozenset[int]] = {}

    def __call__(self, text: str) -> frozenset[int]:
        if text not in self._sets:
            ids = self.tokenizer(text, add_special_tokens=False).input_ids
            self._sets[text] = frozenset(ids)
        return self._sets[text]


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
    for text in unique(texts):
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
